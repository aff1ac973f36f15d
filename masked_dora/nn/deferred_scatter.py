r"""``DeferredScatter``: a scattering layer's output whose scatter waits for the residual add.

A :class:`~masked_dora.nn.CompactLinear` that writes a kept subset ``K`` of a wider output
(``out_idx``) into a full-width residual stream computes, unfused, ``y = scatter_K(x W^T + b)`` (a
zero-filled full-width tensor) and the model's code then adds it, ``r + y``: the full width is written
twice and read three times. Fused (``compact_linear(..., residual=r)``) the kernel writes ``r`` plus the
kept columns once. The add is the model family's code (``residual + hidden_states`` in every
transformers decoder layer; ``LayerNorm(hidden_states + input_tensor)`` after an eval-mode dropout in
BERT's output blocks), so the layer cannot call the fused form itself without a forward per family.

Instead, with ``CompactLinear(..., defer_scatter=True)`` the layer returns this tensor subclass: it has
the output's shape, dtype and device but holds only the layer's operands (input, weight, bias, indices). Through
``__torch_function__``:

* ``r + d``, ``d + r``, ``torch.add(r, d)`` (``r`` a plain tensor of the same shape, dtype and device)
  return ``compact_linear(x, W, b, in_idx, out_idx, residual=r)``: the fused add, a new plain tensor
  (``r`` is not modified; ``r += d`` updates ``r`` in place with the serving op ``compact_linear_`` when
  ``r`` is contiguous);
* dropout that does nothing (``training=False`` or ``p=0``) returns ``d`` itself, so BERT's add is fused too;
* reading metadata (shape, dtype, device, ``size()``, ``dim()``, ...) reads the wrapper's;
* anything else first materialises ``d`` (the unfused output, computed once and kept; the input is then
  released) and runs on it; metadata read after that is the value's.

The operands (input, weight, bias, indices) are taken, detached, at the call: the value is the layer's output
then, whatever the module holds later (an offloading hook's meta weights); one modified in place before the
value is computed makes the use raise rather than read it. A layer with forward hooks returns the plain
output (a hook may keep it, and a kept deferred tensor holds the input).

So a family whose code does something else with the writer's output (Gemma 2/3's norm before the add,
Granite's residual multiplier) gets exactly the unfused result. The layer defers only where the result
cannot need autograd (no input requires grad, or grad mode is off: ``torch.no_grad()``,
``torch.inference_mode()``, ``generate()``) and outside ``torch.compile``/tracing/``torch.func``
transforms, where the plain output is returned: a deferred tensor never enters an autograd graph or a
compiled graph. Values: the fused kernel adds ``r`` and the kept result once, exactly as the unfused
``r + y`` does (``0 + v = v``), so the two are bit-equal on the CPU kernels. On a GPU this path is UNRUN so far
(`bench/fused_scatter.py --device cuda` in `bench/gpu_check.sh` times and compares it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.compact_linear import compact_linear, compact_linear_
from ..ops._checks import tensor_version
from ..ops._registry import no_autocast
from ..ops.precision import autocast_enabled

_ADDS = frozenset({Tensor.__add__, Tensor.__radd__, Tensor.add, torch.add})
_IN_PLACE_ADDS = frozenset({Tensor.__iadd__, Tensor.add_})
_METADATA = frozenset({
    Tensor.shape.__get__, Tensor.dtype.__get__, Tensor.device.__get__, Tensor.ndim.__get__,
    Tensor.requires_grad.__get__, Tensor.is_cuda.__get__, Tensor.layout.__get__, Tensor.size, Tensor.dim,
    Tensor.numel, Tensor.is_floating_point, Tensor.is_complex, Tensor.element_size, Tensor.__len__,
    Tensor.get_device,
})


def can_defer(*tensors) -> bool:
    """Whether a layer may return a :class:`DeferredScatter` for inputs ``tensors`` (the input first; see the
    module notes)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting():
        return False
    if torch._C._are_functorch_transforms_active():
        return False
    if autocast_enabled(tensors[0].device):
        return False  # autocast: the output's dtype is not the input's, and the residual stream's may differ
    if any(not (type(t) is Tensor or isinstance(t, torch.nn.Parameter)) for t in tensors if t is not None):
        return False  # another subclass (FakeTensor, a DTensor, a deferred tensor, ...): stay plain
    return not torch.is_grad_enabled() or not any(t is not None and t.requires_grad for t in tensors)


class DeferredScatter(Tensor):
    """The output of a scattering ``CompactLinear`` waiting for its residual add (see the module notes).

    ``layer``: the ``CompactLinear`` (``out_idx`` set); ``x``: its input ``(..., in_features)``.
    :meth:`materialize` returns the plain output."""

    @staticmethod
    def __new__(cls, layer, x: Tensor):
        shape = (*x.shape[:-1], layer.out_features)
        return Tensor._make_wrapper_subclass(cls, shape, dtype=x.dtype, device=x.device, requires_grad=False)

    def __init__(self, layer, x: Tensor):
        # the operands are taken now, detached, and their versions recorded: the value is the layer's output at
        # the call, whatever happens to the module afterwards (an offloading hook swapping its weights for meta
        # tensors once forward returns; autograd enabled again, or requires_grad_ on its weights)
        b = layer.bias
        self.x, self._value = x, None
        self._args = (x.detach(), layer.weight.detach(), None if b is None else b.detach(), layer.in_idx,
                      layer.out_idx, layer.out_features)
        self._versions = _versions(self._args)

    def _operands(self):
        """The operands taken at the call; raises if one has been modified in place since (the value is gone)."""
        args = self._args
        if args is not None and _versions(args) != self._versions:
            raise RuntimeError(
                "DeferredScatter: the layer's input, weight, bias or indices were modified in place after the call "
                "that returned this output, and its value at the call was never computed; use the output (or "
                ".clone() it) before modifying them, or build the layer with defer_scatter=False")
        return args

    def materialize(self) -> Tensor:
        """The unfused output ``scatter_K(x W^T + b)``, computed on first use and kept (the input is released)."""
        value = self._value
        if value is None:
            args = self._operands()
            if args is None:  # another thread computed it meanwhile (it sets _value before releasing _args)
                return self._value
            with no_autocast(args[0].device):  # the value at the call, which ran outside autocast
                value = compact_linear(*args)
            self._value = value
            self._args = self.x = None
        return value

    def _fusable(self, other) -> bool:
        return (type(other) is Tensor and self._value is None and other.shape == self.shape
                and other.dtype == self.dtype and other.device == self.device
                and not (torch.is_grad_enabled() and other.requires_grad))  # a graph: the plain add, as unfused

    def add_to(self, residual: Tensor) -> Tensor:
        """``residual + self`` with the scatter fused into the add (a new tensor)."""
        args = self._operands()
        if args is None:
            return residual + self.materialize()
        with no_autocast(args[0].device):
            return compact_linear(*args, residual)

    def __repr__(self, *, tensor_contents=None) -> str:
        return f"DeferredScatter({self.materialize()!r})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METADATA:  # the wrapper's, or once computed the value's (an in-place op may have changed it)
            with torch._C.DisableTorchFunctionSubclass():
                return func(*(_computed(a) for a in args), **kwargs)
        if func in _ADDS and len(args) == 2 and not kwargs:
            a, b = args
            if isinstance(b, DeferredScatter) and not isinstance(a, DeferredScatter) and b._fusable(a):
                return b.add_to(a)
            if isinstance(a, DeferredScatter) and not isinstance(b, DeferredScatter) and a._fusable(b):
                return a.add_to(b)
        if func in _IN_PLACE_ADDS and len(args) == 2 and not kwargs:
            r, d = args
            if (isinstance(d, DeferredScatter) and not isinstance(r, DeferredScatter) and d._fusable(r)
                    and r.is_contiguous() and (torch.is_inference_mode_enabled() or not r.is_inference())):
                args = d._operands()
                if args is not None:
                    return compact_linear_(r, *args[:5])
        if func is torch.nn.functional.dropout and isinstance(args[0], DeferredScatter):
            p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
            training = args[2] if len(args) > 2 else kwargs.get("training", True)
            if not training or p == 0:
                return args[0]
        args = tuple(_plain(a) for a in args)
        kwargs = {k: _plain(v) for k, v in kwargs.items()}
        return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        # reached only where __torch_function__ was bypassed (torch function disabled): the plain output
        return func(*_plain(tuple(args)), **{k: _plain(v) for k, v in (kwargs or {}).items()})


def _versions(tensors) -> tuple:
    """The version counters of ``tensors`` (None for None and for inference tensors, which have none)."""
    return tuple(tensor_version(t) if isinstance(t, Tensor) else None for t in tensors)


def _computed(value):
    """``value``, or its materialised value where it is a deferred tensor already computed."""
    return value._value if isinstance(value, DeferredScatter) and value._value is not None else value


def _plain(value):
    """``value`` with deferred tensors (also inside lists and tuples) materialised."""
    if isinstance(value, DeferredScatter):
        return value.materialize()
    if type(value) in (list, tuple):
        return type(value)(_plain(v) for v in value)
    return value

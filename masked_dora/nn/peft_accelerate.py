r"""PEFT's DoRA layers through this library's fused op, in place and reversibly.

PEFT's DoRA layer (``peft.tuners.lora.Linear`` with ``use_dora``) computes, for its active adapter::

    y = W0 x + b + (m/n - 1) W0 d(x) + (m/n) s B A d(x)        n = ||W0 + s B A||  (per row, detached)

where ``d`` is the adapter's ``lora_dropout`` (the identity in eval mode or without dropout). Without
dropout that is ``(m/n) (W0 x + s B A x) + b``: one masked-DoRA op with every channel kept (``z = 1``),
:func:`masked_dora.ops.dora_linear`, whose fused kernels keep ``x A^T`` and the pre-scale output for the
backward instead of PEFT's second pass. With dropout it is ``dora_linear(d(x), scale=m/n) + W0 (x - d(x)) + b``:
the same op on the dropped input and PEFT's second base GEMM, on the difference. The row norm is computed
every call as PEFT does (factored, from ``||W0||^2``, which is cached: :class:`RowNormCache`), never forming
``W0 + s B A``.

:func:`accelerate_peft` swaps the forward of every such layer of a model (an instance attribute, as
Liger-Kernel patches models); :func:`restore_peft` removes it. A patched layer falls back to PEFT's own
forward, call by call, for whatever it does not cover: merged or disabled adapters, several active
adapters, a plain LoRA adapter (already at LoRA's price), ``adapter_names`` batches, ``fan_in_fan_out``
or a non-``nn.Linear`` base layer, ``lora_bias``, a base weight that trains, and inputs whose dtype differs
from the base weight's (PEFT's autocast paths). Parameters, state dicts and ``save_pretrained`` are untouched.
"""

from __future__ import annotations

import types
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.dora_linear import dora_linear
from ..ops.precision import autocast_enabled
from ..ops.row_norm import DEFAULT_EPS, row_norm
from .norm_cache import RowNormCache

_CACHES = "_masked_dora_norms"  # per-adapter RowNormCache (its ||W0||^2), an attribute of the patched PEFT layer


def _dora_layers(model: nn.Module):
    try:
        from peft.tuners.lora import Linear as LoraLinear
    except ImportError as exc:  # pragma: no cover - peft is a test dependency
        raise ImportError("accelerate_peft needs the peft package") from exc
    return [m for m in model.modules() if isinstance(m, LoraLinear)]


def accelerate_peft(model: nn.Module) -> int:
    """Run every PEFT LoRA linear layer of ``model`` with a DoRA adapter through masked_dora's fused op
    (in place; PEFT's API, parameters and checkpoints unchanged). Returns the number of layers patched;
    :func:`restore_peft` undoes it. Equal to PEFT's own DoRA to rounding (``tests/test_peft_accelerate.py``)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module (a PeftModel), got {type(model).__name__}")
    patched = 0
    for layer in _dora_layers(model):
        if not any(layer.use_dora.values()) or "forward" in layer.__dict__:
            continue
        layer.__dict__[_CACHES] = {}
        layer.forward = types.MethodType(_forward, layer)
        patched += 1
    return patched


def restore_peft(model: nn.Module) -> int:
    """Undo :func:`accelerate_peft`: PEFT's own forward again. Returns the number of layers restored."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module (a PeftModel), got {type(model).__name__}")
    restored = 0
    for layer in _dora_layers(model):
        if layer.__dict__.get("forward") is not None and getattr(layer.forward, "__func__", None) is _forward:
            del layer.__dict__["forward"]
            layer.__dict__.pop(_CACHES, None)
            restored += 1
    return restored


def _adapter(layer, x: Tensor, args, kwargs) -> Optional[str]:
    """The one active DoRA adapter this call can take, or ``None`` for PEFT's own forward."""
    if args or kwargs or layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1:
        return None
    name = layer.active_adapters[0]
    base = layer.get_base_layer()
    if (name not in layer.lora_A or not layer.use_dora.get(name, False) or layer.fan_in_fan_out
            or getattr(layer, "lora_bias", {}).get(name, False) or type(base) is not nn.Linear
            or base.weight.requires_grad  # the fused op forms no gradient for W0
            or x.dtype != base.weight.dtype or autocast_enabled(x.device) or x.device != base.weight.device):
        return None
    return name


def _forward(self, x: Tensor, *args, **kwargs) -> Tensor:
    name = _adapter(self, x, args, kwargs)
    if name is None:
        return type(self).forward(self, x, *args, **kwargs)
    base = self.get_base_layer()
    weight, bias = base.weight, base.bias
    lora_A, lora_B = self.lora_A[name].weight, self.lora_B[name].weight
    scaling = self.scaling[name]
    # ||W0||^2 cached (W0 is frozen); the norm itself recomputed every call, as PEFT does: under FSDP2 a PEFT
    # model's adapters are re-gathered in place with their version kept, which a cache keyed on it cannot see
    weight_sq = self.__dict__[_CACHES].setdefault(name, RowNormCache()).weight_sq(weight)
    with torch.no_grad():
        norm = row_norm(weight, lora_A.to(weight.dtype), lora_B.to(weight.dtype), scaling, weight_sq, DEFAULT_EPS)
    scale = self.lora_magnitude_vector[name].weight.to(norm.dtype) / norm
    dropout = self.lora_dropout[name]
    if isinstance(dropout, nn.Identity) or not self.training:
        return dora_linear(x, weight, lora_A.to(x.dtype), lora_B.to(x.dtype), scaling, scale, bias)
    dropped = dropout(x)
    return (dora_linear(dropped, weight, lora_A.to(x.dtype), lora_B.to(x.dtype), scaling, scale)
            + F.linear(x - dropped, weight, bias))

"""``CompactLinear``: a pruned linear layer that reads/writes a subset of a wider space.

    y[..., out_idx] (+)= x[..., in_idx] @ W^T + b

See :mod:`masked_dora.ops.compact_linear` for the op, its index policy and its
kernels. The module validates its indices once, at construction and on
``load_state_dict`` (int64, non-empty, in range, sorted, unique), and keeps
them as buffers, so a state dict round-trips bit-exactly.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.module import _global_forward_hooks

from ..ops import _checks
from ..ops.compact_linear import _prepare as check_compact_linear_call  # the op's own argument checks
from ..ops.compact_linear import compact_linear, compact_linear_, validate_indices
from .deferred_scatter import DeferredScatter, can_defer

Keep = Union[Tensor, None]


def keep_to_indices(name: str, keep: Keep, size: int, device=None) -> Optional[Tensor]:
    """A bool keep-mask (length ``size``) or an index tensor (any order) -> sorted, validated int64 indices.

    ``None`` stays ``None`` (keep everything). Index tensors are sorted here
    (the caller gathers its weight with the result, so the order carries no
    meaning); duplicates, out-of-range values and empty keep sets raise.
    """
    if keep is None:
        return None
    if not isinstance(keep, Tensor):
        keep = torch.as_tensor(keep)
    if keep.dtype == torch.bool:
        _checks.check_shape(name, keep, (size,))
        keep = torch.nonzero(keep).flatten()
        if keep.numel() == 0:
            raise ValueError(f"{name}: the keep mask keeps no channel; a layer with nothing kept has "
                             f"no compact form -- remove the layer instead")
    elif keep.dim() == 1 and not keep.is_floating_point():
        keep = torch.sort(keep).values
    return validate_indices(name, keep, size, device=device)


class CompactLinear(nn.Module):
    """Drop-in pruned linear layer with a gather/scatter-fused GEMM.

    ``weight``: (N_kept, K_kept) compact weight; ``bias``: (N_kept,) or None.
    ``in_features``/``out_features``: the widths of the (possibly wider) input
    and output spaces. ``in_idx`` (length K_kept, into ``in_features``): the
    input features the layer reads; ``None`` means the input is already
    compact (``in_features == K_kept``). ``out_idx`` (length N_kept, into
    ``out_features``): where the outputs go in a full-width output whose other
    columns are 0 (or the residual's); ``None`` means a compact output
    (``out_features == N_kept``). Indices must be sorted ascending and unique
    (see :func:`masked_dora.ops.validate_indices`; :meth:`from_linear` sorts
    for you). ``weight`` and ``bias`` become Parameters (trainable: the op has
    gradients for x, weight, bias and residual).

    ``forward(x, residual=None)``: ``x`` (..., in_features) -> (...,
    out_features); with ``residual`` (..., out_features) it returns
    ``residual + y`` (scatter fused with the add; a new tensor, ``residual``
    is not modified). :meth:`add_into` is the in-place serving form.

    ``defer_scatter=True`` (with ``out_idx``): where no autograd graph or
    compiled graph can see it and no forward hook gets it, ``forward(x)`` returns a
    :class:`~masked_dora.nn.DeferredScatter`, which fuses the scatter into the
    residual add the model's own code does next (``residual + y``) and is
    the plain output for anything else (see :mod:`masked_dora.nn.deferred_scatter`).
    An attribute, not state: the state dict is the same either way.
    """

    def __init__(self, weight: Tensor, bias: Optional[Tensor], in_features: int, out_features: int,
                 in_idx: Optional[Tensor] = None, out_idx: Optional[Tensor] = None, defer_scatter: bool = False):
        super().__init__()
        if not isinstance(defer_scatter, bool):
            raise TypeError(f"defer_scatter: expected a bool, got {type(defer_scatter).__name__}")
        if defer_scatter and out_idx is None:
            raise ValueError("defer_scatter: needs out_idx (a layer that scatters into a wider output)")
        _checks.check_floating("weight", weight)
        _checks.check_ndim("weight", weight, 2)
        n_kept, k_kept = weight.shape
        if n_kept < 1 or k_kept < 1:
            raise ValueError(f"weight: expected a non-empty (N_kept, K_kept) tensor, got {tuple(weight.shape)}")
        _checks.check_vector("bias", bias, n_kept)
        _checks.check_same_device([("weight", weight), ("bias", bias)])
        _checks.check_same_dtype([("weight", weight), ("bias", bias)])
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if in_idx is None and in_features != k_kept:
            raise ValueError(f"in_features: expected {k_kept} (weight.shape[1]) without in_idx, got {in_features}")
        if out_idx is None and out_features != n_kept:
            raise ValueError(f"out_features: expected {n_kept} (weight.shape[0]) without out_idx, "
                             f"got {out_features}")
        in_idx = None if in_idx is None else validate_indices("in_idx", in_idx, in_features, weight.device)
        out_idx = None if out_idx is None else validate_indices("out_idx", out_idx, out_features, weight.device)
        if in_idx is not None and in_idx.numel() != k_kept:
            raise ValueError(f"in_idx: expected {k_kept} indices (weight.shape[1]), got {in_idx.numel()}")
        if out_idx is not None and out_idx.numel() != n_kept:
            raise ValueError(f"out_idx: expected {n_kept} indices (weight.shape[0]), got {out_idx.numel()}")
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(weight.detach().contiguous())
        self.register_parameter("bias", None if bias is None else nn.Parameter(bias.detach().contiguous()))
        self.register_buffer("in_idx", in_idx)
        self.register_buffer("out_idx", out_idx)
        self.defer_scatter = defer_scatter

    @property
    def kept_in(self) -> int:
        return self.weight.shape[1]

    @property
    def kept_out(self) -> int:
        return self.weight.shape[0]

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, keep_in: Keep = None, keep_out: Keep = None,
                    scatter: bool = True) -> "CompactLinear":
        """Compact ``linear`` to the kept input features ``keep_in`` and output rows ``keep_out``.

        Each is a bool mask or an index tensor (any order; sorted here) or
        ``None`` (keep all). The result reads the full-width input and, with
        ``scatter=True``, writes a full-width output with zeros in the pruned
        rows (so it equals ``linear`` applied to the input with the pruned
        features zeroed, pruned outputs zeroed); ``scatter=False`` returns the
        compact output (``keep_out.sum()`` columns) instead. Weights are copied.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        dev = linear.weight.device
        in_idx = keep_to_indices("keep_in", keep_in, linear.in_features, dev)
        out_idx = keep_to_indices("keep_out", keep_out, linear.out_features, dev)
        weight, bias = linear.weight.detach(), None if linear.bias is None else linear.bias.detach()
        if out_idx is not None:
            weight = weight.index_select(0, out_idx)
            bias = None if bias is None else bias.index_select(0, out_idx)
        if in_idx is not None:
            weight = weight.index_select(1, in_idx)
        weight, bias = weight.clone(), None if bias is None else bias.clone()
        if out_idx is not None and not scatter:
            return cls(weight, bias, linear.in_features, weight.shape[0], in_idx, None)
        return cls(weight, bias, linear.in_features, linear.out_features, in_idx, out_idx)

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tensor:
        # not with forward hooks: they get the output and may keep it (activation caching), and a kept deferred
        # output holds the input (down_proj's: the intermediate width) and recomputes the GEMM when read
        if (residual is None and self.defer_scatter and isinstance(x, Tensor)
                and not (self._forward_hooks or _global_forward_hooks) and can_defer(x, self.weight, self.bias)):
            check_compact_linear_call(x, self.weight, self.bias, self.in_idx, self.out_idx, self.out_features, None)
            return DeferredScatter(self, x)
        return compact_linear(x, self.weight, self.bias, self.in_idx, self.out_idx, self.out_features,
                              residual)

    def add_into(self, residual: Tensor, x: Tensor) -> Tensor:
        """Serving form: ``residual[..., out_idx] += layer(x)`` in place (inference only); returns ``residual``.

        ``residual`` (..., out_features) must be contiguous; see
        :func:`masked_dora.ops.compact_linear_`.
        """
        return compact_linear_(residual, x, self.weight, self.bias, self.in_idx, self.out_idx)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # validate the incoming indices first: with a bad one nothing of this module is loaded (it used to
        # keep the bad indices after load_state_dict raised, and the next forward read out of bounds)
        bad = False
        for name, size, length in (("in_idx", self.in_features, self.kept_in),
                                   ("out_idx", self.out_features, self.kept_out)):
            value = state_dict.get(prefix + name)
            if value is None or getattr(self, name) is None:
                continue
            try:
                idx = validate_indices(prefix + name, value, size)
                if idx.numel() != length:
                    raise ValueError(f"{prefix + name}: expected {length} indices, got {idx.numel()}")
            except (TypeError, ValueError) as exc:
                error_msgs.append(str(exc))
                bad = True
        if not bad:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                          unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"kept_in={self.kept_in}, kept_out={self.kept_out}, bias={self.bias is not None}, "
                f"gather={self.in_idx is not None}, scatter={self.out_idx is not None}"
                + (", defer_scatter=True" if self.defer_scatter else ""))

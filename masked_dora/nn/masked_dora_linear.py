"""``MaskedDoRALinear``: a drop-in ``nn.Linear`` with DoRA and a trainable channel mask."""

from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..masks.gates import Gate, make_gate
from ..ops import _checks
from ..ops.precision import autocast_enabled
from ..ops.row_norm import DEFAULT_EPS, default_eps, row_norm, weight_sq_norm
from .base_weight import quantized_weight_reason
from .functional import DROPOUT_MODES, masked_dora_linear
from .norm_cache import RowNormCache


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def _check_finite_real(name: str, value, *, maximum: float, positive: bool = False,
                       nonnegative: bool = False) -> float:
    """``value`` as a float: a real number (not a bool or a string), finite, of magnitude at most ``maximum``,
    and ``> 0`` (``positive``) or ``>= 0`` (``nonnegative``) when asked."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a finite real number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite real number, got {value!r}")
    if (positive and not value > 0) or (nonnegative and not value >= 0):
        raise ValueError(f"{name}: expected a {'positive' if positive else 'non-negative'} float, got {value!r}")
    if abs(value) > maximum:
        raise ValueError(f"{name}: expected a magnitude of at most {maximum:g}, got {value!r}")
    return float(value)


class MaskedDoRALinear(nn.Module):
    r"""``nn.Linear`` with a frozen base weight, a DoRA adapter and a gated magnitude.

    ``y = (x W0^T + s (x A^T) B^T) * (m z / n) + z b`` where ``n`` is the detached
    row norm of ``W0 + s B A`` and ``z = gate(mask_logits)`` (see
    :mod:`masked_dora.ops.dora_linear` for the math and
    :mod:`masked_dora.masks.gates` for the gates). With every channel kept this
    is PEFT's DoRA (``use_dora=True``) exactly, with ``lora_dropout`` too: in training,
    ``lora_dropout > 0`` drops the adapter's input as PEFT does (``dropout_mode="peft"``, a second base
    GEMM on the dropped part) or on the adapter branch only (``"adapter"``, cheaper); see
    :func:`masked_dora.nn.functional.masked_dora_linear`.

    Parameters: ``weight`` (out x in, frozen), ``bias`` (out, frozen),
    ``lora_A`` (rank x in, Kaiming-uniform), ``lora_B`` (out x rank, zeros),
    ``magnitude`` (out, initialised to ``||W0_j||``), ``mask_logits`` (out,
    initialised to ``mask_init``: every channel kept with a margin).

    ``scaling`` is ``alpha / rank`` (``alpha / sqrt(rank)`` with ``use_rslora``).
    In training mode the gate samples a relaxed mask; in eval mode (or after
    :meth:`set_mask`) the mask is exactly 0/1, so eval outputs equal those of
    :meth:`to_linear`. The row norm is cached while ``weight``, ``lora_A`` and
    ``lora_B`` are unchanged (keyed on their versions), so gradient
    accumulation and activation checkpointing do not recompute it.
    """

    def __init__(
        self, in_features: int, out_features: int, bias: bool = True, rank: int = 8,
        alpha: float = 16.0, use_rslora: bool = False, gate: Union[str, Gate] = "hard_concrete",
        mask_init: float = 3.0, norm_eps: Optional[float] = DEFAULT_EPS, device=None, dtype=None,
        lora_dropout: float = 0.0, dropout_mode: str = "peft",
    ):
        super().__init__()
        _check_positive_int("in_features", in_features)
        _check_positive_int("out_features", out_features)
        _check_positive_int("rank", rank)
        if rank > min(in_features, out_features):
            raise ValueError(f"rank: expected at most min(in_features, out_features)="
                             f"{min(in_features, out_features)}, got {rank}")
        # bounds past which nothing is meaningful and float32 math overflows (a logit of 100 is already certain)
        alpha = _check_finite_real("alpha", alpha, positive=True, maximum=1e6)
        mask_init = _check_finite_real("mask_init", mask_init, maximum=100.0)
        if norm_eps is not None:
            norm_eps = _check_finite_real("norm_eps", norm_eps, nonnegative=True, maximum=1.0)
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating-point dtype, got {dtype}")
        lora_dropout = _check_finite_real("lora_dropout", lora_dropout, nonnegative=True, maximum=1.0)
        if lora_dropout >= 1.0:
            raise ValueError(f"lora_dropout: expected a probability in [0, 1), got {lora_dropout!r}")
        if dropout_mode not in DROPOUT_MODES:
            raise ValueError(f"dropout_mode: expected one of {DROPOUT_MODES}, got {dropout_mode!r}")
        self.lora_dropout, self.dropout_mode = lora_dropout, dropout_mode
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.alpha, self.use_rslora = float(alpha), bool(use_rslora)
        self.scaling = self.alpha / (math.sqrt(rank) if use_rslora else rank)
        self.mask_init = float(mask_init)
        self.norm_eps = None if norm_eps is None else float(norm_eps)  # None: per dtype
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory), requires_grad=False)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.gate = make_gate(gate)
        self._reset_base()
        self._create_adapter()
        self._norms = RowNormCache()
        self._mask_source = None
        # what the row norm needs of the input columns keep_input_columns dropped (None: none dropped):
        # ||W0_d,j||^2 (N), W0_d A_d^T (N x r), A_d A_d^T (r x r), in float32 (float64 for float64)
        self.register_buffer("dropped_sq", None)
        self.register_buffer("dropped_wa", None)
        self.register_buffer("dropped_gram", None)

    # ------------------------------------------------------------ construction

    def _reset_base(self) -> None:
        # the initialisation nn.Linear uses
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def _create_adapter(self) -> None:
        factory = {"device": self.weight.device, "dtype": self.base_dtype}
        self.lora_A = nn.Parameter(torch.empty(self.rank, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, self.rank, **factory))
        self.magnitude = nn.Parameter(torch.empty(self.out_features, **factory))
        self.mask_logits = nn.Parameter(torch.empty(self.out_features, **factory))
        self.register_buffer("fixed_keep", torch.ones(self.out_features, dtype=torch.bool,
                                                       device=self.weight.device))
        self.register_buffer("mask_fixed", torch.zeros((), dtype=torch.bool, device=self.weight.device))
        if self.weight.device.type != "meta":
            self.gate.to(self.weight.device)
        self.reset_adapter()

    @torch.no_grad()
    def reset_adapter(self) -> None:
        """A as in PEFT (Kaiming-uniform), B = 0, m = ||W0_j||, logits = ``mask_init``, no fixed mask."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)
        if self.weight.device.type != "meta":
            self.magnitude.copy_(self._base_row_sq().sqrt())
        self.mask_logits.fill_(self.mask_init)
        self.fixed_keep.fill_(True)
        self.mask_fixed.fill_(False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int = 8, alpha: float = 16.0, use_rslora: bool = False,
                    gate: Union[str, Gate] = "hard_concrete", mask_init: float = 3.0,
                    norm_eps: Optional[float] = DEFAULT_EPS, lora_dropout: float = 0.0,
                    dropout_mode: str = "peft") -> "MaskedDoRALinear":
        """Wrap ``linear``: its weight and bias Parameters are shared (no copy) and frozen."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected an nn.Linear, got {type(linear).__name__}")
        reason = quantized_weight_reason(linear.weight)
        if reason is not None:
            raise TypeError(f"linear: expected a plain floating-point weight, got {reason}; masked DoRA needs the base "
                            f"weight's values (its rows' norms, and the kept rows at compaction), so load the model "
                            f"unquantized (e.g. dtype=torch.bfloat16), or wrap a quantized layer whose weight "
                            f"dequantizes with QuantizedBaseDoRALinear.from_quantized")
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, rank=rank,
                    alpha=alpha, use_rslora=use_rslora, gate=gate, mask_init=mask_init,
                    norm_eps=norm_eps, device="meta", dtype=linear.weight.dtype, lora_dropout=lora_dropout,
                    dropout_mode=dropout_mode)
        layer.weight = linear.weight
        layer.weight.requires_grad_(False)
        if linear.bias is not None:
            layer.bias = linear.bias
            layer.bias.requires_grad_(False)
        layer._create_adapter()
        return layer

    # ------------------------------------------------------------ masks

    @property
    def mask_source(self):
        """The external mask source this layer's ``z`` comes from, or ``None`` (its own logits)."""
        return self.__dict__.get("_mask_source")

    def set_mask_source(self, source) -> None:
        """Take ``z`` from ``source`` instead of this layer's own logits (``None``: back to them).

        ``source`` is any object that is not a Module (so nothing is registered
        twice) with ``gate_values() -> Tensor`` and ``keep_mask() -> bool Tensor``,
        each of shape ``(out_features,)``: this is how the layers of a coupled
        group share one set of mask logits (see :mod:`masked_dora.models.group_mask`).
        While a source is set the layer's own ``mask_logits`` are frozen and
        unused, and :meth:`set_mask` is refused (set the source's mask instead).
        """
        if source is not None and (isinstance(source, nn.Module) or not (
                callable(getattr(source, "gate_values", None)) and callable(getattr(source, "keep_mask", None)))):
            raise TypeError(f"source: expected a non-Module object with gate_values() and keep_mask(), "
                            f"got {type(source).__name__}")
        self._mask_source = source
        self.mask_logits.requires_grad_(source is None)

    def gate_values(self) -> Tensor:
        """``z``: the fixed mask if one is set, else the gate's output (sampled in training)."""
        if self.mask_source is not None:
            return self.mask_source.gate_values()
        # torch.where, not an `if`: no host sync, and torch.compile sees no data-dependent branch
        z = self.gate(self.mask_logits)  # float32 (float64 for float64 logits), never half precision
        return torch.where(self.mask_fixed, self.fixed_keep.to(z.dtype), z)

    def zero_gate_grad(self) -> Union[bool, Tensor]:
        """Whether a gate value of exactly 0 can carry a gradient to the logits (bool, or a bool tensor that
        broadcasts over the channels): only straight-through gates' can (hard-concrete's clamp and a fixed
        mask's cannot). Where it cannot, the backward needs no pre-scale output of that channel (issue 16).
        A mask source without ``zero_gate_grad()`` is taken to have it (always correct, sometimes slower)."""
        if self.mask_source is not None:
            probe = getattr(self.mask_source, "zero_gate_grad", None)
            return True if probe is None else probe()
        return ~self.mask_fixed if self.gate.straight_through else False

    def keep_mask(self) -> Tensor:
        """The current hard decision (bool, one per output channel)."""
        if self.mask_source is not None:
            return self.mask_source.keep_mask().bool()
        return torch.where(self.mask_fixed, self.fixed_keep, self.gate.hard(self.mask_logits.detach()).bool())

    @torch.no_grad()
    def set_mask(self, keep: Tensor) -> None:
        """Fix a hard 0/1 mask (``keep``: bool, one per output channel) until :meth:`clear_mask`."""
        if not isinstance(keep, Tensor) or keep.dtype != torch.bool:
            raise TypeError(f"keep: expected a bool tensor, got "
                            f"{keep.dtype if isinstance(keep, Tensor) else type(keep).__name__}")
        _checks.check_shape("keep", keep, (self.out_features,))
        if self.mask_source is not None:
            raise RuntimeError("set_mask: this layer's mask comes from a shared mask source "
                               "(set_mask_source); set the mask on that source instead")
        self.fixed_keep.copy_(keep.to(self.fixed_keep.device))
        self.mask_fixed.fill_(True)

    @torch.no_grad()
    def clear_mask(self) -> None:
        """Go back to the learned gate."""
        self.fixed_keep.fill_(True)
        self.mask_fixed.fill_(False)

    @property
    def sparsity(self) -> float:
        """Fraction of output channels the hard decision removes."""
        return 1.0 - self.keep_mask().float().mean().item()

    # ------------------------------------------------------------ forward

    @property
    def base_dtype(self) -> torch.dtype:
        """The dtype ``W0`` computes in, which the adapter takes: the weight's (a quantized base's dequantized
        dtype, :class:`~masked_dora.nn.quantized_base.QuantizedBaseDoRALinear`)."""
        return self.weight.dtype

    def base_weight(self) -> Tensor:
        """``W0`` as a plain floating-point tensor (out x in): the weight itself (a quantized base dequantizes
        it, transiently). For readers of the values outside the layer (importance scores)."""
        return self.weight

    def _base_row_sq(self) -> Tensor:
        """``||W0_j||^2`` computed now (the magnitude's initial value is its square root)."""
        return weight_sq_norm(self.weight)

    def weight_sq(self) -> Optional[Tensor]:
        """``||W0_j||^2`` (float32), cached while the frozen weight is unchanged."""
        return self._norms.weight_sq(self.weight)

    def invalidate_norm_cache(self, weight_sq: bool = True) -> None:
        """Drop the cached row norm (and ``||W0||^2``, unless ``weight_sq=False``); the next forward
        recomputes them.

        The cache is keyed on the tensors' version counters, which every in-place op (an optimizer
        step, ``with torch.no_grad(): p.add_(...)``) bumps; an edit through ``.data``
        (``layer.lora_B.data.normal_()``) bumps nothing: call this after one. Under FSDP2 or ZeRO-3 the
        re-gathered parameters keep the key (see :class:`RowNormCache`): a model prepared by
        ``prepare_model`` calls this at every forward then; a bare layer sharded by you needs it after
        every optimizer step.
        """
        self._norms.clear(weight_sq)

    def weight_norm(self) -> Tensor:
        """The detached row norm ``n``; cached while weight, lora_A and lora_B are unchanged (their
        version counters; see :meth:`invalidate_norm_cache` for edits through ``.data``). After
        :meth:`keep_input_columns`, the norm of the whole row, dropped columns included."""
        if self.dropped_sq is None:
            return self._norms.norm(self.weight, self.lora_A, self.lora_B, self.scaling, self.norm_eps)
        return self._joined_norm(self._norms.norm(self.weight, self.lora_A, self.lora_B, self.scaling, 0.0))

    @torch.no_grad()
    def _joined_norm(self, kept: Tensor) -> Tensor:
        """``max(sqrt(n_kept^2 + n_dropped^2), eps)``: the row norm over the kept and the dropped columns, with
        ``n_dropped^2 = ||W0_d||^2 + 2 s <W0_d A_d^T, B> + s^2 B (A_d A_d^T) B^T`` from the constants
        :meth:`keep_input_columns` kept (``B`` trains, the rest is frozen)."""
        b = self.lora_B.detach().to(self.dropped_wa.dtype)
        s = self.scaling
        cross, low_rank = (self.dropped_wa * b).sum(1), ((b @ self.dropped_gram) * b).sum(1)
        dropped_sq = self.dropped_sq + (2.0 * s) * cross + (s * s) * low_rank
        eps = default_eps(self.weight.dtype) if self.norm_eps is None else self.norm_eps
        return torch.sqrt(kept.to(dropped_sq.dtype).square() + dropped_sq.clamp_min(0.0)).clamp_min(eps)

    # ------------------------------------------------------------ training at the kept size

    @torch.no_grad()
    def keep_output_rows(self, keep: Tensor) -> None:
        """Drop, in place, the output channels where ``keep`` (bool, ``out_features``) is False: their rows of
        ``W0``, the bias, ``B``, the magnitude and the mask. The kept channels compute what they computed (the
        row norm is per row). Their parameters are new tensors: build the optimizer afterwards."""
        keep = self._checked_keep("keep", keep, self.out_features)
        self.weight = nn.Parameter(self.weight[keep], requires_grad=False)
        if self.bias is not None:
            self.bias = nn.Parameter(self.bias[keep], requires_grad=False)
        for name in ("lora_B", "magnitude", "mask_logits"):
            old = getattr(self, name)
            setattr(self, name, nn.Parameter(old[keep], requires_grad=old.requires_grad))
        self.fixed_keep = self.fixed_keep[keep]
        self.out_features = int(keep.sum())
        if self.dropped_sq is not None:
            self.dropped_sq, self.dropped_wa = self.dropped_sq[keep], self.dropped_wa[keep]
        self.invalidate_norm_cache()

    @torch.no_grad()
    def keep_input_columns(self, keep: Tensor) -> None:
        """Drop, in place, the input channels where ``keep`` (bool, ``in_features``) is False, for inputs that
        are exactly zero there (a pruned producer's channels): outputs and gradients stay what they were.

        The GEMMs shrink to the kept columns of ``W0`` and ``A``; the row norm still spans the whole row:
        ``n^2 = n_kept^2 + n_dropped^2``, the dropped part from three small constants of the dropped
        columns (``||W0_d||^2``, ``W0_d A_d^T``, ``A_d A_d^T``; see :meth:`_joined_norm`), so the layer
        holds no more than the kept columns plus ``N x r``. Those columns of ``A`` have a zero gradient in
        full-width training (their input is zero), so they are constants there too, unless the optimizer
        moves a parameter whose gradient is zero (weight decay on ``A``, moments from earlier steps).
        """
        keep = self._checked_keep("keep", keep, self.in_features)
        drop = ~keep
        acc = torch.float64 if self.weight.dtype == torch.float64 else torch.float32
        w, a = self.weight[:, drop].to(acc), self.lora_A[:, drop].detach().to(acc)
        sq, wa, gram = w.square().sum(1), w @ a.t(), a @ a.t()
        if self.dropped_sq is not None:  # a second call: the sums over dropped columns add up
            sq, wa, gram = sq + self.dropped_sq, wa + self.dropped_wa, gram + self.dropped_gram
        self.dropped_sq, self.dropped_wa, self.dropped_gram = sq, wa, gram
        self.weight = nn.Parameter(self.weight[:, keep].contiguous(), requires_grad=False)
        self.lora_A = nn.Parameter(self.lora_A[:, keep].contiguous(), requires_grad=self.lora_A.requires_grad)
        self.in_features = int(keep.sum())
        self.invalidate_norm_cache()

    def _checked_keep(self, name: str, keep: Tensor, size: int) -> Tensor:
        if not isinstance(keep, Tensor) or keep.dtype != torch.bool:
            raise TypeError(f"{name}: expected a bool tensor, got "
                            f"{keep.dtype if isinstance(keep, Tensor) else type(keep).__name__}")
        _checks.check_shape(name, keep, (size,))
        if not keep.any():
            raise ValueError(f"{name}: every channel would go; there would be no layer left")
        return keep.to(self.weight.device)

    def _compute_dtype(self, x: Tensor) -> torch.dtype:
        """The dtype the GEMMs run in: the autocast dtype inside ``torch.autocast``, else the weight's.

        Outside autocast ``x`` must already have the weight's dtype (as for
        ``nn.Linear``); inside it, like ``nn.Linear``, x and the frozen weight are
        cast to the autocast dtype while the row norm and the per-channel scale
        stay in float32 and the trainable parameters keep their own dtype.
        """
        if autocast_enabled(x.device):
            return torch.get_autocast_dtype(x.device.type)
        return self.weight.dtype

    def _check_input(self, x: Tensor) -> None:
        _checks.check_floating("x", x)
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected last dimension in_features={self.in_features}, "
                             f"got shape {tuple(x.shape)}")
        if x.device != self.weight.device:
            raise ValueError(f"x: expected device {self.weight.device} (the layer's), got {x.device}")
        if x.dtype != self.weight.dtype and not autocast_enabled(x.device):
            raise TypeError(f"x: expected dtype {self.weight.dtype} (the layer's weight dtype; or run "
                            f"inside torch.autocast), got {x.dtype}")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        dtype = self._compute_dtype(x)
        x = x.to(dtype)
        dropped = None
        if self.training and self.lora_dropout > 0:  # the adapter's dropout, as dropout_mode applies it
            dropped = torch.nn.functional.dropout(x, self.lora_dropout, training=True)
        return masked_dora_linear(x, self.weight.to(dtype), self.bias, self.lora_A, self.lora_B,
                                  self.scaling, self.magnitude, self.gate_values(), norm=self.weight_norm(),
                                  dropped=dropped, dropout_mode=self.dropout_mode,
                                  zero_gate_grad=self.zero_gate_grad())

    # ------------------------------------------------------------ merging

    @torch.no_grad()
    def merged_weight(self) -> Tuple[Tensor, Optional[Tensor]]:
        """``(c * (W0 + s B A), z * b)`` under the hard mask, full width, in the weight dtype.

        Pruned rows (and their bias entries) are exactly zero.
        """
        acc = torch.float64 if self.weight.dtype == torch.float64 else torch.float32
        z = self.keep_mask().to(acc)
        A, B = self.lora_A.to(acc), self.lora_B.to(acc)
        norm = self._fresh_row_norm().to(acc)
        scale = self.magnitude.to(acc) * z / norm
        merged = torch.addmm(self.weight.to(acc), B, A, alpha=self.scaling).mul_(scale[:, None])
        bias = None if self.bias is None else (z * self.bias.to(acc)).to(self.bias.dtype)
        return merged.to(self.weight.dtype), bias

    def _fresh_row_norm(self) -> Tensor:
        """The row norm computed now (not cached), dropped input columns included."""
        dtype = self.weight.dtype
        A, B = self.lora_A.to(dtype), self.lora_B.to(dtype)
        if self.dropped_sq is None:
            return row_norm(self.weight, A, B, self.scaling, None, self.norm_eps)
        return self._joined_norm(row_norm(self.weight, A, B, self.scaling, None, 0.0))

    @torch.no_grad()
    def _merged_kept_rows(self, caller: str) -> Tuple[Tensor, Optional[Tensor], Tensor]:
        """``(rows, bias, kept)``: the merged weight's kept rows, their bias and the kept indices."""
        weight, bias = self.merged_weight()
        kept = torch.nonzero(self.keep_mask()).flatten().to(weight.device)
        if kept.numel() == 0:
            raise ValueError(f"{caller}: every output channel is pruned; there is no layer left to build "
                             "(remove the layer and its consumer's input instead)")
        rows = weight.index_select(0, kept)
        return rows, None if bias is None else bias.index_select(0, kept), kept

    @torch.no_grad()
    def to_linear(self, compact: bool = False) -> Union[nn.Linear, Tuple[nn.Linear, Tensor]]:
        """The merged ``nn.Linear``.

        ``compact=False``: full width, pruned rows zero. ``compact=True``: the
        pruned rows removed; returns ``(linear, kept_indices)`` with
        ``kept_indices`` the sorted int64 indices of the kept output channels.
        """
        if compact:
            rows, bias, kept = self._merged_kept_rows("to_linear(compact=True)")
        else:
            (rows, bias), kept = self.merged_weight(), None
        linear = nn.Linear(self.in_features, rows.shape[0], bias=bias is not None,
                           device=rows.device, dtype=rows.dtype)
        linear.weight.copy_(rows)
        if bias is not None:
            linear.bias.copy_(bias)
        return linear if not compact else (linear, kept)

    @torch.no_grad()
    def to_compact(self, scatter: bool = False):
        """The merged layer with its pruned rows dropped, as a :class:`~masked_dora.nn.CompactLinear`.

        The weight is ``c * (W0 + s B A)`` from :meth:`merged_weight` (hard
        mask), kept rows only. ``scatter=False``: the output is compact (one
        column per kept channel, in ascending channel order), for a layer
        whose consumer drops the matching input columns (see
        :func:`masked_dora.nn.compact_pair`). ``scatter=True``: the output is
        full width (``out_features``) with exact zeros in the pruned channels,
        i.e. equal to this layer's eval-mode output; ``forward(x, residual)``
        then adds into a residual stream. Raises if every channel is pruned.
        """
        from .compact_linear import CompactLinear

        rows, bias, kept = self._merged_kept_rows("to_compact")
        if scatter:
            return CompactLinear(rows, bias, self.in_features, self.out_features, out_idx=kept)
        return CompactLinear(rows, bias, self.in_features, rows.shape[0])

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, rank={self.rank}, alpha={self.alpha:g}, "
                f"scaling={self.scaling:.4g}, use_rslora={self.use_rslora}, gate={self.gate.name}"
                + (f", lora_dropout={self.lora_dropout:g}, dropout_mode={self.dropout_mode}"
                   if self.lora_dropout else "")
                + (", dropped_inputs" if self.dropped_sq is not None else ""))

"""Masked DoRA over a quantized base layer (QLoRA-style): bitsandbytes' 4- and 8-bit layers, torchao's weights.

The quantized module stays the frozen base, whole: its weight is never stored dequantized. What the layer needs
of ``W0`` it gets from the module itself:

* the base GEMM ``x W0^T + b`` is the module's own forward (its autograd gives the input gradient; ``W0`` is
  frozen), so the quantizer's kernels and memory savings carry over;
* the DoRA row norm ``||W0 + s B A||`` is detached, as in :class:`~masked_dora.nn.MaskedDoRALinear`: ``||W0_j||^2``
  is computed once at wrap time, and the rest by the same :func:`~masked_dora.ops.row_norm.row_norm` on a transient
  dequantized copy of this one layer's ``W0`` whenever ``A`` or ``B`` changed (once per optimizer step, one layer
  at a time: PEFT's DoRA over a quantized base dequantizes at every forward);
* merging (compaction, ``to_linear``) dequantizes the layer into its compute dtype, then merges as a plain one.

The per-channel algebra is plain torch autograd (not the fused ops, which read ``W0`` as a tensor): outputs and
gradients equal a plain layer's on the dequantized weight up to rounding.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.precision import autocast_enabled
from ..ops.row_norm import row_norm, weight_sq_norm
from .base_weight import dequantize_weight, quantized_weight_reason
from .masked_dora_linear import MaskedDoRALinear


def is_quantized_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a linear layer with a quantized weight (which :class:`QuantizedBaseDoRALinear` wraps
    if :func:`~masked_dora.nn.base_weight.dequantize_weight` can read it)."""
    weight = getattr(module, "weight", None)
    return (isinstance(weight, Tensor) and isinstance(getattr(module, "in_features", None), int)
            and isinstance(getattr(module, "out_features", None), int) and quantized_weight_reason(weight) is not None)


class QuantizedBaseDoRALinear(MaskedDoRALinear):
    """:class:`~masked_dora.nn.MaskedDoRALinear` whose frozen base is a quantized linear module (``base``), kept as
    it is; build it with :meth:`from_quantized`. ``weight`` and ``bias`` are the base's (``weight`` holds the
    quantizer's codes: read the values with :meth:`base_weight`). Training at the kept size
    (``keep_output_rows``/``keep_input_columns``) is refused: it would copy out rows of the quantized weight."""

    @property
    def weight(self) -> Tensor:
        return self._base_param("weight")

    @property
    def bias(self) -> Optional[Tensor]:
        return self._base_param("bias")

    def _base_param(self, name: str) -> Optional[Tensor]:
        """The base's parameter ``name``; before :meth:`from_quantized` sets the base, the (meta) one the parent's
        ``__init__`` registered (an AttributeError until then, which ``register_parameter`` expects)."""
        base = self._modules.get("base")
        if base is not None:
            return getattr(base, name)
        if name in self._parameters:
            return self._parameters[name]
        raise AttributeError(name)

    @classmethod
    def from_quantized(cls, module: nn.Module, **kwargs) -> "QuantizedBaseDoRALinear":
        """Wrap the quantized linear ``module`` (kept whole and frozen); ``kwargs`` as for
        :meth:`MaskedDoRALinear.from_linear`. Raises ``TypeError`` if its weight cannot be dequantized."""
        if not is_quantized_linear(module):
            raise TypeError(f"module: expected a linear layer with a quantized weight, got {type(module).__name__}")
        w = dequantize_weight(module)
        if w is None:
            raise TypeError(f"module: the weight of this {type(module).__name__} "
                            f"({quantized_weight_reason(module.weight)}) cannot be dequantized "
                            f"(bitsandbytes 4/8-bit, torchao, or a module with dequantize() can), so masked DoRA "
                            f"cannot read its rows' norms")
        layer = cls(module.in_features, module.out_features, bias=module.bias is not None, device="meta",
                    dtype=w.dtype, **kwargs)
        del layer._parameters["weight"]
        layer._parameters.pop("bias", None)
        layer.base_dtype_ = w.dtype
        layer.base = module
        for p in module.parameters():
            p.requires_grad_(False)
        layer.register_buffer("base_weight_sq", weight_sq_norm(w), persistent=False)  # W0 is frozen: once
        layer._qnorm = None
        layer._create_adapter()
        return layer

    # ------------------------------------------------------------ the base's values

    @property
    def base_dtype(self) -> torch.dtype:
        return self.__dict__.get("base_dtype_") or self._parameters["weight"].dtype

    def base_weight(self) -> Tensor:
        """``W0`` dequantized now (out x in, ``base_dtype``): one layer's, transient."""
        return dequantize_weight(self.base).to(self.base_dtype)

    def _base_row_sq(self) -> Tensor:
        return self.base_weight_sq

    def weight_sq(self) -> Optional[Tensor]:
        return self.base_weight_sq

    def invalidate_norm_cache(self, weight_sq: bool = True) -> None:
        self._qnorm = None  # ||W0||^2 is kept: the quantized weight is frozen

    def weight_norm(self) -> Tensor:
        """The detached row norm of ``W0 + s B A`` (``row_norm`` on this layer's dequantized ``W0``), cached while
        ``lora_A`` and ``lora_B`` are unchanged (their version counters)."""
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in (self.lora_A, self.lora_B))
        key += ((self.scaling, self.norm_eps),)
        if torch.compiler.is_compiling() or self._qnorm is None or self._qnorm[0] != key:
            norm = self._fresh_row_norm()
            if torch.compiler.is_compiling():
                return norm
            self._qnorm = (key, norm)
        return self._qnorm[1]

    @torch.no_grad()
    def _fresh_row_norm(self) -> Tensor:
        w = self.base_weight()
        return row_norm(w, self.lora_A.detach().to(w.dtype), self.lora_B.detach().to(w.dtype), self.scaling,
                        self.base_weight_sq, self.norm_eps)

    @torch.no_grad()
    def merged_weight(self) -> Tuple[Tensor, Optional[Tensor]]:
        """``(c * (W0 + s B A), z * b)`` under the hard mask, full width, in ``base_dtype`` (``W0`` dequantized)."""
        w = self.base_weight()
        acc = torch.float64 if w.dtype == torch.float64 else torch.float32
        z = self.keep_mask().to(acc)
        norm = row_norm(w, self.lora_A.to(w.dtype), self.lora_B.to(w.dtype), self.scaling, None, self.norm_eps)
        scale = self.magnitude.to(acc) * z / norm.to(acc)
        merged = torch.addmm(w.to(acc), self.lora_B.to(acc), self.lora_A.to(acc), alpha=self.scaling)
        merged.mul_(scale[:, None])
        bias = None if self.bias is None else (z * self.bias.to(acc)).to(self.base_dtype)
        return merged.to(w.dtype), bias

    def keep_output_rows(self, keep: Tensor) -> None:
        raise NotImplementedError("keep_output_rows: training at the kept size is not supported over a quantized "
                                  "base layer (it would copy out rows of the quantized weight); compact at the end")

    def keep_input_columns(self, keep: Tensor) -> None:
        raise NotImplementedError("keep_input_columns: training at the kept size is not supported over a quantized "
                                  "base layer (it would copy out columns of the quantized weight); compact at the end")

    # ------------------------------------------------------------ forward

    def _compute_dtype(self, x: Tensor) -> torch.dtype:
        return torch.get_autocast_dtype(x.device.type) if autocast_enabled(x.device) else self.base_dtype

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, got "
                            f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected last dimension in_features={self.in_features}, got shape {tuple(x.shape)}")
        if x.device != self.lora_A.device:
            raise ValueError(f"x: expected device {self.lora_A.device} (the layer's), got {x.device}")
        if x.dtype != self.base_dtype and not autocast_enabled(x.device):
            raise TypeError(f"x: expected dtype {self.base_dtype} (the base's compute dtype; or run inside "
                            f"torch.autocast), got {x.dtype}")

    def forward(self, x: Tensor) -> Tensor:
        """``y = c (W0 x + s B A x) + z b`` with ``c = m z / n``, ``W0 x + b`` from the base module's forward (so
        ``c (base(x) + s B A x) + (z - c) b``); with dropout ``d``, as :func:`~masked_dora.nn.masked_dora_linear`
        says (``"peft"``: ``z base(x - d) + c (base(d) + s B A d) - c b``; ``"adapter"``: ``A`` reads ``d``)."""
        self._check_input(x)
        x = x.to(self._compute_dtype(x))
        d = x
        if self.training and self.lora_dropout > 0:  # drawn before the gate's sample, as the plain layer does
            d = F.dropout(x, self.lora_dropout, training=True)
        norm = self.weight_norm()
        acc = norm.dtype if norm.dtype in (torch.float32, torch.float64) else torch.float32
        z = self.gate_values().to(acc)
        c = self.magnitude.to(acc) * z / norm.to(acc)
        A, B = self.lora_A.to(x.dtype), self.lora_B.to(x.dtype)
        adapter = F.linear(F.linear(d, A), B) * self.scaling
        b = None if self.bias is None else self.bias.to(acc)
        if d is not x and self.dropout_mode == "peft":
            y = z * self.base(x - d).to(acc) + c * (self.base(d).to(acc) + adapter.to(acc))
            return (y if b is None else y - c * b).to(x.dtype)
        y = c * (self.base(x).to(acc) + adapter.to(acc))
        return (y if b is None else y + (z - c) * b).to(x.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", base={type(self.base).__name__}, base_dtype={self.base_dtype}"

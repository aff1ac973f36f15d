"""Which base weights masked DoRA can wrap: plain floating-point tensors, not quantized ones.

Masked DoRA reads the frozen base weight ``W0`` as numbers: each output row's DoRA norm ``||W0 + s B A||``, the
fused GEMMs, and the kept rows and columns that compaction copies out. A quantized base holds something else:
packed integer codes with scales (bitsandbytes' 4-bit NF4/FP4 layers of QLoRA, its 8-bit layers, GPTQ/AWQ),
FP8 values with block scales, or a tensor subclass whose arithmetic only its own library implements (torchao).
Wrapping one would fail deep inside a norm or a kernel, or compute with the codes; :func:`quantized_weight_reason`
names it first, so that callers refuse before anything changes."""

from __future__ import annotations

from typing import Optional

import torch

FLOAT8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                                        "float8_e5m2fnuz", "float8_e8m0fnu") if hasattr(torch, name))


def _is_wrapper_subclass(tensor: torch.Tensor) -> bool:
    """A tensor subclass that stores other tensors (torchao's quantized weights), other than a DTensor (FSDP2's
    shards of a plain weight)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    data = tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor
    if not is_traceable_wrapper_subclass(data):
        return False
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - a torch built without distributed
        return True
    return not isinstance(data, DTensor)


def quantized_weight_reason(weight: torch.Tensor) -> Optional[str]:
    """Why ``weight`` is not a plain floating-point tensor (a quantized one, described), or ``None``."""
    if weight.dtype in FLOAT8_DTYPES:
        return f"{weight.dtype} values (an FP8-quantized weight)"
    if not weight.is_floating_point():
        return (f"{weight.dtype} values ({type(weight).__name__}: packed quantized codes, as bitsandbytes' 4- and "
                f"8-bit layers, GPTQ and AWQ store)")
    if _is_wrapper_subclass(weight):
        data = weight.data if isinstance(weight, torch.nn.Parameter) else weight
        return f"a tensor of type {type(data).__name__} (a quantized tensor subclass, as torchao's are)"
    return None

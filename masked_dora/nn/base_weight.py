"""Which base weights masked DoRA can wrap: plain floating-point tensors, not quantized ones.

Masked DoRA reads the frozen base weight ``W0`` as numbers: each output row's DoRA norm ``||W0 + s B A||``, the
fused GEMMs, and the kept rows and columns that compaction copies out. A quantized base holds something else:
packed integer codes with scales (bitsandbytes' 4-bit NF4/FP4 layers of QLoRA, its 8-bit layers, GPTQ/AWQ),
FP8 values with block scales, or a tensor subclass whose arithmetic only its own library implements (torchao).
Wrapping one as a plain weight would fail deep inside a norm or a kernel, or compute with the codes;
:func:`quantized_weight_reason` names it first. A quantized linear module whose weight :func:`dequantize_weight`
can turn back into numbers is wrapped whole instead (:mod:`masked_dora.nn.quantized_base`: QLoRA-style training);
any other is refused before anything changes."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

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


def _bnb_dequantize(module: nn.Module, weight: torch.Tensor) -> Optional[torch.Tensor]:
    """bitsandbytes' 4-bit (``Params4bit``: NF4/FP4 codes with a ``quant_state``) and 8-bit (``Int8Params``: int8
    codes with per-row scales ``SCB``, on the weight or in ``module.state``) weights, dequantized; ``None`` for any
    other weight."""
    if getattr(weight, "quant_state", None) is not None and type(weight).__name__ == "Params4bit":
        import bitsandbytes.functional as bnb_f

        if getattr(weight.quant_state, "packing_format_for_cpu", False):
            # bitsandbytes repacks a 4-bit weight for its CPU kernel at an inference forward (eval, no grad, a CPU
            # with AVX512-BF16), in place, into a layout dequantize_4bit does not read: back to the standard one
            # first, as its own state-dict saving and .cuda() do (its next such forward packs it again)
            weight.data, weight.quant_state = bnb_f._convert_weight_packed_for_cpu_inverse(weight.data,
                                                                                         weight.quant_state)
        return bnb_f.dequantize_4bit(weight.data, weight.quant_state)
    scb = getattr(weight, "SCB", None)
    if scb is None:  # a Linear8bitLt's forward moves the scales to the module's state
        scb = getattr(getattr(module, "state", None), "SCB", None)
    if type(weight).__name__ == "Int8Params" and scb is not None:
        import bitsandbytes.functional as bnb_f

        return bnb_f.int8_vectorwise_dequant(weight.data, scb)
    return None


def _own_dequantize(weight: torch.Tensor):
    """A tensor subclass's own ``dequantize`` method (torchao's), or ``None`` (torch.Tensor's is for torch's own
    quantized tensors, and reads no subclass's codes)."""
    data = weight.data if isinstance(weight, nn.Parameter) else weight
    return data.dequantize if type(data).dequantize is not torch.Tensor.dequantize else None


def dequantize_weight(module: nn.Module) -> Optional[torch.Tensor]:
    """The weight of the linear ``module`` as a plain floating-point tensor (out x in, in the dtype the quantizer
    dequantizes to), computed now; ``None`` when its quantizer offers no way to: a module's own ``dequantize()``
    (HQQ's layers, masked DoRA's test layer), bitsandbytes' 4- and 8-bit weights, or a weight's ``dequantize()``
    (torchao's tensor subclasses). One layer at a time: callers drop it after use."""
    weight = getattr(module, "weight", None)
    if callable(getattr(module, "dequantize", None)):
        out = module.dequantize()
    elif isinstance(weight, torch.Tensor) and (out := _bnb_dequantize(module, weight)) is not None:
        pass
    elif isinstance(weight, torch.Tensor) and _is_wrapper_subclass(weight) and _own_dequantize(weight) is not None:
        out = _own_dequantize(weight)()
    else:
        return None
    out = out.detach()
    shape = (getattr(module, "out_features", None), getattr(module, "in_features", None))
    if not out.is_floating_point() or quantized_weight_reason(out) is not None or tuple(out.shape) != shape:
        return None
    return out

"""A test-only quantized linear layer (int8 codes, per-row scales, a forward of its own) and a tiny Llama whose
blocks hold it: the generic quantized-base path (``QuantizedBaseDoRALinear``) without a quantization library, for
``tests/test_quantized_base_training.py`` and the Trainer launches of ``tests/dist_trainer.py``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Int8Linear(nn.Module):
    """A quantized linear layer as quantizers build them: int8 codes, per-row scales, a forward of its own."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features, self.dtype = linear.in_features, linear.out_features, linear.weight.dtype
        w = linear.weight.detach()
        scale = w.abs().amax(1).clamp_min(1e-12) / 127
        self.weight = nn.Parameter(torch.round(w / scale[:, None]).to(torch.int8), requires_grad=False)
        self.register_buffer("scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def dequantize(self):
        return self.weight.to(self.dtype) * self.scale[:, None]

    def forward(self, x):
        return F.linear(x, self.dequantize(), self.bias)


def quantize_blocks(model):
    """Every linear layer of ``model``'s Llama blocks as an :class:`Int8Linear` (in place), and the
    ``quantization_config`` a quantizer records."""
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, Int8Linear(child))
    model.config.quantization_config = {"quant_method": "test_int8"}  # what a quantizer records
    return model

"""Builders for the layers that benchmarks compare: masked DoRA, PEFT DoRA, PEFT LoRA."""

from __future__ import annotations

import torch
from torch import nn

from masked_dora import MaskedDoRALinear


class _Holder(nn.Module):
    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.proj = linear

    def forward(self, x):
        return self.proj(x)


def peft_layer(in_features: int, out_features: int, rank: int, use_dora: bool, dtype=torch.float32,
               device="cpu") -> nn.Module:
    """One nn.Linear wrapped by PEFT (LoRA, or DoRA with ``use_dora``), random non-zero B."""
    import peft

    base = _Holder(nn.Linear(in_features, out_features, dtype=dtype, device=device))
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["proj"], use_dora=use_dora,
                             init_lora_weights=False, lora_dropout=0.0)
    return peft.get_peft_model(base, config)


def masked_dora_layer(in_features: int, out_features: int, rank: int, sparsity: float = 0.25,
                      dtype=torch.float32, device="cpu") -> MaskedDoRALinear:
    """A MaskedDoRALinear in training mode with non-zero B and ``sparsity`` of its channels pruned.

    The mask is fixed (``set_mask``) so every run does the same work; the gate's
    own cost is a few length-N vector ops.
    """
    layer = MaskedDoRALinear(in_features, out_features, rank=rank, alpha=2 * rank, dtype=dtype, device=device)
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.02)
    keep = torch.ones(out_features, dtype=torch.bool, device=device)
    keep[torch.randperm(out_features, device=device)[: int(out_features * sparsity)]] = False
    layer.set_mask(keep)
    return layer.train()


def fwd_bwd(layer: nn.Module, x: torch.Tensor) -> None:
    y = layer(x)
    y.backward(torch.ones_like(y))

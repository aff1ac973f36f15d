"""A quantized base that masked DoRA cannot keep as a quantized base is refused before anything changes, by
``prepare_model``, ``from_peft`` and ``MaskedDoRALinear.from_linear``, naming the parameter and the remedy: an
``nn.Linear`` holding codes, FP8 values or a tensor subclass with no dequantization of its own, and any quantized
base under ``from_peft``. What is supported (bitsandbytes 4/8-bit layers and others that dequantize, QLoRA-style)
is tested in ``tests/test_quantized_base_training.py``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from masked_dora.models import MaskedDoRAConfig, from_peft, prepare_model
from masked_dora.nn import MaskedDoRALinear
from masked_dora.nn.base_weight import FLOAT8_DTYPES, quantized_weight_reason

from tiny_models import tiny_model

CFG = dict(rank=2, alignment={"mlp": 8}, importance="none")


def _two_tensor(weight):
    """A tensor subclass that stores other tensors, as torchao's quantized weights do."""
    from torch.testing._internal.two_tensor import TwoTensor

    return TwoTensor(weight.detach().clone(), weight.detach().clone())


QUANTIZED = {
    "uint8 codes": lambda w: torch.zeros(w.numel() // 2, 1, dtype=torch.uint8),  # bitsandbytes 4-bit's packing
    "int8 codes": lambda w: w.detach().to(torch.int8),
    "float8": lambda w: w.detach().to(FLOAT8_DTYPES[0]),
    "tensor subclass": _two_tensor,
}


def test_plain_weights_are_not_quantized():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert quantized_weight_reason(nn.Parameter(torch.randn(4, 4, dtype=dtype))) is None
    assert "FP8" in quantized_weight_reason(torch.zeros(2, 2, dtype=FLOAT8_DTYPES[0]))
    assert "packed quantized codes" in quantized_weight_reason(torch.zeros(2, 2, dtype=torch.uint8))
    assert "TwoTensor" in quantized_weight_reason(nn.Parameter(_two_tensor(torch.randn(2, 2)), requires_grad=False))


@pytest.mark.parametrize("kind", list(QUANTIZED))
def test_prepare_model_refuses_a_quantized_block_before_any_change(kind):
    model = tiny_model("llama", kind="lm")
    mlp = model.model.layers[1].mlp
    mlp.up_proj.weight = nn.Parameter(QUANTIZED[kind](mlp.up_proj.weight), requires_grad=False)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"model: model\.layers\.1\.mlp\.up_proj\.weight holds .*quantized base "
                                         r"\(QLoRA-style\) is not supported: load the model unquantized"):
        prepare_model(model, MaskedDoRAConfig(**CFG))
    assert not any(isinstance(m, MaskedDoRALinear) for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before
    assert not hasattr(model, "masked_dora")


def test_from_linear_names_a_quantized_weight():
    linear = nn.Linear(8, 4)
    linear.weight = nn.Parameter(linear.weight.detach().to(torch.int8), requires_grad=False)
    with pytest.raises(TypeError, match=r"linear: expected a plain floating-point weight, got torch\.int8 values"):
        MaskedDoRALinear.from_linear(linear)


def test_from_peft_refuses_a_quantized_base_before_merging_anything():
    """from_peft merges the adapters of layers outside the groups (here lm_head) before preparing: a quantized
    base is refused first, so the PEFT model the user passed keeps its adapters."""
    from peft import LoraConfig, get_peft_model

    model = tiny_model("llama", kind="lm")
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"]))
    q = peft_model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    q.weight = nn.Parameter(q.weight.detach().to(torch.int8), requires_grad=False)
    with pytest.raises(ValueError, match=r"self_attn\.q_proj\.base_layer\.weight holds torch\.int8"):
        from_peft(peft_model)
    head = peft_model.get_base_model().lm_head
    assert hasattr(head, "lora_A") and not head.merged

"""A quantized base model (QLoRA-style: bitsandbytes 4/8-bit, torchao, FP8) is refused before anything changes,
by ``prepare_model``, ``from_peft`` and ``MaskedDoRALinear.from_linear``, naming the parameter and the remedy."""

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


def _saved_tiny_llama(path):
    model = tiny_model("llama", kind="lm")
    model.save_pretrained(str(path))
    return str(path)


def test_a_bitsandbytes_4bit_model_is_refused(tmp_path):
    """The real QLoRA path, where bitsandbytes is installed (it is not a dependency; CI skips this)."""
    pytest.importorskip("bitsandbytes")
    import transformers

    config = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                             bnb_4bit_compute_dtype=torch.bfloat16)
    model = transformers.AutoModelForCausalLM.from_pretrained(_saved_tiny_llama(tmp_path), quantization_config=config,
                                                              device_map="cpu")
    with pytest.raises(ValueError, match=r"torch\.uint8 values \(Params4bit.*quant_method='bitsandbytes'"):
        prepare_model(model, MaskedDoRAConfig(**CFG))


def test_a_torchao_model_is_refused(tmp_path):
    """torchao's int8 weight-only quantization, where torchao is installed (not a dependency; CI skips this)."""
    pytest.importorskip("torchao")
    import transformers
    from torchao.quantization import Int8WeightOnlyConfig

    model = transformers.AutoModelForCausalLM.from_pretrained(
        _saved_tiny_llama(tmp_path), quantization_config=transformers.TorchAoConfig(Int8WeightOnlyConfig()),
        device_map="cpu", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"a tensor of type Int8Tensor .*quant_method='torchao'"):
        prepare_model(model, MaskedDoRAConfig(**CFG))

"""torchao-quantized bases (QLoRA-style, as `transformers.TorchAoConfig` loads them): torchao's weight is a tensor
subclass on a plain ``nn.Linear`` whose forward is torchao's; ``QuantizedBaseDoRALinear`` keeps that layer as its
frozen base and dequantizes one layer at a time for the DoRA norm and for compaction. Skipped without torchao (not a
dependency; CI installs it beside ``.venv``, ``.ci/second_core.sh``). CPU configs only: torchao's int4 weight-only
layout needs a package (mslk) and kernels this CPU run does not have."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from masked_dora.models import MaskedDoRAConfig, prepare_model
from masked_dora.nn.base_weight import dequantize_weight
from masked_dora.nn.quantized_base import QuantizedBaseDoRALinear

from test_quantized_base_training import (_train_harden_compact, assert_a_masked_layer_over_it_equals_the_plain_one,
                                          assert_a_plain_compacted_model, resumed_run_matches_the_uninterrupted_one)
from tiny_models import tiny_config

torchao = pytest.importorskip("torchao")

# the weight-only configs, whose forward is x @ dequantize(W)^T (the plain layer on the dequantized weight), and one
# that quantizes the activations too (its forward differs from the dequantized layer's by that rounding)
WEIGHT_ONLY = ("Int8WeightOnlyConfig", "IntxWeightOnlyConfig", "Float8WeightOnlyConfig")
DYNAMIC = "Int8DynamicActivationInt8WeightConfig"


def _ao_config(name):
    import torchao.quantization as tq

    if not hasattr(tq, name):
        pytest.skip(f"torchao {torchao.__version__} has no {name}")
    return getattr(tq, name)()


def _torchao_linear(name) -> nn.Linear:
    from torchao.quantization import quantize_

    torch.manual_seed(0)
    q = nn.Sequential(nn.Linear(64, 32))
    quantize_(q, _ao_config(name))
    return q[0]


@pytest.mark.parametrize("name", WEIGHT_ONLY)
def test_a_torchao_layer_equals_the_plain_layer_on_its_dequantized_weight(name):
    """Outputs and every gradient (x, A, B, magnitude, mask logits) of the masked layer over torchao's quantized
    layer against the plain masked layer on its dequantized weight."""
    q = _torchao_linear(name)
    assert type(q.weight).__module__.startswith("torchao")
    w = dequantize_weight(q)
    assert w is not None and w.shape == (32, 64)
    assert_a_masked_layer_over_it_equals_the_plain_one(q, w.float())
    assert q.weight.grad is None


def _torchao_tiny_llama(tmp_path, name, dtype=torch.float32):
    """A tiny Llama saved plain and loaded the way a user loads one: ``from_pretrained(quantization_config=
    TorchAoConfig(<torchao config>))``."""
    import transformers

    config = tiny_config("llama")
    config.update(dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=16))
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(str(tmp_path / "base"))
    quantization = transformers.TorchAoConfig(_ao_config(name))
    return transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), quantization_config=quantization,
                                                             dtype=dtype)


@pytest.mark.parametrize("name,dtype", [("Int8WeightOnlyConfig", torch.float32),
                                        ("Int8WeightOnlyConfig", torch.bfloat16),
                                        (DYNAMIC, torch.float32)])
def test_a_torchao_model_trains_and_compacts_into_a_plain_model(tmp_path, name, dtype):
    """A tiny Llama loaded with TorchAoConfig, prepared, trained by the HF Trainer (bfloat16: with activation
    checkpointing and the Trainer's checkpoints saved), hardened and compacted: a plain model (no
    quantization_config, plain nn.Linear weights) with the masked model's logits, which reloads with plain
    from_pretrained. With activations quantized too (``Int8DynamicActivationInt8WeightConfig``) the compacted model
    computes on the dequantized weights in full precision: it differs from the masked model by the activations'
    int8 rounding, no more."""
    model = _torchao_tiny_llama(tmp_path, name, dtype)
    layers = model.model.layers
    assert type(layers[0].mlp.up_proj.weight).__module__.startswith("torchao")
    prepare_model(model, MaskedDoRAConfig(rank=2, alignment={"mlp": 8}, importance="magnitude", target_sparsity=0.5))
    wrapped = [m for m in model.modules() if isinstance(m, QuantizedBaseDoRALinear)]
    assert len(wrapped) == 7 * len(layers)  # q, k, v, o and the MLP's three, each over its torchao layer
    before = [m.lora_B.detach().clone() for m in wrapped]
    more = {} if dtype == torch.float32 else dict(gradient_checkpointing=True, save_strategy="steps", save_steps=2)
    small = _train_harden_compact(model, tmp_path, **more)
    assert not more or (tmp_path / "run" / "checkpoint-4").is_dir()
    assert any(not torch.equal(b, m.lora_B) for b, m in zip(before, wrapped))
    tol = {torch.float32: 1e-4, torch.bfloat16: 2e-2}[dtype] if name != DYNAMIC else 2e-2  # (measured: 5e-3)
    assert_a_plain_compacted_model(small, model, tmp_path, dtype, tol)


def test_a_torchao_run_resumes_from_its_checkpoint_bit_exactly(tmp_path):
    """The Trainer's checkpoint of a TorchAoConfig model stores torchao's weights as their parts (``_weight_qdata``,
    ``_weight_scale``): the resumed model keeps the frozen bases it was loaded with, and its trained tensors end
    bit-exactly as the uninterrupted run's."""
    def build():
        model = _torchao_tiny_llama(tmp_path, "Int8WeightOnlyConfig")
        prepare_model(model, MaskedDoRAConfig(rank=2, alignment={"mlp": 8}, importance="none", target_sparsity=0.5))
        return model

    resumed_run_matches_the_uninterrupted_one(build, tmp_path)

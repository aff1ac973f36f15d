"""QLoRA-style masked DoRA: a quantized base layer stays the base (QuantizedBaseDoRALinear), trains, and compacts
into a plain model. A test-only int8 linear (codes + per-row scales, its own forward and dequantize) runs the
generic path everywhere; bitsandbytes' NF4 where it is installed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from masked_dora.models import MaskedDoRACallback, MaskedDoRAConfig, compact_model, harden, prepare_model
from masked_dora.nn import MaskedDoRALinear
from masked_dora.nn.quantized_base import QuantizedBaseDoRALinear

from quantized_layers import Int8Linear, quantize_blocks
from tiny_models import tiny_inputs, tiny_model


def _plain(q: Int8Linear) -> nn.Linear:
    linear = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None, dtype=q.dtype)
    with torch.no_grad():
        linear.weight.copy_(q.dequantize())
        if q.bias is not None:
            linear.bias.copy_(q.bias)
    return linear


def _rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _output_and_grads(layer, x) -> list:
    """``layer``'s training-mode output on ``x`` and, after a backward of cos(y), the gradients of x, A, B, the
    magnitude and the mask logits (the gate sample and dropout mask drawn from seed 1: the same in every layer)."""
    layer.train()
    xi = x.clone().requires_grad_(True)
    torch.manual_seed(1)
    y = layer(xi)
    y.backward(torch.cos(y.detach()))
    return [y.detach(), xi.grad] + [getattr(layer, n).grad for n in ("lora_A", "lora_B", "magnitude", "mask_logits")]


@pytest.mark.parametrize("dropout_mode", [None, "peft", "adapter"])
@pytest.mark.parametrize("bias", [True, False])
def test_a_quantized_base_layer_equals_the_plain_layer_on_its_dequantized_weight(dropout_mode, bias):
    torch.manual_seed(0)
    q = Int8Linear(nn.Linear(24, 16, bias=bias, dtype=torch.float64))
    kw = dict(rank=4, lora_dropout=0.3 if dropout_mode else 0.0, dropout_mode=dropout_mode or "peft")
    layer, ref = QuantizedBaseDoRALinear.from_quantized(q, **kw), MaskedDoRALinear.from_linear(_plain(q), **kw)
    torch.testing.assert_close(layer.magnitude, ref.magnitude, rtol=1e-12, atol=0)
    with torch.no_grad():
        ref.lora_A.copy_(layer.lora_A)
        for t in (layer.lora_B, layer.magnitude, layer.mask_logits):
            t.add_(torch.randn_like(t))
        for name in ("lora_B", "magnitude", "mask_logits"):
            getattr(ref, name).copy_(getattr(layer, name))
    x = torch.randn(3, 5, 24, dtype=torch.float64)
    for got, want in zip(_output_and_grads(layer, x), _output_and_grads(ref, x)):
        assert _rel(got, want) < 1e-12
    assert layer.base.weight.grad is None and layer.base.weight.dtype == torch.int8
    layer.eval(), ref.eval()
    for got, want in zip(layer.merged_weight(), ref.merged_weight()):
        assert (got is None and want is None) or _rel(got, want) < 1e-12


def test_from_quantized_refuses_a_weight_it_cannot_read():
    linear = nn.Linear(8, 4)
    linear.weight = nn.Parameter(linear.weight.detach().to(torch.int8), requires_grad=False)
    with pytest.raises(TypeError, match=r"module: the weight of this Linear \(torch\.int8 values .*cannot be "
                                        r"dequantized"):
        QuantizedBaseDoRALinear.from_quantized(linear)
    with pytest.raises(TypeError, match="expected a linear layer with a quantized weight, got Linear"):
        QuantizedBaseDoRALinear.from_quantized(nn.Linear(8, 4))


def _train_harden_compact(model, tmp_path, steps=4, **args):
    from transformers import Trainer, TrainingArguments

    gen = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 97, (8, 9), generator=gen)]
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=steps, per_device_train_batch_size=4,
                             learning_rate=1e-2, report_to=[], use_cpu=True, disable_tqdm=True,
                             **{"save_strategy": "no", **args})
    Trainer(model=model, args=args, train_dataset=data, callbacks=[MaskedDoRACallback(model)]).train()
    model.eval()
    harden(model)
    return compact_model(model)


def test_prepare_train_compact_a_quantized_tiny_llama(tmp_path):
    """prepare_model wraps the int8 layers (the rest stays quantized), the HF Trainer trains, and the compacted model
    is a plain transformers model with the masked model's logits, which reloads with plain from_pretrained."""
    import transformers

    model = quantize_blocks(tiny_model("llama", kind="lm"))
    prepare_model(model, MaskedDoRAConfig(rank=2, alignment={"mlp": 8}, importance="magnitude",
                                          target_groups=("mlp",), target_sparsity=0.5))
    wrapped = [m for m in model.modules() if isinstance(m, QuantizedBaseDoRALinear)]
    assert len(wrapped) == 3 * len(model.model.layers)
    assert isinstance(model.model.layers[0].self_attn.q_proj, Int8Linear)  # not targeted: stays quantized
    before = [m.lora_B.detach().clone() for m in wrapped]
    small = _train_harden_compact(model, tmp_path)
    assert any(not torch.equal(b, m.lora_B) for b, m in zip(before, wrapped))
    assert all(type(m) is nn.Linear for m in small.model.layers[0].modules() if hasattr(m, "in_features"))
    assert small.model.layers[0].mlp.up_proj.out_features < model.model.layers[0].mlp.up_proj.out_features
    assert not hasattr(small.config, "quantization_config")
    inputs = tiny_inputs()
    with torch.no_grad():
        want = model(**inputs).logits
        assert _rel(small(**inputs).logits, want) < 1e-5
        small.save_pretrained(str(tmp_path / "small"))
        again = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "small"))
        assert _rel(again(**inputs).logits, want) < 1e-5


def test_hidden_pruning_over_a_quantized_base_is_refused_before_any_change():
    model = quantize_blocks(tiny_model("llama", kind="lm"))
    with pytest.raises(ValueError, match=r"q_proj\.weight holds torch\.int8 values .*quant_method='test_int8', and "
                                         r"hidden-dimension pruning"):
        prepare_model(model, MaskedDoRAConfig(rank=2, alignment={"mlp": 8, "hidden": 8}, importance="none",
                                              target_groups=("mlp", "hidden")))
    assert not any(isinstance(m, MaskedDoRALinear) for m in model.modules())


def _bnb_4bit_tiny_llama(tmp_path, dtype=torch.float32, cpu_kernel=False):
    pytest.importorskip("bitsandbytes")
    import transformers

    from tiny_models import tiny_config

    # every layer at least bitsandbytes' 64-wide block, and a multiple of 32 rows: what its CPU kernel's repacking
    # (at an eval forward without grad, on a CPU with AVX512-BF16) takes; tiny_config's 32 is narrower
    config = tiny_config("llama")
    config.update(dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                       head_dim=16))
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(str(tmp_path / "base"))
    config = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                             bnb_4bit_compute_dtype=dtype)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "base"), quantization_config=config,
                                                              device_map="cpu", dtype=dtype)
    if not cpu_kernel:  # its AVX512-BF16 inference kernel computes in bfloat16 (and rounds absmax to it, for good)
        for m in model.modules():
            if hasattr(m, "support_avx512bf16_for_cpu"):
                m.support_avx512bf16_for_cpu = False
    return model


def _bnb_linear(kind, tmp_path):
    """``(quantized layer, its dequantized weight)``: a 4-bit (NF4) layer of a model loaded with BitsAndBytesConfig,
    or an 8-bit Linear8bitLt built by hand (after one forward, which moves its scales into its state)."""
    from masked_dora.nn.base_weight import dequantize_weight

    if kind == "nf4":
        q = _bnb_4bit_tiny_llama(tmp_path).model.layers[0].mlp.up_proj
        assert type(q).__name__ == "Linear4bit"
    else:
        import bitsandbytes as bnb

        torch.manual_seed(0)
        linear = nn.Linear(64, 32)
        q = bnb.nn.Linear8bitLt(64, 32, has_fp16_weights=False)
        q.load_state_dict(linear.state_dict())
        q = q.to("cpu")
        q(torch.randn(2, 64))
        assert _rel(dequantize_weight(q), linear.weight.detach()) < 1e-2
    return q, dequantize_weight(q).float()


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_a_bitsandbytes_layer_equals_the_plain_layer_on_its_dequantized_weight(kind, tmp_path):
    """The real QLoRA bases (bitsandbytes' Linear4bit, NF4, and Linear8bitLt, on CPU), where bitsandbytes is
    installed (a test-only package; CI without it skips this)."""
    pytest.importorskip("bitsandbytes")
    assert_a_masked_layer_over_it_equals_the_plain_one(*_bnb_linear(kind, tmp_path))


def assert_a_masked_layer_over_it_equals_the_plain_one(q, w) -> None:
    """The masked layer over the quantized layer ``q`` (``QuantizedBaseDoRALinear``) against the plain masked layer
    on its dequantized weight ``w`` (float32): output and every gradient (x, A, B, magnitude, mask logits), with
    the same adapters (B random, not zero)."""
    plain = nn.Linear(q.in_features, q.out_features, bias=q.bias is not None)
    with torch.no_grad():
        plain.weight.copy_(w)
        if q.bias is not None:
            plain.bias.copy_(q.bias)
    layer, ref = QuantizedBaseDoRALinear.from_quantized(q, rank=4), MaskedDoRALinear.from_linear(plain, rank=4)
    with torch.no_grad():
        ref.lora_A.copy_(layer.lora_A)
        layer.lora_B.normal_()
        ref.lora_B.copy_(layer.lora_B)
    x = torch.randn(2, 7, q.in_features)
    for got, want in zip(_output_and_grads(layer, x), _output_and_grads(ref, x)):
        assert _rel(got, want) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_bitsandbytes_4bit_model_trains_and_compacts_into_a_plain_model(tmp_path, dtype):
    """QLoRA-style: a tiny Llama loaded with BitsAndBytesConfig(load_in_4bit=True) on CPU (float32, or bfloat16 as
    QLoRA runs), prepared, trained by the HF Trainer, hardened and compacted: a plain model (no quantization_config)
    with the masked model's logits, which reloads with plain from_pretrained."""
    model = _bnb_4bit_tiny_llama(tmp_path, dtype=dtype)
    tol = 1e-4 if dtype == torch.float32 else 2e-2  # (bfloat16: the masked model's GEMMs round, the merge does not)
    # bfloat16 as QLoRA runs it: with activation checkpointing and the Trainer's checkpoints saved
    more = {} if dtype == torch.float32 else dict(gradient_checkpointing=True, save_strategy="steps", save_steps=2)
    prepare_model(model, MaskedDoRAConfig(rank=2, alignment={"mlp": 8}, importance="none", target_sparsity=0.5))
    assert any(isinstance(m, QuantizedBaseDoRALinear) for m in model.modules())
    small = _train_harden_compact(model, tmp_path, **more)
    assert not more or (tmp_path / "run" / "checkpoint-4").is_dir()
    assert_a_plain_compacted_model(small, model, tmp_path, dtype, tol)


def assert_a_plain_compacted_model(small, model, tmp_path, dtype, tol) -> None:
    """``small`` (compacted from the quantized masked ``model``) is a plain model of ``dtype`` (no
    quantization_config, plain nn.Parameter weights, a narrower MLP) with ``model``'s logits to ``tol``, and so is
    its save reloaded with plain ``from_pretrained``."""
    import transformers

    assert not hasattr(small.config, "quantization_config")
    assert all(type(p) is nn.Parameter and p.dtype == dtype for p in small.parameters())
    assert small.model.layers[0].mlp.up_proj.out_features < model.model.layers[0].mlp.up_proj.out_features
    inputs = tiny_inputs()
    with torch.no_grad():
        want = model(**inputs).logits.float()
        assert _rel(small(**inputs).logits.float(), want) < tol
        small.save_pretrained(str(tmp_path / "small"))
        again = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "small"), dtype=dtype)
        assert _rel(again(**inputs).logits.float(), want) < tol


def resumed_run_matches_the_uninterrupted_one(build, tmp_path) -> None:
    """Train ``build()`` (a prepared quantized model) for 4 steps with checkpoints; train a fresh ``build()`` with other
    adapters and mask logits from the step-2 checkpoint: every trained tensor (adapters, magnitudes, mask logits)
    and the controller's state end bit-exactly as the uninterrupted run's. The quantized bases are frozen: the
    resumed model keeps those it was loaded with (transformers logs their keys as missing/unexpected where the
    checkpoint stores a quantized weight's parts under other names)."""
    import json

    from transformers import Trainer, TrainingArguments

    from masked_dora.models import param_groups

    gen = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 97, (8, 9), generator=gen)]

    def train(model, out, resume=None):
        args = TrainingArguments(output_dir=str(tmp_path / out), max_steps=4, per_device_train_batch_size=2,
                                 learning_rate=1e-2, report_to=[], use_cpu=True, disable_tqdm=True,
                                 save_strategy="steps", save_steps=2)
        Trainer(model=model, args=args, train_dataset=data, callbacks=[MaskedDoRACallback(model)],
                optimizer_cls_and_kwargs=(torch.optim.AdamW, {"params": param_groups(model, lr=1e-2)})
                ).train(resume_from_checkpoint=resume)

    torch.manual_seed(0)
    full = build()
    train(full, "full")
    torch.manual_seed(1)  # other starting adapters and mask logits
    resumed = build()
    train(resumed, "resumed", resume=str(tmp_path / "full" / "checkpoint-2"))
    trained = [n for n, p in full.named_parameters() if p.requires_grad]
    assert trained and any(n.endswith("mask_logits") for n in trained)
    params = dict(resumed.named_parameters())
    for name in trained:
        assert torch.equal(params[name], dict(full.named_parameters())[name]), name
    controller = [json.loads((tmp_path / run / "checkpoint-4" / "trainer_state.json").read_text())
                  ["stateful_callbacks"]["masked_dora"] for run in ("full", "resumed")]
    assert controller[0] == controller[1]


@pytest.mark.parametrize("kind", ["test_int8", "nf4"])
def test_a_quantized_run_resumes_from_its_checkpoint_bit_exactly(kind, tmp_path):
    def build():
        if kind == "nf4":
            model = _bnb_4bit_tiny_llama(tmp_path)
        else:
            model = quantize_blocks(tiny_model("llama", kind="lm"))
        prepare_model(model, MaskedDoRAConfig(rank=2, alignment={"mlp": 8}, importance="none", target_sparsity=0.5))
        return model

    resumed_run_matches_the_uninterrupted_one(build, tmp_path)


def test_a_bitsandbytes_weight_repacked_for_its_cpu_kernel_still_dequantizes(tmp_path):
    """bitsandbytes repacks a 4-bit weight in place for its CPU kernel at an inference forward (eval, no grad, on a
    CPU with AVX512-BF16), into a layout its dequantize_4bit does not read: dequantize_weight unpacks it first (the
    repacking rounds absmax to bfloat16, so the values move by that much)."""
    from masked_dora.nn.base_weight import dequantize_weight

    model = _bnb_4bit_tiny_llama(tmp_path, cpu_kernel=True)
    q = model.model.layers[0].mlp.up_proj
    before = dequantize_weight(q)
    q.eval()
    with torch.no_grad():
        q(torch.randn(3, q.in_features))
    if not getattr(q.weight.quant_state, "packing_format_for_cpu", False):
        pytest.skip("bitsandbytes did not repack the weight (this CPU lacks AVX512-BF16)")
    assert _rel(dequantize_weight(q), before) < 2 ** -8


def test_quantized_moe_experts_are_refused_before_any_change():
    """Masked DoRA's MoE experts read their packed weights as tensors: quantized ones are refused, naming them."""
    model = tiny_model("mixtral", kind="lm")
    experts = model.model.layers[0].mlp.experts
    experts.down_proj = nn.Parameter(experts.down_proj.detach().to(torch.int8), requires_grad=False)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.experts\.down_proj holds torch\.int8 values .*, and "
                                         r"it is a MixtralExperts, not a linear layer: this quantized base"):
        prepare_model(model, MaskedDoRAConfig(rank=2, alignment={"mlp": 8}, importance="none"))
    assert not any(isinstance(m, MaskedDoRALinear) for m in model.modules())


def test_importance_scores_read_a_quantized_base_dequantized():
    """magnitude and activation scores of a quantized base are those of the plain model on its dequantized weights
    (not of its int8 codes)."""
    from masked_dora.models.importance import activation_scores, magnitude_scores

    quantized = quantize_blocks(tiny_model("llama", kind="lm"))
    plain = quantize_blocks(tiny_model("llama", kind="lm"))
    for layer in plain.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, Int8Linear):
                    setattr(parent, name, _plain(child))
    del plain.config.quantization_config
    cfg = MaskedDoRAConfig(rank=2, alignment={"mlp": 8}, importance="none")
    prepare_model(quantized, cfg), prepare_model(plain, cfg)
    batches = [tiny_inputs()]
    for scores in (magnitude_scores, lambda m: activation_scores(m, batches)):
        got, want = scores(quantized), scores(plain)
        assert got.keys() == want.keys()
        for key in want:
            assert _rel(got[key], want[key]) < 1e-6


def test_compact_for_training_is_refused_over_a_quantized_base_before_any_change():
    """Training at the kept size would cut the quantized weights: refused (train_masked then trains at full width),
    and the layers keep their sizes."""
    from masked_dora.models.compact_training import compact_for_training

    model = quantize_blocks(tiny_model("llama", kind="lm"))
    prepare_model(model, MaskedDoRAConfig(rank=2, alignment={"mlp": 8}, importance="magnitude",
                                          target_groups=("mlp",), target_sparsity=0.5))
    harden(model)
    with pytest.raises(ValueError, match=r"compact_for_training cannot run: its base is quantized \(QLoRA-style\)"):
        compact_for_training(model)
    assert model.model.layers[0].mlp.up_proj.out_features == model.config.intermediate_size


@pytest.mark.parametrize("engine", ["fsdp", "deepspeed", "accelerate-fsdp"])
def test_sharding_a_quantized_base_is_refused_when_the_trainer_is_built(engine, tmp_path, monkeypatch):
    """FSDP or DeepSpeed over a quantized base (the codes and scales would be sharded as plain parameters) is
    refused, naming the argument, when the Trainer is built: before train() lets the engine wrap the model. (Before,
    nothing checked it.) A plain model is not refused by this check."""
    from transformers import TrainingArguments

    from masked_dora.models.sharded import refuse_sharded_quantized_base

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    if engine == "accelerate-fsdp":  # `accelerate launch` with an FSDP config file: the engine in the environment
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    else:  # the arguments as users set them (post-init parsing needs the engine's launcher: set afterwards)
        setattr(args, engine, ["full_shard"] if engine == "fsdp" else {"zero_optimization": {"stage": 3}})
    quantized = quantize_blocks(tiny_model("llama", kind="lm"))
    plain = tiny_model("llama", kind="lm")
    for model in (quantized, plain):
        prepare_model(model, MaskedDoRAConfig(rank=2, alignment={"mlp": 8}, importance="none",
                                              target_groups=("mlp",), target_sparsity=0.5))
    name = "DeepSpeed" if engine == "deepspeed" else "FSDP"
    with pytest.raises(ValueError, match=rf"args: {name} .* shards the model, whose masked-DoRA layers keep a "
                                         r"quantized base \(QLoRA-style\)"):
        MaskedDoRACallback(quantized).on_init_end(args, None, None)
    refuse_sharded_quantized_base(args, plain)  # a plain base: nothing to refuse here

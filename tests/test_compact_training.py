"""Training at the kept size (compact_for_training): the same model as training at full width, smaller GEMMs.

Two copies of a hardened model run the same recovery steps (train_masked, AdamW, no weight decay), one at
full width and one compacted for training (train_masked's default once the masks are fixed); compacting each
afterwards gives the same model, to float64 rounding (the GEMMs have other shapes).
"""

from __future__ import annotations

import copy

import pytest
import torch

from masked_dora.models import (MaskedDoRAConfig, compact_for_training, compact_model, export_peft, get_state, harden,
                                kept_fraction, load_training_state, prepare_model, save_training_state, train_masked)
from masked_dora.nn import MaskedDoRALinear

from tiny_family_table import AVAILABLE
from tiny_models import output_tensor, prune_kwargs, randomize_adapters, tiny_inputs, tiny_model

CASES = [("llama", "kv_groups"), ("llama", "query_heads"), ("mixtral", "kv_groups"), ("falcon-new", "kv_groups"),
         ("falcon", "query_heads"), ("gpt2", "kv_groups"), ("bert", "kv_groups"), ("bart", "kv_groups"),
         ("cohere-qk-norm", "query_heads"), ("stablelm-qk-norm", "kv_groups"), ("t5-gated", "kv_groups")]
CASES += [("gpt_oss", "query_heads")] if "gpt_oss" in AVAILABLE else []  # transposed, interleaved experts; sinks
# flat experts with gate and up apart, whose width attributes sit below the experts module (ffn.experts.mlp), which
# the prepared model has replaced
CASES += [("dbrx", "kv_groups")] if "dbrx" in AVAILABLE else []


def _hardened(family, gqa):
    torch.manual_seed(0)
    model = tiny_model(family, kind="lm").double()
    if hasattr(model.config, "_experts_implementation"):  # grouped_mm has no float64 kernel; eager computes alike
        model.config._experts_implementation = "eager"
    groups = ("mlp",) if family.startswith("t5") else ("mlp", "heads")
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5,
                                          target_groups=groups, **{**prune_kwargs(family), "gqa": gqa}))
    randomize_adapters(model)
    harden(model)
    return model


def _loss(model, batch):
    """A fixed random projection of the output (a mean square of a normalised encoder output is nearly
    constant: its gradient is rounding noise, which AdamW's per-element normalisation turns into full steps)."""
    out = output_tensor(model(**batch))
    direction = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    return (out * direction).mean()


def _batches():
    return [tiny_inputs(seed=s) for s in range(3)]


def _assert_the_same_model(full, small):
    """The full-width and the compacted-for-training runs: equal outputs, and equal compacted models."""
    inputs = tiny_inputs(seed=7)
    with torch.no_grad():
        ref = output_tensor(full(**inputs))
        torch.testing.assert_close(output_tensor(small(**inputs)), ref, rtol=1e-9, atol=1e-11)
        a, b = compact_model(full), compact_model(small)
        torch.testing.assert_close(output_tensor(b(**inputs)), output_tensor(a(**inputs)), rtol=1e-9, atol=1e-11)
    assert a.config.to_dict() == b.config.to_dict()
    assert a.state_dict().keys() == b.state_dict().keys()
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(q, p, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("family, gqa", CASES)
def test_compact_training_gives_the_full_width_model(family, gqa):
    full = _hardened(family, gqa)
    small = copy.deepcopy(full)
    widths = [m.weight.numel() for m in full.modules() if isinstance(m, MaskedDoRALinear)]
    train_masked(full, _batches(), _loss, steps=3, lr=1e-2, sparsity_penalty=False, compact=False)
    train_masked(small, _batches(), _loss, steps=3, lr=1e-2, sparsity_penalty=False)  # compact by default
    assert get_state(small).compacted_for_training and not get_state(full).compacted_for_training
    assert sum(m.weight.numel() for m in small.modules() if isinstance(m, MaskedDoRALinear)) < sum(widths)
    assert kept_fraction(small, "mlp") == kept_fraction(full, "mlp") == 0.5
    _assert_the_same_model(full, small)


def test_compact_training_needs_fixed_masks_and_is_final():
    model = tiny_model("llama", kind="lm")
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5))
    with pytest.raises(ValueError, match="compact_for_training cannot run: .* still learn their masks: call "
                                         "masked_dora.harden"):
        compact_for_training(model)
    harden(model)
    block = model.model.layers[0]
    compact_for_training(model)
    assert (block.mlp.gate_proj.out_features, block.mlp.down_proj.in_features) == (32, 32)
    assert (block.self_attn.q_proj.out_features, block.self_attn.o_proj.in_features) == (16, 16)
    assert block.mlp.down_proj.dropped_wa.shape == (32, 4)  # its row norms still count the dropped half (N x r)
    compact_for_training(model)  # a second call does nothing
    assert block.mlp.gate_proj.out_features == 32
    with pytest.raises(ValueError, match="hardening again would prune the kept ones"):
        harden(model)
    with pytest.raises(NotImplementedError, match="compact_for_training removed its pruned channels"):
        export_peft(model, "unused")


def test_a_training_state_saved_after_compaction_loads_compacted(tmp_path):
    model = _hardened("llama", "query_heads")
    train_masked(model, _batches(), _loss, steps=2, lr=1e-2, sparsity_penalty=False)
    save_training_state(model, str(tmp_path))
    fresh = load_training_state(tiny_model("llama", kind="lm").double(), str(tmp_path))
    assert get_state(fresh).compacted_for_training
    inputs = tiny_inputs(seed=3)
    with torch.no_grad():
        assert torch.equal(output_tensor(fresh(**inputs)), output_tensor(model(**inputs)))


def test_phi3_heads_train_at_full_width():
    """Phi-3's attention reads its head counts from the config: compact_for_training refuses its heads, and
    train_masked then trains at full width."""
    model = tiny_model("phi3", kind="lm")
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5))
    harden(model)
    with pytest.raises(ValueError, match="reads its head counts from the model config"):
        compact_for_training(model)
    train_masked(model, _batches(), _loss, steps=1, sparsity_penalty=False)
    assert not get_state(model).compacted_for_training


def test_the_trainer_trains_a_compacted_model_and_refuses_an_optimizer_built_before(tmp_path):
    """After compact_for_training a Trainer built then trains the new (kept-size) adapters; the optimizer of a
    Trainer that trained before compacting holds the replaced tensors and would train nothing: refused."""
    from transformers import Trainer, TrainingArguments

    from masked_dora.models import MaskedDoRACallback

    model = tiny_model("llama", kind="lm")
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5))
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 97, (8, 9))]

    def trainer():
        args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4,
                                 learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
        return Trainer(model=model, args=args, train_dataset=data, callbacks=[MaskedDoRACallback(model)])

    before = trainer()
    before.train()
    harden(model)
    compact_for_training(model)
    with pytest.raises(ValueError, match="built before compact_for_training replaced them"):
        before.train()
    b = model.model.layers[0].mlp.down_proj.lora_A.detach().clone()
    trainer().train()
    assert b.shape == (4, 32) and not torch.equal(model.model.layers[0].mlp.down_proj.lora_A, b)


def test_a_compacted_eval_model_draws_no_gate_noise_and_logs_the_kept_fraction():
    model = tiny_model("llama", kind="lm")
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.3))
    harden(model)
    model.eval()
    compact_for_training(model)
    state = torch.get_rng_state()
    with torch.no_grad():
        model(**tiny_inputs())
    assert torch.equal(torch.get_rng_state(), state)  # the new groups follow the model's eval mode
    from masked_dora.models import SparsityController

    # the controller's target (what train_masked logs) is what is kept (64 x 0.7 rounds to 48 channels, 2 KV
    # groups x 0.7 to 1), not a 30% cut planned again over the kept units (48 x 0.7 would round to 32)
    controller = SparsityController(model)
    assert float(controller.controllers["mlp"].target_keep(0)) == kept_fraction(model, "mlp") == 0.75
    assert float(controller.controllers["heads"].target_keep(0)) == kept_fraction(model, "heads") == 0.5


HIDDEN_CASES = [("llama", ("mlp", "heads", "hidden"), False), ("llama", ("hidden",), True),
                ("mistral", ("mlp", "heads", "hidden"), True), ("qwen2", ("mlp", "hidden"), False)]


def _hidden_hardened(family, groups, tied):
    import transformers

    from tiny_models import tiny_config

    model_class = getattr(transformers, type(tiny_model(family, kind="lm")).__name__)
    config = tiny_config(family)
    config.tie_word_embeddings = tied
    torch.manual_seed(0)  # the weights of tiny_model(family) (load_training_state below builds one)
    model = model_class(config).double().eval()
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_groups=groups,
                                          target_sparsity={"mlp": 0.5, "heads": 0.5, "hidden": 0.5}))
    randomize_adapters(model)
    harden(model)
    return model


@pytest.fixture
def float64_rms_norms(monkeypatch):
    """These families' RMSNorms compute in float32 whatever the input's dtype, which would hide the float64
    comparison below under float32 rounding (5e-8): the same norm, in the input's dtype."""
    import importlib

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    for family, cls in (("llama", "LlamaRMSNorm"), ("mistral", "MistralRMSNorm"), ("qwen2", "Qwen2RMSNorm")):
        module = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
        monkeypatch.setattr(getattr(module, cls), "forward", forward)


@pytest.mark.parametrize("family, groups, tied", HIDDEN_CASES)
def test_compact_training_narrows_the_residual_stream_to_the_full_width_model(family, groups, tied,
                                                                               float64_rms_norms):
    """hidden_mode="global": the embeddings, readers, writers, norms (weight x sqrt(d/d'), epsilon x d/d') and
    the config narrow to the kept residual channels; training on gives the model the full-width run gives."""
    full = _hidden_hardened(family, groups, tied)
    small = copy.deepcopy(full)
    train_masked(full, _batches(), _loss, steps=3, lr=1e-2, sparsity_penalty=False, compact=False)
    train_masked(small, _batches(), _loss, steps=3, lr=1e-2, sparsity_penalty=False)  # compact by default
    assert get_state(small).compacted_for_training
    assert small.config.hidden_size == 16 and small.get_input_embeddings().weight.shape == (97, 16)
    assert small.config.rms_norm_eps == 2 * full.config.rms_norm_eps
    assert small.model.norm.variance_epsilon == 2 * full.model.norm.variance_epsilon
    assert (small.lm_head.weight is small.get_input_embeddings().weight) == tied
    assert kept_fraction(small, "hidden") == kept_fraction(full, "hidden") == 0.5
    _assert_the_same_model(full, small)


def test_a_training_state_saved_after_narrowing_the_residual_stream_loads_narrowed(tmp_path):
    model = _hidden_hardened("llama", ("mlp", "heads", "hidden"), False)
    train_masked(model, _batches(), _loss, steps=2, lr=1e-2, sparsity_penalty=False)
    save_training_state(model, str(tmp_path))
    fresh = load_training_state(tiny_model("llama", kind="lm").double(), str(tmp_path))
    assert get_state(fresh).compacted_for_training and fresh.config.hidden_size == 16
    inputs = tiny_inputs(seed=3)
    with torch.no_grad():
        assert torch.equal(output_tensor(fresh(**inputs)), output_tensor(model(**inputs)))


def test_per_block_hidden_pruning_trains_at_full_width():
    model = tiny_model("llama", kind="lm")
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", hidden_mode="per_block",
                                          target_groups=("mlp", "heads", "hidden"), target_sparsity=0.5))
    harden(model)
    with pytest.raises(ValueError, match="hidden_mode='per_block' the blocks' kept residual channels cannot leave"):
        compact_for_training(model)
    train_masked(model, _batches(), _loss, steps=1, sparsity_penalty=False)
    assert not get_state(model).compacted_for_training

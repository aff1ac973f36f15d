"""Llama 4 (text): experts stored transposed, (E, in, out) with [gate | up], and called with every expert's
router-scaled tokens in turn (not the top-k convention); a shared expert kept whole; dense blocks outside
``moe_layers`` (width ``intermediate_size_mlp``). The family chain runs in ``test_models_families.py``."""

from __future__ import annotations

import copy

import pytest
import torch

from masked_dora.models import MaskedDoRAConfig, compact_model, get_state, prepare_model, train_masked
from masked_dora.nn import MaskedDoRAExperts

from test_compact_training import _batches, _hardened, _loss
from tiny_family_table import AVAILABLE
from tiny_models import harden_and_compact, output_tensor, randomize_adapters, tiny_inputs, tiny_model

pytestmark = pytest.mark.skipif("llama4_text" not in AVAILABLE, reason="this transformers has no Llama 4")


def _llama4():
    """The tiny Llama 4 with expert weights large enough to matter next to the shared expert's."""
    model = tiny_model("llama4_text", kind="lm")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".experts." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_wrapped_experts_compute_what_the_original_module_computes():
    """Before training (adapters at their start) the prepared model is the model: the wrapper reads the
    transposed [gate | up] weights and takes Llama 4's call (one run of rows per expert)."""
    model = _llama4()
    original = copy.deepcopy(model)
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none"))
    wrapped = model.model.layers[1].feed_forward.experts
    assert isinstance(wrapped, MaskedDoRAExperts) and not wrapped.interleaved
    assert [g.num_units for g in get_state(model).groups_of("mlp")] == [64, 4 * 32]
    inputs = tiny_inputs()
    with torch.no_grad():
        assert _rel(output_tensor(model(**inputs)), output_tensor(original(**inputs))) < 1e-5
        runs = torch.randn(4 * 5, 32)
        assert _rel(wrapped(runs), original.model.layers[1].feed_forward.experts(runs)) < 1e-5


def test_the_one_run_per_expert_call_checks_its_input():
    experts = MaskedDoRAExperts.from_packed(torch.randn(3, 8, 6), torch.randn(3, 6, 4), torch.nn.functional.silu,
                                            rank=2).eval()
    with pytest.raises(ValueError, match="expected 3 equal runs of rows"):
        experts(torch.randn(7, 6))
    with pytest.raises(ValueError, match="top_k_index, top_k_weights: expected both"):
        experts(torch.randn(6, 6), torch.zeros(6, 1, dtype=torch.long))
    x = torch.randn(6, 6)
    with torch.no_grad():
        out = experts(x)
        expected = torch.cat([experts.expert(e, x[2 * e:2 * e + 2]) for e in range(3)])
    assert torch.equal(out, expected)


def test_heads_pruned_alone_save_a_plain_checkpoint(tmp_path):
    """Uniform head pruning leaves the expert width alone, so the config says every size (head_dim, KV heads):
    Llama4ForCausalLM.from_pretrained reloads it without masked_dora."""
    import transformers as t

    model = _llama4()
    prepare_model(model, MaskedDoRAConfig(target_groups=("heads",), rank=2, importance="none", target_sparsity=0.5))
    assert get_state(model).save_form == "plain"
    randomize_adapters(model)
    ref, small, out = harden_and_compact(model)
    assert _rel(out, ref) < 1e-5
    assert (small.config.num_attention_heads, small.config.num_key_value_heads) == (2, 1)
    small.save_pretrained(tmp_path)
    with torch.no_grad():
        reloaded = t.Llama4ForCausalLM.from_pretrained(str(tmp_path)).eval()
        assert _rel(output_tensor(reloaded(**tiny_inputs())), ref) < 1e-5


def test_training_at_the_kept_size_gives_the_full_width_model():
    """compact_for_training narrows every expert (and the dense block) and the recovery steps then give the
    model the full-width steps give. Llama 4's norms compute in float32 even in a float64 model, so the two
    runs (GEMMs of other shapes) agree to float32 rounding, not float64's as test_compact_training.py's."""
    full = _hardened("llama4_text", "kv_groups")
    small = copy.deepcopy(full)
    train_masked(full, _batches(), _loss, steps=3, lr=1e-2, sparsity_penalty=False, compact=False)
    train_masked(small, _batches(), _loss, steps=3, lr=1e-2, sparsity_penalty=False)
    assert get_state(small).compacted_for_training
    experts = small.model.layers[1].feed_forward.experts
    assert experts.intermediate_dim == experts.down[0].in_features == 16
    inputs = tiny_inputs(seed=7)
    with torch.no_grad():
        ref = output_tensor(full(**inputs))
        assert _rel(output_tensor(small(**inputs)), ref) < 1e-6
        assert _rel(output_tensor(compact_model(small)(**inputs)), output_tensor(compact_model(full)(**inputs))) < 1e-6

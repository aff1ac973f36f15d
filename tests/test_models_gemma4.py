"""Gemma 4 (text) beyond the family chain: a heterogeneous config (transformers' ``per_layer_config``: the
full-attention layers have their own ``head_dim`` and KV heads, and the global attributes refuse to be read) is read
layer by layer, a plain checkpoint keeps those per-layer head counts, and the recovery phase trains the kept width."""

from __future__ import annotations

import pytest
import torch

from masked_dora.models import (MaskedDoRAConfig, compact_for_training, compact_model, get_state, harden,
                                load_compact, prepare_model, spec_for)
from masked_dora.models.blocks import model_blocks
from masked_dora.models.compact import LAYER_SIZES_KEY, block_sizes, plain_config_or_reason

from tiny_family_table import AVAILABLE
from tiny_models import output_tensor, randomize_adapters, tiny_inputs, tiny_model

pytestmark = pytest.mark.skipif("gemma4_text" not in AVAILABLE, reason="this transformers has no Gemma 4")


def test_a_heterogeneous_config_is_read_per_layer():
    model = tiny_model("gemma4_text", kind="lm")
    assert model.config.is_heterogeneous
    sizes = block_sizes(model, spec_for(model))
    # sliding layers: 4 heads of 8 over 2 KV heads; full-attention layers (keys as values): head_dim 16 over 1 KV
    # head; the last two (KV-sharing) blocks' MLP is double-wide
    assert [(s["heads"], s["kv_heads"], s["head_dim"]) for s in sizes] == [(4, 2, 8), (4, 1, 16)] * 2
    assert [s["intermediate"] for s in sizes] == [64, 64, 128, 128]


def test_a_plain_checkpoint_keeps_the_per_layer_heads_and_the_double_wide_blocks():
    model = tiny_model("gemma4_text", kind="lm")
    spec = spec_for(model)
    stacks = [b.spec for b in model_blocks(model, spec)]
    original = block_sizes(model, spec)
    halved = [dict(s, intermediate=s["intermediate"] // 2) for s in original]
    plain, reason = plain_config_or_reason(model.config, stacks, original, halved)
    assert reason is None and plain.intermediate_size == 32  # the double-wide blocks build 64
    assert [(c.num_key_value_heads, c.head_dim) for c in plain.per_layer_config] == [(2, 8), (1, 16)] * 2
    alike = [dict(s, intermediate=32) for s in original]  # 32 in a double-wide block is 16 of the config's
    assert plain_config_or_reason(model.config, stacks, original, alike) == (None, "the layers keep different sizes")
    uneven = [dict(s, intermediate=s["intermediate"] // 2 + (i >= 2)) for i, s in enumerate(original)]  # 32.5
    assert plain_config_or_reason(model.config, stacks, original, uneven) == (None, "the layers keep different sizes")
    fewer_heads = [dict(s, heads=2, kv_heads=1) for s in halved]
    plain, reason = plain_config_or_reason(model.config, stacks, original, fewer_heads)
    assert plain is None and "per_layer_config" in reason


@pytest.mark.parametrize("family", ["gemma4_text", "gemma4_text-moe"])
def test_recovery_at_the_kept_width_gives_the_compacted_model(family):
    torch.manual_seed(0)
    model = tiny_model(family, kind="lm")
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), rank=4, alignment={"mlp": 8}, importance="none",
                                          target_sparsity=0.5))
    randomize_adapters(model)
    harden(model)
    inputs = tiny_inputs(seed=3)
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
    compact_for_training(model)
    widths = [layer.mlp.gate_proj.out_features for layer in model.model.layers]
    assert widths == ([32, 32, 64, 64] if family == "gemma4_text" else [32] * 4)  # double-wide KV-sharing blocks
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(model(**inputs)), ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(output_tensor(compact_model(model)(**inputs)), ref, rtol=1e-4, atol=1e-5)


def test_per_layer_widths_save_and_load_compact_with_the_per_layer_heads(tmp_path):
    """allocation="global" keeps a different width in each block: the per-layer form, whose loader builds every
    block from its own layer's config (head_dim 16 over 1 KV head in the full-attention ones) before resizing."""
    torch.manual_seed(0)
    model = tiny_model("gemma4_text", kind="lm")
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), rank=4, alignment={"mlp": 8}, importance="none",
                                          target_sparsity=0.5, allocation="global"))
    randomize_adapters(model)
    with torch.no_grad():
        for i, group in enumerate(get_state(model).groups.values()):  # a different count kept in each block
            group.mask_logits.copy_(torch.linspace(-1.0, 1.0, group.num_units) + 0.3 * i)
    harden(model)
    inputs = tiny_inputs(seed=3)
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
    small = compact_model(model)
    assert len({layer.mlp.gate_proj.out_features for layer in small.model.layers}) > 2
    assert hasattr(small.config, LAYER_SIZES_KEY)
    small.save_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(load_compact(str(tmp_path))(**inputs)), ref, rtol=1e-4, atol=1e-5)

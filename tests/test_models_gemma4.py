"""Gemma 4 (text) beyond the family chain: a heterogeneous config (transformers' ``per_layer_config``: the
full-attention layers have their own ``head_dim`` and KV heads, and the global attributes refuse to be read) is read
layer by layer, a plain checkpoint keeps those per-layer head counts, and the recovery phase trains the kept width."""

from __future__ import annotations

import pytest
import torch

from masked_dora.models import (MaskedDoRAConfig, compact_for_training, compact_model, get_state, harden,
                                load_compact, prepare_model, spec_for)
from masked_dora.models.blocks import model_blocks
from masked_dora.models.compact import LAYER_SIZES_KEY, block_sizes
from masked_dora.models.plain_config import plain_config_or_reason

from tiny_family_table import AVAILABLE
from tiny_models import output_tensor, randomize_adapters, tiny_inputs, tiny_model

pytestmark = pytest.mark.skipif("gemma4_text" not in AVAILABLE, reason="this transformers has no Gemma 4")


# Gemma 4 Unified's text model: Gemma 4's dense blocks alone, the same heterogeneous layers
_DENSE_LAYOUTS = [pytest.param(f, marks=pytest.mark.skipif(f not in AVAILABLE, reason=f"this transformers has no {f}"))
                  for f in ("gemma4_text", "gemma4_unified_text")]


@pytest.mark.parametrize("family", _DENSE_LAYOUTS)
def test_a_heterogeneous_config_is_read_per_layer(family):
    model = tiny_model(family, kind="lm")
    assert model.config.is_heterogeneous
    sizes = block_sizes(model, spec_for(model))
    # sliding layers: 4 heads of 8 over 2 KV heads; full-attention layers (keys as values): head_dim 16 over 1 KV
    # head; the last two (KV-sharing) blocks' MLP is double-wide
    assert [(s["heads"], s["kv_heads"], s["head_dim"]) for s in sizes] == [(4, 2, 8), (4, 1, 16)] * 2
    assert [s["intermediate"] for s in sizes] == [64, 64, 128, 128]


@pytest.mark.parametrize("family", _DENSE_LAYOUTS)
def test_a_plain_checkpoint_keeps_the_per_layer_heads_and_the_double_wide_blocks(family):
    model = tiny_model(family, kind="lm")
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


def _gemma4_vlm():
    """A tiny Gemma 4 VLM (``Gemma4ForConditionalGeneration``, no audio tower) around the ``gemma4_text`` language
    model, and its image inputs: 36 patches of 4 x 4 pixels (a 6 x 6 grid with its positions), pooled 3 x 3 into
    4 image tokens."""
    import transformers as t

    from tiny_family_table import TABLE
    from tiny_vlms import IMAGE_ID, IMAGE_TOKENS

    text = dict(TABLE["gemma4_text"].config, vocab_size=128, vocab_size_per_layer_input=128, model_type="gemma4_text")
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, head_dim=8, pooling_kernel_size=3, patch_size=4, position_embedding_size=64)
    torch.manual_seed(0)
    model = t.Gemma4ForConditionalGeneration(t.Gemma4Config(
        text_config=text, vision_config=vision, audio_config=None, image_token_id=IMAGE_ID, boi_token_id=101,
        eoi_token_id=102, video_token_id=103)).eval()
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, IMAGE_ID, (2, 6 + IMAGE_TOKENS), generator=gen)
    ids[:, 3:3 + IMAGE_TOKENS] = IMAGE_ID
    ys, xs = torch.meshgrid(torch.arange(6), torch.arange(6), indexing="ij")
    inputs = dict(input_ids=ids, pixel_values=torch.randn(2, 36, 3 * 4 * 4, generator=gen),
                  image_position_ids=torch.stack([xs.flatten(), ys.flatten()], -1).expand(2, 36, 2).clone())
    return model, inputs


@pytest.mark.skipif(not hasattr(__import__("transformers"), "Gemma4ForConditionalGeneration"),
                    reason="this transformers has no Gemma 4 VLM")
def test_the_gemma4_vlm_prunes_its_language_model_and_reloads_plainly(tmp_path):
    from tiny_vlms import check_mlp_only_vlm_chain

    model, image = _gemma4_vlm()
    assert spec_for(model).name == "gemma4+gemma4_text"
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), rank=4, alignment={"mlp": 8}, importance="none",
                                          target_sparsity=0.5))
    assert all(n.startswith("model.language_model.") for n, m in model.named_modules()
               if type(m).__name__ == "MaskedDoRALinear")
    small = check_mlp_only_vlm_chain(model, image, {k: v[:1] for k, v in image.items()}, tmp_path)
    assert small.config.text_config.intermediate_size == 32 and get_state(model).save_form == "plain"
    assert [layer.mlp.gate_proj.out_features for layer in small.model.language_model.layers] == [32, 32, 64, 64]

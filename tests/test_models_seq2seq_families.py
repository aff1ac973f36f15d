"""The BART-like encoder-decoders whose models need decoder inputs: marian, m2m_100 (NLLB), pegasus, blenderbot and
blenderbot-small do not shift input_ids into decoder_input_ids (as bart, mbart and plbart do), so the family chain
of test_models_families.py cannot call them. The same chain, with decoder_input_ids: prepare -> a training step
-> harden -> compact (equal logits) -> save -> reload (load_compact; plain transformers in a clean process for
the MLP-only checkpoint) -> equal logits and greedy generate() tokens. And the seq2seq models of UMT5 (whose heads
take their per-block relative-position bias along) and LongT5 (MLP only)."""

from __future__ import annotations

import copy
import os

import pytest
import torch

from masked_dora.models import (MaskedDoRAConfig, compact_model, get_state, harden, load_compact, prepare_model,
                                spec_for)
from masked_dora.models.blocks import head_layout, model_blocks
from masked_dora.models.compact import LAYER_SIZES_KEY

from tiny_models import randomize_adapters, reload_plain_in_clean_process, tiny_inputs
from tiny_families_encoders import SEQ2SEQ, T5_LIKE  # after tiny_models, whose import loads the tables

# family: (config class, seq2seq LM class, config arguments besides SEQ2SEQ's)
FAMILIES = {
    "marian": ("MarianConfig", "MarianMTModel", dict(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)),
    "m2m_100": ("M2M100Config", "M2M100ForConditionalGeneration", {}),
    "pegasus": ("PegasusConfig", "PegasusForConditionalGeneration", {}),
    "blenderbot": ("BlenderbotConfig", "BlenderbotForConditionalGeneration", {}),
    "blenderbot-small": ("BlenderbotSmallConfig", "BlenderbotSmallForConditionalGeneration", {}),
}
PRUNE = dict(rank=2, alignment={"mlp": 8}, importance="none", target_sparsity=0.5)


def _model(family):
    import transformers as t

    config_class, lm_class, extra = FAMILIES[family]
    torch.manual_seed(0)
    return getattr(t, lm_class)(getattr(t, config_class)(**SEQ2SEQ, **extra)).eval()


def _inputs():
    inputs = tiny_inputs()
    return dict(inputs, decoder_input_ids=inputs["input_ids"][:, :4])


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_the_bart_spec_finds_both_stacks_and_prepare_is_identity(family):
    model = _model(family)
    spec = spec_for(model)
    assert spec.name == "bart"
    assert [b.spec.stack for b in model_blocks(model, spec)] == ["encoder"] * 2 + ["decoder"] * 2
    layout = head_layout(model.config, spec)
    assert (layout.heads, layout.head_dim, layout.kv_heads) == (4, 8, 4)
    ref = _logits(model, _inputs())
    prepare_model(model, MaskedDoRAConfig(rank=2, alignment={"mlp": 8}, importance="none"))
    torch.testing.assert_close(_logits(model, _inputs()), ref, rtol=1e-5, atol=1e-5)


def _chain(family, groups, path):
    """prepare -> a training step -> harden -> compact (equal logits) -> save; the masked model, its logits and
    whether the checkpoint is plain."""
    model = _model(family)
    prepare_model(model, MaskedDoRAConfig(target_groups=groups, **PRUNE))
    randomize_adapters(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-2)
    model(**_inputs()).logits.float().pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    opt.step()
    model.eval()
    harden(model)
    inputs = _inputs()
    ref = _logits(model, inputs)
    small = compact_model(model)
    torch.testing.assert_close(_logits(small, inputs), ref, rtol=1e-4, atol=1e-5)
    small.save_pretrained(path)
    torch.save(inputs, os.path.join(path, "inputs.pt"))
    plain = not hasattr(small.config, LAYER_SIZES_KEY)
    assert get_state(model).save_form == ("plain" if plain else "per_layer")
    return model, ref, plain


@pytest.mark.parametrize("family", FAMILIES)
def test_both_stacks_prune_heads_and_mlp_and_reload_equal(tmp_path, family):
    """Heads and MLP of both stacks: the per-layer form (the config derives head_dim from d_model / heads, and
    the decoder's cross-attention keeps decoder_attention_heads); load_compact gives equal logits and tokens."""
    model, ref, plain = _chain(family, ("mlp", "heads"), str(tmp_path))
    assert not plain
    reloaded = load_compact(str(tmp_path))
    torch.testing.assert_close(_logits(reloaded, _inputs()), ref, rtol=1e-4, atol=1e-5)
    sizes = getattr(reloaded.config, LAYER_SIZES_KEY)
    assert [s["intermediate"] for s in sizes] == [32, 32, 24, 24] and [s["heads"] for s in sizes] == [2] * 4
    layer = reloaded.model.decoder.layers[1]
    assert (layer.self_attn.q_proj.out_features, layer.encoder_attn.q_proj.out_features) == (16, 32)
    ids = _inputs()["input_ids"][:1]
    gen = dict(max_new_tokens=5, do_sample=False)
    assert torch.equal(reloaded.generate(ids, **gen), model.generate(ids, **gen))


def test_mlp_only_checkpoints_reload_with_plain_transformers(tmp_path):
    """Both stacks' MLP alone: plain checkpoints (encoder_ffn_dim 32, decoder_ffn_dim 24), reloaded in a process
    that never imports masked_dora with AutoModelForSeq2SeqLM: equal logits."""
    jobs, refs = [], []
    for family in FAMILIES:
        path = str(tmp_path / family)
        _model_, ref, plain = _chain(family, ("mlp",), path)
        assert plain
        jobs.append((path, "AutoModelForSeq2SeqLM"))
        refs.append(ref)
    for family, ref, out in zip(FAMILIES, refs, reload_plain_in_clean_process(jobs)):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5, msg=family)


@pytest.mark.parametrize("feed_forward_proj", ["gated-gelu", "relu"])
def test_umt5_heads_take_their_relative_attention_bias_columns_in_both_stacks(tmp_path, feed_forward_proj):
    """UMT5's self-attention has a relative_attention_bias (buckets, heads) in every block of both stacks: pruned
    heads take their columns along (PerHeadSpec(dim=1)). Layer 0 keeps its last heads (a bias cut to its first
    columns would not pass); equal logits after compaction and load_compact, equal generate() tokens. The decoder's
    cross-attention reads the same num_heads and keeps every head, so the checkpoint is per layer, said at
    prepare_model, although UMT5Config has a head size (d_kv)."""
    import transformers as t

    torch.manual_seed(0)
    model = t.UMT5ForConditionalGeneration(t.UMT5Config(**T5_LIKE, feed_forward_proj=feed_forward_proj)).eval()
    attentions = [b.layer[0].SelfAttention for b in list(model.encoder.block) + list(model.decoder.block)]
    biases = [a.relative_attention_bias.weight.detach().clone() for a in attentions]
    with pytest.warns(UserWarning, match=r"per-layer form \(UMT5Config's 'num_heads' also sets the heads of the "
                                         r"decoder's cross-attention \(layer.1.EncDecAttention\)"):
        prepare_model(model, MaskedDoRAConfig(**PRUNE))
    randomize_adapters(model)
    with torch.no_grad():  # the last heads score highest
        for group in get_state(model).groups_of("heads"):
            group.mask_logits.copy_(torch.linspace(-1.0, 1.0, group.num_units))
    harden(model)
    inputs = _inputs()
    ref = _logits(model, inputs)
    small = compact_model(model)
    torch.testing.assert_close(_logits(small, inputs), ref, rtol=1e-4, atol=1e-5)
    small.save_pretrained(tmp_path)
    reloaded = load_compact(str(tmp_path))
    torch.testing.assert_close(_logits(reloaded, inputs), ref, rtol=1e-4, atol=1e-5)
    for block, bias in zip(list(reloaded.encoder.block) + list(reloaded.decoder.block), biases):
        attention = block.layer[0].SelfAttention
        assert (attention.n_heads, attention.relative_attention_bias.embedding_dim) == (2, 2)
        torch.testing.assert_close(attention.relative_attention_bias.weight, bias[:, 2:], rtol=0, atol=0)
    assert reloaded.decoder.block[0].layer[1].EncDecAttention.n_heads == 4  # the cross-attention stays whole
    ids = inputs["input_ids"][:1]
    gen = dict(max_new_tokens=5, do_sample=False)
    assert torch.equal(reloaded.generate(ids, **gen), model.generate(ids, **gen))


def test_a_per_head_parameter_is_checked_along_its_declared_dim(monkeypatch):
    """UMT5's bias holds its heads in dim 1 (buckets, heads): declared along dim 0, prepare_model refuses it (32
    buckets, not 4 heads) before anything changes. A bad dim is refused when the PerHeadSpec is made."""
    from dataclasses import replace

    import transformers as t

    from masked_dora.models import PerHeadSpec, register_spec
    from masked_dora.models import specs as specs_module

    monkeypatch.setattr(specs_module, "SPECS", dict(specs_module.SPECS))
    umt5 = specs_module.SPECS["umt5-gated"]
    heads = replace(umt5.heads, per_head=(replace(umt5.heads.per_head[0], dim=0),))
    register_spec("umt5", spec=replace(umt5, name="umt5-bias-dim-0", heads=heads), replace=True)
    model = t.UMT5EncoderModel(t.UMT5Config(**T5_LIKE, feed_forward_proj="gated-gelu"))
    with pytest.raises(ValueError, match=r"relative_attention_bias holds \[32\] rows \(dim 0 of its parameters\)"):
        prepare_model(model, MaskedDoRAConfig(importance="none"))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())
    with pytest.raises(ValueError, match="PerHeadSpec.dim: expected a dim >= 0"):
        PerHeadSpec("layer.0.SelfAttention.relative_attention_bias", "heads", dim=-1)


@pytest.mark.parametrize("attention, feed_forward_proj", [("local", "relu"), ("transient-global", "gated-gelu")])
def test_longt5_prunes_the_mlp_of_both_stacks_to_a_plain_checkpoint(tmp_path, attention, feed_forward_proj):
    """LongT5's seq2seq model: the encoder's MLP (after its local or transient-global attention) and the decoder's
    (layer.2, after the cross-attention) share d_ff: pruned alike, a plain checkpoint; equal logits and tokens.
    Its heads are refused (block 0's bias serves the stack, as in T5)."""
    import transformers as t

    config = t.LongT5Config(**T5_LIKE, encoder_attention_type=attention, global_block_size=4,
                            feed_forward_proj=feed_forward_proj)
    torch.manual_seed(0)
    model = t.LongT5ForConditionalGeneration(config).eval()
    with pytest.raises(ValueError, match=r"'heads' cannot be pruned in a 'longt5' model: block 0 computes"):
        prepare_model(model, MaskedDoRAConfig(importance="none"))
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), **PRUNE))
    assert sorted(get_state(model).groups) == ["mlp_0", "mlp_1", "mlp_2", "mlp_3"]
    randomize_adapters(model)
    harden(model)
    inputs = _inputs()
    ref = _logits(model, inputs)
    small = compact_model(model)
    torch.testing.assert_close(_logits(small, inputs), ref, rtol=1e-4, atol=1e-5)
    assert small.config.d_ff == 32 and not hasattr(small.config, LAYER_SIZES_KEY)
    small.save_pretrained(tmp_path)
    reloaded = load_compact(str(tmp_path))
    torch.testing.assert_close(_logits(reloaded, inputs), ref, rtol=1e-4, atol=1e-5)
    ids = inputs["input_ids"][:1]
    gen = dict(max_new_tokens=5, do_sample=False)
    assert torch.equal(reloaded.generate(ids, **gen), model.generate(ids, **gen))


def test_bigbird_pegasus_refuses_heads_with_block_sparse_attention():
    """BigBird-Pegasus with attention_type='block_sparse' (its default) rebuilds the encoder's attention from the
    config's head count when an input is too short for its blocks: heads refused before anything changes, the MLP
    of both stacks still prunes (its family chain, with original_full, prunes the heads too)."""
    import transformers as t

    from tiny_families_seq2seq import TINY

    config = t.BigBirdPegasusConfig(**dict(TINY["bigbird_pegasus"].config, attention_type="block_sparse"))
    model = t.BigBirdPegasusForConditionalGeneration(config).eval()
    with pytest.raises(ValueError, match=r"'heads' cannot be pruned in a 'bigbird_pegasus' model: with "
                                         r"attention_type='block_sparse'"):
        prepare_model(model, MaskedDoRAConfig(importance="none"))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), importance="none"))
    assert sorted(get_state(model).groups) == ["mlp_0", "mlp_1", "mlp_2", "mlp_3"]


@pytest.mark.parametrize("family", ["switch_transformers", "nllb-moe"])
def test_moe_encoder_decoders_prune_their_dense_blocks_and_keep_the_experts_whole(family):
    """Switch Transformers and NLLB-MoE: block 1 of each stack is a mixture of expert modules (kept whole, with
    their router), block 0 a dense MLP (a group); Switch's heads are refused (T5's relative-position bias of block
    0), NLLB-MoE's prune in every block."""
    import transformers as t

    from tiny_families_seq2seq import TINY

    config_class, _, lm_class = TINY[family].classes
    model = getattr(t, lm_class)(getattr(t, config_class)(**TINY[family].config)).eval()
    if family == "switch_transformers":
        with pytest.raises(ValueError, match=r"'heads' cannot be pruned in a 'switch_transformers' model: block 0"):
            prepare_model(model, MaskedDoRAConfig(importance="none"))
    groups = ("mlp",) if family == "switch_transformers" else ("mlp", "heads")
    prepare_model(model, MaskedDoRAConfig(target_groups=groups, importance="none"))
    kinds = {}
    for name, group in get_state(model).groups.items():
        kinds.setdefault(group.kind, []).append(name)
    assert sorted(kinds["mlp"]) == ["mlp_0", "mlp_2"]  # the dense blocks of each stack
    heads = [] if family == "switch_transformers" else [f"heads_{i}" for i in range(4)]  # every block's
    assert sorted(kinds.get("heads", [])) == heads
    experts = [m for n, m in model.named_modules() if n.endswith(".experts")]
    assert len(experts) == 2 and not any(type(m).__name__ == "MaskedDoRALinear" for e in experts for m in e.modules())


def test_two_model_encoder_decoders_take_their_halves_refusals_and_refuse_halves_with_stacks():
    """A VisionEncoderDecoderModel is pruned as its two halves' specs say: a TrOCR decoder's heads are refused
    with TrOCR's reason (its MLP and the ViT encoder's still prune); an encoder with stacks of its own (Swin's
    stages) is refused by name before anything changes."""
    import transformers as t

    from tiny_families_seq2seq import TINY

    config = dict(copy.deepcopy(TINY["vision-encoder-decoder"].config), decoder=dict(
        model_type="trocr", vocab_size=97, d_model=32, decoder_layers=2, decoder_attention_heads=4,
        decoder_ffn_dim=48, max_position_embeddings=64, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        pad_token_id=0, bos_token_id=1, eos_token_id=2))
    model = t.VisionEncoderDecoderModel(t.VisionEncoderDecoderConfig(**copy.deepcopy(config))).eval()
    assert spec_for(model).name == "vision-encoder-decoder+vit+trocr"
    with pytest.raises(ValueError, match=r"'heads' cannot be pruned in a 'vision-encoder-decoder' model: its "
                                         r"attention reshapes its output"):
        prepare_model(model, MaskedDoRAConfig(importance="none"))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), importance="none"))
    assert sorted(get_state(model).groups) == ["mlp_0", "mlp_1", "mlp_2", "mlp_3"]
    swin = t.VisionEncoderDecoderConfig(**dict(copy.deepcopy(config), encoder=dict(
        model_type="swin", image_size=8, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=2)))
    with pytest.raises(ValueError, match=r"'vision-encoder-decoder' model's encoder \(model_type 'swin'\) has stacks "
                                         r"of its own"):
        spec_for(swin)

"""The BART-like encoder-decoders whose models need decoder inputs: marian, m2m_100, pegasus and blenderbot do not
shift input_ids into decoder_input_ids (as bart, mbart and plbart do), so the family chain of
test_models_families.py cannot call them. The same chain, with decoder_input_ids: prepare -> a training step ->
harden -> compact (equal logits) -> save -> reload (load_compact; plain transformers in a clean process for the
MLP-only checkpoint) -> equal logits and greedy generate() tokens."""

from __future__ import annotations

import os

import pytest
import torch

from masked_dora.models import (MaskedDoRAConfig, compact_model, get_state, harden, load_compact, prepare_model,
                                spec_for)
from masked_dora.models.blocks import head_layout, model_blocks
from masked_dora.models.compact import LAYER_SIZES_KEY

from tiny_models import randomize_adapters, reload_plain_in_clean_process, tiny_inputs
from tiny_families_encoders import SEQ2SEQ  # noqa: I001 (after tiny_models, whose import loads the family tables)

# family: (config class, seq2seq LM class, config arguments besides SEQ2SEQ's)
FAMILIES = {
    "marian": ("MarianConfig", "MarianMTModel", dict(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)),
    "m2m_100": ("M2M100Config", "M2M100ForConditionalGeneration", {}),
    "pegasus": ("PegasusConfig", "PegasusForConditionalGeneration", {}),
    "blenderbot": ("BlenderbotConfig", "BlenderbotForConditionalGeneration", {}),
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

"""The encoder-decoder families (T5, BART): each stack prunes its own groups, the stacks option, and states and
checkpoints saved before the decoder stacks were pruned."""

from __future__ import annotations

import pytest
import torch

from masked_dora.models import (MaskedDoRAConfig, compact_model, get_state, harden, load_compact, prepare_model,
                                register_spec)
from masked_dora.models import specs as specs_module
from masked_dora.models.compact import LAYER_SIZES_KEY

from tiny_models import randomize_adapters, tiny_config, tiny_inputs, tiny_model

def _seq2seq_chain(model, config, tmp_path, inputs):
    """prepare (``config``) -> harden -> compact (equal logits) -> save -> load_compact (equal logits, equal
    generate() tokens with the KV cache); returns the reloaded model and the state's save form."""
    ids, dec = inputs["input_ids"], inputs["input_ids"][:, :4]
    prepare_model(model, config)
    randomize_adapters(model)
    harden(model)
    with torch.no_grad():
        ref = model(input_ids=ids, decoder_input_ids=dec).logits
        small = compact_model(model)
        torch.testing.assert_close(small(input_ids=ids, decoder_input_ids=dec).logits, ref, rtol=1e-4, atol=1e-5)
    small.save_pretrained(tmp_path)
    reloaded = load_compact(str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids, decoder_input_ids=dec).logits, ref, rtol=1e-4, atol=1e-5)
    gen = dict(max_new_tokens=5, do_sample=False)
    assert torch.equal(reloaded.generate(ids[:1], **gen), model.generate(ids[:1], **gen))
    return reloaded, get_state(model).save_form


@pytest.mark.parametrize("family, wi", [("t5", "wi"), ("t5-gated", "wi_0")])
@pytest.mark.parametrize("stacks, widths", [(None, (32, 32)), (("encoder",), (32, 64)), (("decoder",), (64, 32))])
def test_t5_stacks_prune_their_own_mlp(tmp_path, family, wi, stacks, widths):
    """T5's encoder and decoder are two stacks, each with its own MLP groups (the decoder's MLP is layer.2,
    after the cross-attention). They share d_ff: pruned alike (the default, every stack) they save as a plain
    T5ForConditionalGeneration checkpoint; one stack alone saves in the per-layer form, said at prepare_model.
    T5 v1.0 (wi) and v1.1 / Flan-T5 (gated wi_0, wi_1: the spec follows the config's is_gated_act)."""
    import transformers as t

    torch.manual_seed(0)
    model = t.T5ForConditionalGeneration(tiny_config(family)).eval()
    config = MaskedDoRAConfig(target_groups=("mlp",), rank=2, alignment={"mlp": 8}, importance="none",
                              target_sparsity=0.5, stacks=stacks)
    if stacks is None:
        reloaded, form = _seq2seq_chain(model, config, tmp_path, tiny_inputs())
        assert form == "plain" and reloaded.config.d_ff == 32 and not hasattr(reloaded.config, LAYER_SIZES_KEY)
        assert sorted(get_state(model).groups) == ["mlp_0", "mlp_1", "mlp_2", "mlp_3"]  # encoder, then decoder
    else:
        with pytest.warns(UserWarning, match="'d_ff' sizes several stacks"):
            reloaded, form = _seq2seq_chain(model, config, tmp_path, tiny_inputs())
        assert form == "per_layer"
    assert getattr(reloaded.encoder.block[0].layer[1].DenseReluDense, wi).out_features == widths[0]
    assert getattr(reloaded.decoder.block[1].layer[2].DenseReluDense, wi).out_features == widths[1]


def test_bart_decoder_stack_prunes_its_self_attention_heads_and_mlp(tmp_path):
    """BART's decoder is a stack of its own (decoder_ffn_dim, decoder_attention_heads): its self-attention heads
    and MLP prune, its cross-attention (encoder_attn, whose head count the same key sizes) stays whole, so pruned
    heads save in the per-layer form; outputs and generations equal."""
    model = tiny_model("bart", kind="lm")
    config = MaskedDoRAConfig(rank=2, alignment={"mlp": 8}, importance="none", target_sparsity=0.5)
    reloaded, form = _seq2seq_chain(model, config, tmp_path, tiny_inputs())
    assert form == "per_layer"
    sizes = getattr(reloaded.config, LAYER_SIZES_KEY)
    assert [s["intermediate"] for s in sizes] == [32, 32, 24, 24]  # encoder_ffn_dim 64, decoder_ffn_dim 48
    assert [s["heads"] for s in sizes] == [2, 2, 2, 2]
    layer = reloaded.model.decoder.layers[1]
    assert (layer.self_attn.num_heads, layer.self_attn.q_proj.out_features) == (2, 16)
    assert (layer.encoder_attn.num_heads, layer.encoder_attn.q_proj.out_features) == (4, 32)  # cross-attention
    mlp_only = tiny_model("bart", kind="lm")  # both stacks' MLP alone: plain, each stack its own key
    reloaded, form = _seq2seq_chain(mlp_only, MaskedDoRAConfig(target_groups=("mlp",), rank=2, alignment={"mlp": 8},
                                                               importance="none", target_sparsity=0.5),
                                    tmp_path / "mlp", tiny_inputs())
    assert form == "plain"
    assert (reloaded.config.encoder_ffn_dim, reloaded.config.decoder_ffn_dim) == (32, 24)


def test_the_encoder_only_spec_names_still_register_with_a_deprecation_warning(monkeypatch):
    monkeypatch.setattr(specs_module, "SPECS", dict(specs_module.SPECS))
    with pytest.warns(DeprecationWarning, match="'bart-encoder' is now 'bart'"):
        spec = register_spec("my-bart", like="bart-encoder")
    assert spec.layers == ("encoder.layers",) and spec.stacks[0].stack == "decoder"


def test_a_stack_name_the_model_lacks_is_refused_before_anything_changes():
    model = tiny_model("bart", kind="lm")
    with pytest.raises(ValueError, match=r"config.stacks: this BartForConditionalGeneration has the stacks "
                                         r"\['encoder', 'decoder'\], got \['decoderr'\]"):
        prepare_model(model, MaskedDoRAConfig(importance="none", stacks=("decoderr",)))
    encoder_only = tiny_model("t5")  # T5EncoderModel: T5's spec has a decoder stack, this model does not
    with pytest.raises(ValueError, match=r"this T5EncoderModel has the stacks \['encoder'\], got \['decoder'\]"):
        prepare_model(encoder_only, MaskedDoRAConfig(target_groups=("mlp",), importance="none", stacks=("decoder",)))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in list(model.modules()) + list(encoder_only.modules()))
    with pytest.raises(ValueError, match="stacks: expected None or a non-empty tuple"):
        MaskedDoRAConfig(stacks=())


def test_encoder_only_states_and_checkpoints_saved_before_decoder_stacks_still_load(tmp_path):
    """Before decoders were pruned, a BART training state held the encoder's groups only (its config had no
    ``stacks``) and a per-layer checkpoint one size entry per encoder block: both load as they were."""
    import json

    from masked_dora.models import load_training_state, save_training_state

    model = tiny_model("bart", kind="lm")
    prepare_model(model, MaskedDoRAConfig(rank=2, alignment={"mlp": 8}, importance="none", target_sparsity=0.5,
                                          stacks=("encoder",)))
    randomize_adapters(model)
    save_training_state(model, str(tmp_path / "state"))
    meta_path = tmp_path / "state" / "masked_dora_config.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["stacks"]  # as the earlier version wrote it
    meta_path.write_text(json.dumps(meta))
    fresh = load_training_state(tiny_model("bart", kind="lm"), str(tmp_path / "state"))
    assert sorted(get_state(fresh).groups) == ["heads_0", "heads_1", "mlp_0", "mlp_1"]
    inputs = tiny_inputs()
    with torch.no_grad():
        assert torch.equal(fresh(**inputs).logits, model(**inputs).logits)
    harden(model)
    small = compact_model(model)
    sizes = getattr(small.config, LAYER_SIZES_KEY)
    assert len(sizes) == 4 and sizes[2:] == [dict(intermediate=48, heads=4, kv_heads=4, head_dim=8)] * 2
    setattr(small.config, LAYER_SIZES_KEY, sizes[:2])  # the earlier form: the encoder's blocks only
    small.save_pretrained(tmp_path / "old")
    with torch.no_grad():
        torch.testing.assert_close(load_compact(str(tmp_path / "old"))(**inputs).logits, small(**inputs).logits)

"""Image and speech encoders beyond the family chain (tests/test_models_families.py runs each of
tests/tiny_families_vision_speech.py through prepare -> train -> compact -> save -> reload): their MLP-only
checkpoints reload with plain transformers, SigLIP's pooling head keeps its MLP, Whisper's decoder keeps its
cross-attention whole, UniSpeech(-SAT)'s task heads keep their sizes, DINOv2's spec follows the module names of the
installed transformers, Wav2Vec2-Conformer prunes both feed-forward modules of its blocks and its heads with their
position terms, and WavLM's heads are refused."""

from __future__ import annotations

import os

import pytest
import torch

from masked_dora.models import (MaskedDoRAConfig, compact_for_training, compact_model, get_state, harden, load_compact,
                                prepare_model, spec_for)
from masked_dora.models.compact import LAYER_SIZES_KEY

from tiny_family_table import AVAILABLE
from tiny_models import (harden_and_compact, output_tensor, randomize_adapters, reload_plain_in_clean_process,
                         tiny_config, tiny_inputs, tiny_model)

PRUNE = dict(rank=2, alignment={"mlp": 8}, importance="none", target_sparsity=0.5)
# the families whose config has a key for the MLP width alone (SigLIP's vision tower has none: its pooling head)
MLP_PLAIN = [f for f in ("vit", "deit", "clip-vision", "clip-text", "siglip-text", "siglip2-text", "wav2vec2",
                         "wav2vec2-stable", "hubert", "whisper", "data2vec-audio", "sew", "sew-d", "wavlm",
                         "wav2vec2-conformer", "unispeech", "unispeech-sat", "vit_msn", "ijepa", "beit",
                         "data2vec-vision", "metaclip_2-vision", "metaclip_2-text", "wav2vec2-bert", "parakeet_ctc",
                         "lasr_ctc", "omniasr_ctc", "granite_speech5_ctc") if f in AVAILABLE]


def _compacted(family, groups, path=None):
    """prepare (``groups``) -> random adapters -> harden -> compact: the masked model, its output on the family's
    inputs, and the compacted model (saved to ``path`` with its inputs, if given)."""
    model = tiny_model(family, kind="lm")
    prepare_model(model, MaskedDoRAConfig(target_groups=groups, **PRUNE))
    randomize_adapters(model)
    ref, small, out = harden_and_compact(model, family)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    inputs = tiny_inputs(family=family)
    if path:
        small.save_pretrained(path)
        torch.save(inputs, os.path.join(path, "inputs.pt"))
    return model, ref, small


def test_mlp_only_checkpoints_reload_with_plain_transformers(tmp_path):
    """The MLP alone: a plain checkpoint (intermediate_size / encoder_ffn_dim 32, Whisper's decoder_ffn_dim 24)
    that a process without masked_dora loads with the family's Auto class: equal outputs."""
    jobs, refs = [], []
    for family in MLP_PLAIN:
        path = str(tmp_path / family)
        _model, ref, small = _compacted(family, ("mlp",), path)
        assert not hasattr(small.config, LAYER_SIZES_KEY), family
        jobs.append((path, AVAILABLE[family].auto))
        refs.append(ref)
    for family, ref, out in zip(MLP_PLAIN, refs, reload_plain_in_clean_process(jobs)):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5, msg=family)


@pytest.mark.skipif("siglip-vision" not in AVAILABLE, reason="this transformers has no SigLIP")
def test_siglip_pooling_head_keeps_its_mlp(tmp_path):
    """SiglipVisionModel's attention-pooling head builds its MLP intermediate_size wide: a pruned encoder MLP saves
    in the per-layer form (said at prepare_model), and the reloaded head keeps its 64 channels."""
    with pytest.warns(UserWarning, match="SiglipVisionConfig has no key for the MLP width alone"):
        model, ref, small = _compacted("siglip-vision", ("mlp",), str(tmp_path))
    assert get_state(model).save_form == "per_layer" and small.config.intermediate_size == 64
    reloaded = load_compact(str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(reloaded(**tiny_inputs(family="siglip-vision"))), ref, rtol=1e-4,
                                   atol=1e-5)
    vision = getattr(reloaded, "vision_model", reloaded)  # transformers 5.2x: the tower is the model itself
    assert vision.encoder.layers[0].mlp.fc1.out_features == 32 and vision.head.mlp.fc1.out_features == 64


@pytest.mark.skipif("whisper" not in AVAILABLE, reason="this transformers has no Whisper")
def test_whisper_prunes_both_stacks_and_keeps_the_cross_attention(tmp_path):
    """Whisper is BART's two stacks behind its mel convolutions: heads and MLP of the encoder and of the decoder's
    self-attention prune; the decoder's encoder_attn keeps its 4 heads. Equal logits and generate() tokens after
    load_compact."""
    model, ref, small = _compacted("whisper", ("mlp", "heads"), str(tmp_path))
    assert sorted(get_state(model).groups) == [f"{k}_{i}" for k in ("heads", "mlp") for i in range(4)]
    sizes = getattr(small.config, LAYER_SIZES_KEY)
    assert [s["intermediate"] for s in sizes] == [32, 32, 24, 24] and [s["heads"] for s in sizes] == [2] * 4
    reloaded = load_compact(str(tmp_path))
    layer = reloaded.model.decoder.layers[0]
    assert (layer.self_attn.q_proj.out_features, layer.encoder_attn.q_proj.out_features) == (16, 32)
    inputs = tiny_inputs(family="whisper")
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(reloaded(**inputs)), ref, rtol=1e-4, atol=1e-5)
    gen = dict(input_features=inputs["input_features"][:1], max_new_tokens=5, do_sample=False)
    assert torch.equal(reloaded.generate(**gen), model.generate(**gen))


@pytest.mark.parametrize("family, head", [(f, head) for f, head in (
    ("unispeech", "UniSpeechForSequenceClassification"), ("unispeech-sat", "UniSpeechSatForSequenceClassification"),
    ("unispeech-sat", "UniSpeechSatForAudioFrameClassification"), ("unispeech-sat", "UniSpeechSatForXVector"))
    if f in AVAILABLE])
def test_unispeech_task_heads_prune_their_encoder(family, head, tmp_path):
    """UniSpeech(-SAT)'s task heads besides CTC (utterance classification over the weighted sum of every block's
    output, frame classification, x-vectors) read the encoder's hidden size, which block pruning keeps: heads and MLP
    prune, equal outputs after compaction and after load_compact."""
    import transformers

    config = tiny_config(family)
    config.use_weighted_layer_sum = True
    config.num_labels = 3
    torch.manual_seed(0)
    model = getattr(transformers, head)(config).eval()
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp", "heads"), **PRUNE))
    randomize_adapters(model)
    ref, small, out = harden_and_compact(model, family)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    inputs = tiny_inputs(family=family)
    encoder = getattr(small, small.base_model_prefix).encoder
    assert [layer.feed_forward.intermediate_dense.out_features for layer in encoder.layers] == [32, 32]
    assert [layer.attention.q_proj.out_features for layer in encoder.layers] == [16, 16]
    small.save_pretrained(str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(load_compact(str(tmp_path))(**inputs)), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", [f for f in ("dinov2", "dinov2-swiglu", "dinov2-registers") if f in AVAILABLE])
def test_dinov2_spec_follows_the_module_names_of_this_transformers(family):
    """DINOv2's config is the same across transformers releases, its modules are not (attention.q_proj and
    gate/up/down_proj in 5.2x; attention.attention.query and a fused weights_in in 5.17): the spec is the one whose
    modules (ModelSpec.when_modules) the model has. A block with neither is refused, naming the modules."""
    model = tiny_model(family)
    attention = model.encoder.layer[0].attention
    layout = "q_proj" if hasattr(attention, "q_proj") else "query"
    spec = spec_for(model)
    assert spec.name == f"dinov2-{layout}" + ("-swiglu" if family == "dinov2-swiglu" else "")
    assert spec_for(model.config).name.startswith("dinov2-")  # a config alone: the first variant of its conditions
    if layout == "q_proj":
        del attention.q_proj
    else:
        del attention.attention.query
    with pytest.raises(ValueError, match=r"matches none of its specs' conditions: dinov2-q_proj.* and the modules "
                                         r"\['attention.q_proj'\] in its blocks.*\['attention.attention.query'\]"):
        prepare_model(model, MaskedDoRAConfig(importance="none"))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())


@pytest.mark.skipif("wav2vec2-conformer" not in AVAILABLE, reason="this transformers has no Wav2Vec2-Conformer")
def test_conformer_prunes_both_feed_forward_modules(tmp_path):
    """A conformer block's ffn1 and ffn2 (both intermediate_size wide) are two stacks over the same blocks: both
    prune (groups mlp_0..mlp_3), to the one width the plain config says; stacks=("ffn2",) prunes ffn2 alone."""
    model, _ref, small = _compacted("wav2vec2-conformer", ("mlp",))
    assert sorted(get_state(model).groups) == [f"mlp_{i}" for i in range(4)] and small.config.intermediate_size == 32
    for layer in small.wav2vec2_conformer.encoder.layers:
        assert (layer.ffn1.intermediate_dense.out_features, layer.ffn2.output_dense.in_features) == (32, 32)
    model = tiny_model("wav2vec2-conformer", kind="lm")
    # ffn1 keeps 64 and ffn2 32 under their one key: the per-layer form
    with pytest.warns(UserWarning, match="'intermediate_size' sizes several stacks \\(the ffn1 and the ffn2\\)"):
        prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), stacks=("ffn2",), **PRUNE))
    harden(model)
    small = compact_model(model)
    layer = small.wav2vec2_conformer.encoder.layers[1]
    assert (layer.ffn1.intermediate_dense.out_features, layer.ffn2.intermediate_dense.out_features) == (64, 32)


@pytest.mark.parametrize("family", [f for f in ("wav2vec2-conformer", "wav2vec2-conformer-rotary") if f in AVAILABLE])
def test_conformer_heads_prune_with_their_position_terms(family, tmp_path):
    """The conformer's heads are the ffn1 stack's groups (heads_0, heads_1; the ffn2 stack shares the blocks'
    attention, ModelSpec.attention_of). Relative position embeddings: linear_pos's head-sized row blocks and
    pos_bias_u/v's rows (distinct per head here, and the kept heads not the first ones) are cut to the kept heads;
    rotary: the attention keeps num_heads (its rotation views the input by the config's heads). Equal outputs after
    compaction, after load_compact and after compact_for_training; heads asked of the ffn2 stack alone are
    refused."""
    model = tiny_model(family, kind="lm")
    relative = model.config.position_embeddings_type == "relative"
    with torch.no_grad():
        for layer in model.wav2vec2_conformer.encoder.layers:
            if relative:
                layer.self_attn.pos_bias_u.uniform_(-1.0, 1.0)
                layer.self_attn.pos_bias_v.uniform_(-1.0, 1.0)
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp", "heads"), **PRUNE))
    assert sorted(get_state(model).groups) == ["heads_0", "heads_1"] + [f"mlp_{i}" for i in range(4)]
    randomize_adapters(model)
    with torch.no_grad():
        for key in ("heads_0", "heads_1"):  # keep heads 1 and 3
            get_state(model).groups[key].mask_logits.copy_(torch.tensor([-5.0, 5.0, -5.0, 5.0]))
    ref, small, out = harden_and_compact(model, family)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    inputs = tiny_inputs(family=family)
    for layer in small.wav2vec2_conformer.encoder.layers:
        attention = layer.self_attn
        assert (attention.linear_q.out_features, attention.linear_out.in_features, attention.num_heads) == (16, 16, 4)
        assert (layer.ffn1.intermediate_dense.out_features, layer.ffn2.intermediate_dense.out_features) == (32, 32)
        if relative:
            assert (attention.linear_pos.out_features, *attention.linear_pos.weight.shape) == (16, 16, 32)
            assert tuple(attention.pos_bias_u.shape) == tuple(attention.pos_bias_v.shape) == (2, 8)
    # the per-layer sizes: ffn1's blocks, then ffn2's (the same blocks: the same heads)
    assert [s["heads"] for s in getattr(small.config, LAYER_SIZES_KEY)] == [2] * 4
    small.save_pretrained(str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(load_compact(str(tmp_path))(**inputs)), ref, rtol=1e-4, atol=1e-5)
    model = tiny_model(family, kind="lm")  # compact_for_training (in place) keeps the same heads: equal outputs
    with torch.no_grad():
        for layer in model.wav2vec2_conformer.encoder.layers:
            if relative:
                layer.self_attn.pos_bias_u.uniform_(-1.0, 1.0)
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp", "heads"), **PRUNE))
    randomize_adapters(model)
    with torch.no_grad():
        for key in ("heads_0", "heads_1"):
            get_state(model).groups[key].mask_logits.copy_(torch.tensor([5.0, -5.0, 5.0, -5.0]))
    harden(model)
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        compact_for_training(model)
        torch.testing.assert_close(output_tensor(model(**inputs)), ref, rtol=1e-4, atol=1e-5)
    model = tiny_model(family, kind="lm")
    with pytest.raises(ValueError, match=r"'heads' cannot be pruned .*the attention of the stacks \['ffn2'\] is "
                                         r"pruned by the head groups of the stacks \['ffn1'\]"):
        prepare_model(model, MaskedDoRAConfig(target_groups=("mlp", "heads"), stacks=("ffn2",), **PRUNE))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())


@pytest.mark.skipif("wavlm" not in AVAILABLE, reason="this transformers has no WavLM")
def test_wavlm_attention_reads_its_projections_weights_without_calling_them():
    """The premise of WavLM's head refusal: its attention passes q/k/v/out_proj's weights to
    F.multi_head_attention_forward, never calling the modules, so a masked projection (gates, DoRA adapter) in their
    place would not run. A hook zeroing their outputs is never called and changes nothing; if transformers ever calls
    them, this fails and the refusal is to be revisited."""
    model = tiny_model("wavlm")
    inputs = tiny_inputs(family="wavlm")
    calls = []

    def zero(module, args, out):
        calls.append(module)
        return out * 0

    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        attention = model.encoder.layers[0].attention
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            getattr(attention, name).register_forward_hook(zero)
        torch.testing.assert_close(output_tensor(model(**inputs)), ref, rtol=0, atol=0)
    assert calls == []


@pytest.mark.parametrize("family, reason", [("wavlm", "F.multi_head_attention_forward instead of calling them.*"
                                                      "gated relative-position bias splits each block's input")])
def test_speech_heads_that_cannot_prune_exactly_are_refused(family, reason):
    """WavLM's attention reads its projections' weights (above) and gates each head's relative-position bias from
    its slice of the block's input (num_attention_heads slices of hidden_size): heads are refused before anything
    changes, naming the reason."""
    if family not in AVAILABLE:
        pytest.skip(f"this transformers has no {family}")
    model = tiny_model(family, kind="lm")
    with pytest.raises(ValueError, match=f"'heads' cannot be pruned in a .*{reason}"):
        prepare_model(model, MaskedDoRAConfig(target_groups=("mlp", "heads"), **PRUNE))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())


@pytest.mark.parametrize("family", ["deberta-v2", "sew-d"])
def test_disentangled_attention_with_its_own_position_projections_refuses_heads(family):
    """DeBERTa-v2's (and SEW-D's) attention with relative_attention and share_att_key=False projects the relative
    embeddings through pos_key_proj / pos_query_proj, one row block per head, which no head spec cuts: the
    compacted model failed ("Expected size ... [4, 8] but got: [4, 16]"). Heads are refused with the reason; the MLP
    still prunes, and with the projections shared (share_att_key=True, the tiny configs') heads prune too."""
    if family not in AVAILABLE and family != "deberta-v2":
        pytest.skip(f"this transformers has no {family}")
    shared = tiny_model(family)
    prepare_model(shared, MaskedDoRAConfig(target_groups=("mlp", "heads"), **PRUNE))
    config = tiny_model(family).config
    config.share_att_key = False
    model = type(shared)(config)
    assert hasattr(model.encoder.layer[0].attention.self if family == "deberta-v2" else
                   model.encoder.encoder.layer[0].attention.self, "pos_key_proj")
    with pytest.raises(ValueError, match="'heads' cannot be pruned in a .*share_att_key=False.*pos_key_proj"):
        prepare_model(model, MaskedDoRAConfig(target_groups=("mlp", "heads"), **PRUNE))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), **PRUNE))
    randomize_adapters(model)
    ref, _, out = harden_and_compact(model, family)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif("wav2vec2-bert" not in AVAILABLE, reason="this transformers has no Wav2Vec2-BERT")
def test_wav2vec2_bert_with_an_adapter_keeps_the_adapter_and_saves_its_mlp_per_layer(tmp_path):
    """Wav2Vec2-BERT's adapter (add_adapter: its own attention and feed-forward, intermediate_size wide, and the one
    before it) is kept whole, so the config's intermediate_size must keep sizing it: a pruned encoder MLP saves in
    the per-layer form (the spec without a size key) and reloads equal; without an adapter it saves plain."""
    import transformers

    family = "wav2vec2-bert"
    config = tiny_config(family)
    assert spec_for(config).mlp.size_key == "intermediate_size"
    config = transformers.Wav2Vec2BertConfig(**dict(AVAILABLE[family].config, add_adapter=True, num_adapter_layers=1,
                                                    use_intermediate_ffn_before_adapter=True))
    assert spec_for(config).mlp.size_key == ""
    torch.manual_seed(0)
    model = transformers.Wav2Vec2BertForCTC(config).eval()
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), **PRUNE))
    randomize_adapters(model)
    ref, small, out = harden_and_compact(model, family)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    adapter = small.wav2vec2_bert.adapter.layers[0].ffn
    assert (adapter.intermediate_dense.out_features, small.wav2vec2_bert.intermediate_ffn.output_dense.in_features,
            small.wav2vec2_bert.encoder.layers[0].ffn1.intermediate_dense.out_features) == (64, 64, 32)
    assert getattr(small.config, LAYER_SIZES_KEY)
    small.save_pretrained(str(tmp_path))
    with torch.no_grad():
        reloaded = load_compact(str(tmp_path))(**tiny_inputs(family=family))
    torch.testing.assert_close(output_tensor(reloaded), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif("parakeet_ctc" not in AVAILABLE, reason="this transformers has no Parakeet")
def test_parakeet_heads_prune_with_their_relative_terms_and_own_head_count(tmp_path):
    """Parakeet's attention views bias_u / bias_v and relative_k_proj's output by self.config.num_attention_heads,
    the encoder config every attention shares: pruned to heads 1 and 3 (not the first ones), each compacted
    attention holds those heads' rows and a config copy of its own with 2 heads, the model's config keeps 4, and the
    outputs equal the masked model's after compaction and after load_compact."""
    family = "parakeet_ctc"
    model = tiny_model(family, kind="lm")
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp", "heads"), **PRUNE))
    randomize_adapters(model)
    with torch.no_grad():
        for key in ("heads_0", "heads_1"):
            get_state(model).groups[key].mask_logits.copy_(torch.tensor([-5.0, 5.0, -5.0, 5.0]))
    bias_u = [layer.self_attn.bias_u.detach().clone() for layer in model.encoder.layers]
    ref, small, out = harden_and_compact(model, family)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for layer, full in zip(small.encoder.layers, bias_u):
        attention = layer.self_attn
        assert (attention.relative_k_proj.out_features, attention.config.num_attention_heads,
                layer.feed_forward2.linear1.out_features) == (16, 2, 32)
        assert torch.equal(attention.bias_u, full[[1, 3]])
    assert small.config.encoder_config.num_attention_heads == 4
    small.save_pretrained(str(tmp_path))
    with torch.no_grad():
        reloaded = load_compact(str(tmp_path))(**tiny_inputs(family=family))
    torch.testing.assert_close(output_tensor(reloaded), ref, rtol=1e-4, atol=1e-5)


def test_attention_of_must_name_a_stack_over_the_same_blocks():
    """ModelSpec(attention_of=...) says another stack's head groups prune these blocks' attention: a name that is
    no stack of the spec over the same block list would leave the attention unpruned while heads are targeted."""
    from dataclasses import replace

    conformer = spec_for(tiny_config("wav2vec2-conformer")) if "wav2vec2-conformer" in AVAILABLE else None
    if conformer is None:
        pytest.skip("this transformers has no Wav2Vec2-Conformer")
    ffn2 = conformer.stacks[0]
    with pytest.raises(ValueError, match="the stack 'ffn2' has attention_of='ffn3', which names no stack"):
        replace(conformer, stacks=(replace(ffn2, attention_of="ffn3"),))
    with pytest.raises(ValueError, match="the stack 'ffn2' has attention_of='ffn1', which names no stack .* same"):
        replace(conformer, stacks=(replace(ffn2, layers=("encoder.other",)),))

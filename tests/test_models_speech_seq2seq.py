"""Speech-to-text encoder-decoders beside Whisper (whose chain is in the tiny family table): Speech2Text
(``speech_to_text``), BART's encoder and decoder stacks behind a convolutional front end over filter-bank features
(``input_features``: batch x frames x features), end to end on a tiny config.

Its MLP channels and the self-attention heads of both stacks prune (the decoder's cross-attention and the front
end stay as they are) → a training step → harden → compact → equal logits → save → reload → equal logits and equal
``generate()`` tokens from the audio. Its attention derives head_dim from d_model // heads: pruned heads save in
the per-layer form (``load_compact``); a pruned MLP alone saves plainly and reloads with
``AutoModelForSpeechSeq2Seq`` in a process without masked_dora.

Moonshine (``moonshine``, raw audio ``input_values``) goes the same way: its decoder's gated MLP (fc1 [value | gate])
and its attentions, which read their head count from the model config at forward (a compacted one gets its own).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

from masked_dora.models import (MaskedDoRAConfig, compact_for_training, compact_model, get_state, harden, load_compact,
                                prepare_model, spec_for)

from helpers import rel_err
from tiny_models import randomize_adapters, reload_plain_in_clean_process

CONFIG = dict(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5)
TOL = 1e-5
SPEECH2TEXT = dict(vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=64,
                   decoder_ffn_dim=48, encoder_attention_heads=4, decoder_attention_heads=4, input_feat_per_channel=8,
                   input_channels=1, conv_channels=16, max_source_positions=64, max_target_positions=32, dropout=0.0,
                   attention_dropout=0.0, activation_dropout=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                   decoder_start_token_id=1)


def _transformers(model_class: str = "Speech2TextForConditionalGeneration"):
    import transformers

    if not hasattr(transformers, model_class):
        pytest.skip(f"transformers {transformers.__version__} has no {model_class}")
    return transformers


def _tiny_speech2text():
    transformers = _transformers()
    torch.manual_seed(0)
    return transformers.Speech2TextForConditionalGeneration(transformers.Speech2TextConfig(**SPEECH2TEXT)).eval()


def _inputs(n: int = 2, seed: int = 1) -> dict:
    """20 frames of 8 filter-bank features per row (the front end's two stride-2 convolutions: 5 encoder positions)
    and 6 decoder tokens."""
    gen = torch.Generator().manual_seed(seed)
    return {"input_features": torch.randn(n, 20, 8, generator=gen),
            "decoder_input_ids": torch.randint(3, 97, (n, 6), generator=gen)}


def _pruned(groups: tuple):
    """The tiny Speech2Text, pruned in ``groups``, after a training step and harden; the original's front end and
    everything outside the blocks, to compare."""
    model = _tiny_speech2text()
    outside = {k: v.clone() for k, v in model.state_dict().items() if ".layers." not in k}
    prepare_model(model, MaskedDoRAConfig(**CONFIG, target_groups=groups))
    randomize_adapters(model)
    model.train()
    inputs = _inputs()
    model(**inputs, labels=inputs["decoder_input_ids"]).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    model.eval()
    harden(model)
    return model, outside


def test_speech2text_spec_is_barts_over_both_stacks():
    model = _tiny_speech2text()
    assert spec_for(model).name == "bart"
    prepare_model(model, MaskedDoRAConfig(**CONFIG))
    wrapped = [n for n, m in model.named_modules() if type(m).__name__ == "MaskedDoRALinear"]
    # q, k, v, out_proj, fc1, fc2 in 2 encoder and 2 decoder blocks; the cross-attention (encoder_attn) untouched
    assert len(wrapped) == 4 * 6 and not any("encoder_attn" in n for n in wrapped)
    assert sorted(get_state(model).groups) == sorted(f"{g}_{i}" for g in ("mlp", "heads") for i in range(4))


def test_speech2text_compacts_saves_reloads_and_generates_equal(tmp_path):
    model, outside = _pruned(("mlp", "heads"))
    inputs = _inputs()
    with torch.no_grad():
        ref = model(**inputs).logits
        other = dict(inputs, input_features=inputs["input_features"] + 1.0)
        assert rel_err(model(**other).logits, ref) > 1e-3  # the audio reaches the logits
        small = compact_model(model)
        assert rel_err(small(**inputs).logits, ref) < TOL
    assert [b.fc1.out_features for b in small.model.encoder.layers] == [32, 32]
    assert [b.fc1.out_features for b in small.model.decoder.layers] == [24, 24]
    assert [b.self_attn.q_proj.out_features for b in small.model.decoder.layers] == [16, 16]
    kept = {k: v for k, v in small.state_dict().items() if ".layers." not in k}
    assert kept.keys() == outside.keys() and all(torch.equal(v, outside[k]) for k, v in kept.items())
    small.save_pretrained(str(tmp_path))
    reloaded = load_compact(str(tmp_path))
    gen = dict(max_new_tokens=5, do_sample=False)
    with torch.no_grad():
        assert rel_err(reloaded(**inputs).logits, ref) < TOL
        row = inputs["input_features"][:1]
        assert torch.equal(reloaded.generate(input_features=row, **gen), model.generate(input_features=row, **gen))


def test_speech2text_pruned_mlp_reloads_with_plain_transformers(tmp_path):
    model, _ = _pruned(("mlp",))
    assert get_state(model).save_form == "plain"
    inputs = _inputs()
    with torch.no_grad():
        ref = model(**inputs).logits
        small = compact_model(model)
    assert (small.config.encoder_ffn_dim, small.config.decoder_ffn_dim) == (32, 24)
    small.save_pretrained(str(tmp_path))
    torch.save(inputs, os.path.join(str(tmp_path), "inputs.pt"))
    out, = reload_plain_in_clean_process([(str(tmp_path), "AutoModelForSpeechSeq2Seq")])
    assert rel_err(out, ref) < TOL


# Moonshine: raw audio (input_values) through three convolutions (strides 64, 3, 2: 3000 samples give 6 encoder
# positions), rotary attention of 4 heads of 8 dims padded to 16 (pad_head_dim_to_multiple_of), an encoder MLP
# fc1 / GELU / fc2 and a decoder MLP whose fc1 is 2 x 48 wide, [value | gate]
MOONSHINE = dict(vocab_size=97, hidden_size=32, intermediate_size=48, encoder_num_hidden_layers=2,
                 decoder_num_hidden_layers=2, encoder_num_attention_heads=4, decoder_num_attention_heads=4,
                 pad_head_dim_to_multiple_of=16, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                 eos_token_id=2, decoder_start_token_id=1)


def _tiny_moonshine(model_class: str = "MoonshineForConditionalGeneration"):
    transformers = _transformers(model_class)
    torch.manual_seed(0)
    return getattr(transformers, model_class)(transformers.MoonshineConfig(**MOONSHINE)).eval()


def _moonshine_inputs(n: int = 2, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"input_values": torch.randn(n, 3000, generator=gen),
            "decoder_input_ids": torch.randint(3, 97, (n, 6), generator=gen)}


def _pruned_moonshine(groups: tuple, model_class: str = "MoonshineForConditionalGeneration"):
    """The tiny Moonshine pruned in ``groups`` after a training step and harden; the original's parameters outside
    the blocks (the front end, embeddings, norms), to compare."""
    model = _tiny_moonshine(model_class)
    outside = {k: v.clone() for k, v in model.state_dict().items() if ".layers." not in k}
    prepare_model(model, MaskedDoRAConfig(**CONFIG, target_groups=groups))
    randomize_adapters(model)
    model.train()
    inputs = _moonshine_inputs()
    out = model(**inputs)
    (out.logits if hasattr(out, "logits") else out.last_hidden_state).square().mean().backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    model.eval()
    harden(model)
    return model, outside


def test_moonshine_spec_covers_both_stacks_but_not_the_cross_attention():
    model = _tiny_moonshine()
    assert spec_for(model).name == "moonshine"
    prepare_model(model, MaskedDoRAConfig(**CONFIG))
    wrapped = [n for n, m in model.named_modules() if type(m).__name__ == "MaskedDoRALinear"]
    # q, k, v, o_proj, fc1, fc2 in 2 encoder and 2 decoder blocks; the cross-attention and the convolutions untouched
    assert len(wrapped) == 4 * 6 and not any("encoder_attn" in n or ".conv" in n for n in wrapped)
    assert sorted(get_state(model).groups) == sorted(f"{g}_{i}" for g in ("mlp", "heads") for i in range(4))
    # the decoder's fc1 stacks [value | gate]: channel i is rows i and 48 + i, one mask entry
    assert get_state(model).groups["mlp_2"].mask_logits.numel() == 48


@pytest.mark.parametrize("model_class", ["MoonshineForConditionalGeneration", "MoonshineModel"])
def test_moonshine_compacts_saves_reloads_and_generates_equal(tmp_path, model_class):
    """Heads and MLP of both stacks: the compacted attentions read their kept head count from a config of their own
    (the model's config, which the cross-attention reads, keeps 4 heads); per-layer form, ``load_compact``."""
    model, outside = _pruned_moonshine(("mlp", "heads"), model_class)
    assert get_state(model).save_form != "plain"
    inputs = _moonshine_inputs()

    def run(m, **kw):
        out = m(**kw)
        return out.logits if hasattr(out, "logits") else out.last_hidden_state

    with torch.no_grad():
        ref = run(model, **inputs)
        assert rel_err(run(model, **dict(inputs, input_values=inputs["input_values"].flip(-1))), ref) > 1e-3
        small = compact_model(model)
        assert rel_err(run(small, **inputs), ref) < TOL
    base = small.model if hasattr(small, "model") else small
    assert [b.mlp.fc1.out_features for b in base.encoder.layers] == [24, 24]
    assert [b.mlp.fc1.out_features for b in base.decoder.layers] == [48, 48]  # [value | gate], 24 each
    assert [b.self_attn.q_proj.out_features for b in base.decoder.layers] == [16, 16]
    for b in base.decoder.layers:  # the cross-attention keeps its 4 heads, read from the model's config
        assert b.encoder_attn.q_proj.out_features == 32 and b.encoder_attn.config is small.config
        assert b.self_attn.config is not small.config and b.self_attn.config.num_key_value_heads == 2
    assert small.config.encoder_num_attention_heads == small.config.decoder_num_attention_heads == 4
    kept = {k: v for k, v in small.state_dict().items() if ".layers." not in k}
    assert kept.keys() == outside.keys() and all(torch.equal(v, outside[k]) for k, v in kept.items())
    small.save_pretrained(str(tmp_path))
    reloaded = load_compact(str(tmp_path))
    with torch.no_grad():
        assert rel_err(run(reloaded, **inputs), ref) < TOL
        if model_class == "MoonshineForConditionalGeneration":
            gen, row = dict(max_new_tokens=5, do_sample=False), inputs["input_values"][:1]
            tokens = model.generate(input_values=row, **gen)
            assert tokens.shape[1] > 1 and torch.equal(reloaded.generate(input_values=row, **gen), tokens)


def test_moonshine_compacts_for_training_in_place():
    """compact_for_training gives each decoder self-attention its own config too: the small model trains as the
    masked one (same outputs), and compacts to it."""
    model, _ = _pruned_moonshine(("mlp", "heads"))
    inputs = _moonshine_inputs()
    with torch.no_grad():
        ref = model(**inputs).logits
    small = compact_for_training(copy.deepcopy(model))
    attention = small.model.decoder.layers[0].self_attn
    assert attention.q_proj.out_features == 16 and attention.config is not small.config
    with torch.no_grad():
        assert rel_err(small(**inputs).logits, ref) < TOL
        assert rel_err(compact_model(small)(**inputs).logits, ref) < TOL


def test_moonshine_pruned_mlp_reloads_with_plain_transformers(tmp_path):
    model, _ = _pruned_moonshine(("mlp",))
    assert get_state(model).save_form == "plain"
    inputs = _moonshine_inputs()
    with torch.no_grad():
        ref = model(**inputs).logits
        small = compact_model(model)
    assert small.config.intermediate_size == 24
    assert small.model.decoder.layers[0].mlp.fc1.out_features == 48
    small.save_pretrained(str(tmp_path))
    torch.save(inputs, os.path.join(str(tmp_path), "inputs.pt"))
    out, = reload_plain_in_clean_process([(str(tmp_path), "AutoModelForSpeechSeq2Seq")])
    assert rel_err(out, ref) < TOL


# Moonshine Streaming: 80-sample frames through two stride-2 causal convolutions (1920 samples: 6 encoder
# positions); an encoder config of its own (hidden 40, 4 heads of 10, sliding windows per layer) and Moonshine's
# decoder (hidden 32, 4 heads of 8; the config needs num_key_value_heads, its attention reads it)
STREAMING = dict(encoder_config=dict(hidden_size=40, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=4, sliding_windows=[[16, 4], [16, 0]],
                                     max_position_embeddings=64),
                 vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                 decoder_start_token_id=1)


def _pruned_streaming(groups: tuple):
    transformers = _transformers("MoonshineStreamingForConditionalGeneration")
    torch.manual_seed(0)
    model = transformers.MoonshineStreamingForConditionalGeneration(
        transformers.MoonshineStreamingConfig(**STREAMING)).eval()
    assert spec_for(model).name == "moonshine_streaming"
    prepare_model(model, MaskedDoRAConfig(**CONFIG, target_groups=groups))
    randomize_adapters(model)
    model.train()
    inputs = _moonshine_inputs()
    inputs["input_values"] = inputs["input_values"][:, :1920]
    model(**inputs, labels=inputs["decoder_input_ids"]).loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    model.eval()
    harden(model)
    return model, inputs


def test_moonshine_streaming_compacts_saves_reloads_and_generates_equal(tmp_path):
    model, inputs = _pruned_streaming(("mlp", "heads"))
    assert sorted(get_state(model).groups) == sorted(f"{g}_{i}" for g in ("mlp", "heads") for i in range(4))
    with torch.no_grad():
        ref = model(**inputs).logits
        small = compact_model(model)
        assert rel_err(small(**inputs).logits, ref) < TOL
    encoder, decoder = small.model.encoder.layers, small.model.decoder.layers
    assert [(b.self_attn.q_proj.out_features, b.mlp.fc1.out_features) for b in encoder] == [(20, 24)] * 2
    assert [(b.self_attn.q_proj.out_features, b.mlp.fc1.out_features) for b in decoder] == [(16, 48)] * 2
    assert all(b.encoder_attn.q_proj.out_features == 32 and b.encoder_attn.config is small.config for b in decoder)
    small.save_pretrained(str(tmp_path))
    reloaded = load_compact(str(tmp_path))
    gen, row = dict(max_new_tokens=5, do_sample=False), inputs["input_values"][:1]
    with torch.no_grad():
        assert rel_err(reloaded(**inputs).logits, ref) < TOL
        assert torch.equal(reloaded.generate(input_values=row, **gen), model.generate(input_values=row, **gen))


def test_moonshine_streaming_pruned_mlp_reloads_with_plain_transformers(tmp_path):
    model, inputs = _pruned_streaming(("mlp",))
    assert get_state(model).save_form == "plain"
    with torch.no_grad():
        ref = model(**inputs).logits
        small = compact_model(model)
    assert (small.config.encoder_config.intermediate_size, small.config.intermediate_size) == (24, 24)
    small.save_pretrained(str(tmp_path))
    torch.save(inputs, os.path.join(str(tmp_path), "inputs.pt"))
    out, = reload_plain_in_clean_process([(str(tmp_path), "AutoModelForSpeechSeq2Seq")])
    assert rel_err(out, ref) < TOL

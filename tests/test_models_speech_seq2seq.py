"""Speech-to-text encoder-decoders beside Whisper (whose chain is in the tiny family table): Speech2Text
(``speech_to_text``), BART's encoder and decoder stacks behind a convolutional front end over filter-bank features
(``input_features``: batch x frames x features), end to end on a tiny config.

Its MLP channels and the self-attention heads of both stacks prune (the decoder's cross-attention and the front
end stay as they are) → a training step → harden → compact → equal logits → save → reload → equal logits and equal
``generate()`` tokens from the audio. Its attention derives head_dim from d_model // heads: pruned heads save in
the per-layer form (``load_compact``); a pruned MLP alone saves plainly and reloads with
``AutoModelForSpeechSeq2Seq`` in a process without masked_dora.
"""

from __future__ import annotations

import os

import pytest
import torch

from masked_dora.models import MaskedDoRAConfig, compact_model, get_state, harden, load_compact, prepare_model, spec_for

from helpers import rel_err
from tiny_models import randomize_adapters, reload_plain_in_clean_process

CONFIG = dict(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5)
TOL = 1e-5
SPEECH2TEXT = dict(vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=64,
                   decoder_ffn_dim=48, encoder_attention_heads=4, decoder_attention_heads=4, input_feat_per_channel=8,
                   input_channels=1, conv_channels=16, max_source_positions=64, max_target_positions=32, dropout=0.0,
                   attention_dropout=0.0, activation_dropout=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                   decoder_start_token_id=1)


def _transformers():
    import transformers

    if not hasattr(transformers, "Speech2TextForConditionalGeneration"):
        pytest.skip(f"transformers {transformers.__version__} has no Speech2TextForConditionalGeneration")
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

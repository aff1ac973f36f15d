"""Audio language models (the types of ``tiny_audio_lms.FAMILIES``: Qwen2-Audio, Voxtral, Granite Speech, Qwen3-ASR,
Audio Flamingo 3, GLM-ASR, Music Flamingo) end to end on tiny configs, as a user runs them.

``prepare_model(audio_lm)`` prunes the language model's MLP channels and heads (the audio tower and the projector
stay as they are) → one training step on audio inputs → harden → compact → equal outputs (relative error) for
text-only inputs and for inputs with audio features → save → reload (``load_compact``, and plain transformers in
a process without masked_dora: the text config says the pruned sizes) → equal outputs and equal ``generate()``
tokens, text-only and with audio. Text alone runs every block (``WrapperSpec.text_alone``); hidden pruning is
refused (the audio projector writes into the residual stream).
"""

from __future__ import annotations

import pytest
import torch

from masked_dora.models import MaskedDoRAConfig, get_state, load_compact, prepare_model, spec_for
from masked_dora.models.blocks import find_layers, stack_specs
from masked_dora.models.specs import WRAPPERS

from helpers import rel_err
from tiny_audio_lms import AUDIO_ID, FAMILIES, audio_inputs, available, tiny_audio_lm, unavailable_reason
from tiny_models import reload_plain_in_clean_process
from tiny_vlms import text_inputs
from wrapped_lm_chain import compact_chain, outside_blocks, train_step

AUDIO_LMS = [f for f in FAMILIES if available(f)]
MISSING = [f for f in FAMILIES if not available(f)]
CONFIG = dict(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5)
TOL = 1e-5  # float32: the compacted model computes the kept channels' sums in another order


@pytest.mark.parametrize("family", MISSING or ["-"])
def test_audio_lm_families_this_transformers_lacks_are_reported(family):
    if family == "-":
        return
    pytest.skip(f"{unavailable_reason(family)}: {family!r} is not tested")


def _train_step(model, family: str) -> None:
    """One optimizer step of the causal-LM loss on audio inputs (the audio placeholders' labels masked)."""
    inputs = audio_inputs(family)
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == AUDIO_ID, -100)
    train_step(model, dict(inputs, labels=labels), FAMILIES[family].eval_while_training)


def _outside_blocks(model, family: str) -> dict:
    return outside_blocks(model, FAMILIES[family].block_lists)


def _generate(model, inputs: dict) -> torch.Tensor:
    return model.generate(**inputs, max_new_tokens=5, do_sample=False)


def _inputs(family: str, n: int = 2) -> dict:
    return {"audio": audio_inputs(family, n=n), "text": text_inputs(n=n)}


def _chain(family: str, path: str) -> dict:
    config = MaskedDoRAConfig(**CONFIG, target_groups=FAMILIES[family].groups)
    return compact_chain(tiny_audio_lm(family), config, FAMILIES[family].block_lists,
                         lambda m: _train_step(m, family), _inputs(family), "audio", path, _inputs(family, n=1))


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    return {family: _chain(family, str(tmp_path_factory.mktemp(family))) for family in AUDIO_LMS}


@pytest.mark.parametrize("family", AUDIO_LMS)
def test_audio_lm_spec_is_its_language_models(family):
    """The spec is the language model's (by the text config's model_type), its blocks the language model's (not
    the audio tower's, which has a ``layers`` list too), its groups and wrapped modules only there."""
    model = tiny_audio_lm(family)
    spec = spec_for(model)
    assert spec.name == f"{model.config.model_type}+{spec_for(model.config.text_config).name}"
    assert tuple(find_layers(model, stack)[0] for stack in stack_specs(spec)) == FAMILIES[family].block_lists
    groups = FAMILIES[family].groups
    prepare_model(model, MaskedDoRAConfig(**CONFIG, target_groups=groups))
    wrapped = [n for n, m in model.named_modules() if type(m).__name__ == "MaskedDoRALinear"]
    language_model = FAMILIES[family].language_model
    assert len(wrapped) == FAMILIES[family].wrapped and all(n.startswith(language_model + ".") for n in wrapped)
    assert sorted(get_state(model).groups) == sorted(f"{g}_{i}" for g in groups for i in range(2))


@pytest.mark.parametrize("family", AUDIO_LMS)
def test_audio_lm_text_alone_runs_every_block(family):
    """``WrapperSpec.text_alone`` holds (the CLI trains these on text): importance calibrated on text alone, without
    audio features, reaches every pruned block, and text alone gives the language model's own logits (the audio
    tower and the projector never run)."""
    model = tiny_audio_lm(family)
    assert WRAPPERS[model.config.model_type].text_alone
    config = MaskedDoRAConfig(**dict(CONFIG, importance="activation"), target_groups=FAMILIES[family].groups)
    prepare_model(model, config, calibration=[text_inputs(n=2)])
    text = text_inputs(n=2)
    tower = model.get_submodule(FAMILIES[family].tower)
    with torch.no_grad():
        logits = model(**text).logits
        for p in tower.parameters():  # the tower runs on audio only: breaking it changes nothing on text
            p.mul_(-3.0)
        assert torch.equal(model(**text).logits, logits)


@pytest.mark.parametrize("family", AUDIO_LMS)
def test_audio_lm_compacts_saves_reloads_and_generates_equal(chains, family):
    c = chains[family]
    with torch.no_grad():  # the audio reaches the logits (the audio-input comparison is not a text-only one)
        other = dict(c["inputs"]["audio"], input_features=c["inputs"]["audio"]["input_features"] + 1.0)
        assert rel_err(c["model"](**other).logits, c["ref"]["audio"]) > 1e-3
    for kind in c["inputs"]:
        assert rel_err(c["out"][kind], c["ref"][kind]) < TOL, kind
    text = c["small"].config.text_config
    assert (text.intermediate_size, text.num_attention_heads, text.num_key_value_heads, text.head_dim) == (32, 2, 1, 8)
    assert get_state(c["model"]).save_form == "plain"
    # the audio tower, the projector, the embeddings and the LM head: the original model's, untouched
    kept = _outside_blocks(c["small"], family)
    assert kept.keys() == c["before"].keys()
    assert all(torch.equal(v, c["before"][k]) for k, v in kept.items())
    reloaded = load_compact(c["path"])
    with torch.no_grad():
        for kind, inputs in c["inputs"].items():
            assert rel_err(reloaded(**inputs).logits, c["ref"][kind]) < TOL, kind
    for kind, inputs in c["one_row"].items():
        assert torch.equal(_generate(reloaded, inputs), _generate(c["model"], inputs)), kind


def test_audio_lm_checkpoints_reload_with_plain_transformers(chains):
    """The compacted audio LMs load with AutoModelForSeq2SeqLM (transformers' auto class for them) alone, in a
    process without masked_dora, and give the masked model's logits on audio inputs."""
    if not chains:
        pytest.skip("no audio LM family in this transformers")
    families = list(chains)
    outputs = reload_plain_in_clean_process([(chains[f]["path"], "AutoModelForSeq2SeqLM") for f in families])
    for family, out in zip(families, outputs):
        assert rel_err(out, chains[family]["ref"]["audio"]) < TOL, family


@pytest.mark.parametrize("mode", ["global", "per_block"])
def test_audio_lm_hidden_pruning_is_refused_before_anything_changes(mode):
    family = AUDIO_LMS[0] if AUDIO_LMS else pytest.skip("no audio LM family in this transformers")
    model = tiny_audio_lm(family)
    config = MaskedDoRAConfig(**dict(CONFIG, target_groups=("mlp", "heads", "hidden")), hidden_mode=mode)
    with pytest.raises(ValueError, match=r"'hidden' .*cannot be pruned in a '\w+' model: the audio projector"):
        prepare_model(model, config)
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())

"""Vision-language models (the types of ``tiny_vlms.FAMILIES``: LLaVA and its NeXT, NeXT-Video, OneVision,
VipLLaVA and Video-LLaVA variants, DeepSeek-VL (and hybrid), BLIP-2, InstructBLIP, Gemma 3, PaliGemma 1 and 2, Qwen2-VL,
Qwen2.5-VL, Qwen3-VL, Cosmos 3 Omni, Qwen3-VL-MoE, EXAONE 4.5, HyperCLOVA X Vision, VideoLLaMA3, Mistral3,
LightOnOCR, SmolVLM, Idefics2, Idefics3, InternVL, Qianfan-OCR, Ovis2, GOT-OCR2, Aya Vision, Command A Vision,
LFM2-VL, LFM3-VL, MiniCPM-V 4.6 / 4.7 / OCR, and the rest of ``tiny_vlms.FAMILIES``: GLM-4V, Janus, FastVLM, Kimi-K2.5,
Qwen2.5-Omni's thinker, ERNIE-4.5-VL, Aria, Molmo2, Idefics 1, Granite 4 Vision, Chameleon, Emu3, Fuyu, PerceptionLM,
...) end to end on tiny configs, as a user runs them.

``prepare_model(vlm)`` prunes the language model's MLP channels and heads (its MLP only where the language
model's heads are refused; the vision tower and the projector stay as they are) → one training step on image
inputs → harden → compact → equal outputs (relative error) for text-only inputs (where the model runs them)
and for inputs with ``pixel_values`` → save → reload (``load_compact``, and plain transformers
in a process without masked_dora where the text config can express the sizes) → equal outputs and equal
``generate()`` tokens, text-only and with an image. The Trainer with ``MaskedDoRACallback`` puts the penalty on
the VLM's loss. Hidden pruning is refused (the projector writes into the residual stream).
"""

from __future__ import annotations

import pytest
import torch

from masked_dora.models import (MaskedDoRACallback, MaskedDoRAConfig, compact_model, get_state, harden, load_compact,
                                prepare_model, spec_for)
from masked_dora.models.blocks import find_layers, stack_specs
from masked_dora.models.compact import LAYER_SIZES_KEY
from masked_dora.models.specs import WRAPPERS

from helpers import rel_err as _rel_err
from tiny_models import randomize_adapters, reload_plain_in_clean_process
from tiny_vlm_configs import TEXT
from tiny_vlms import (FAMILIES, IMAGE_ID, available, harden_and_compact_vlm, image_inputs, text_inputs,
                       tiny_llava_around, tiny_vlm, unavailable_reason)
from wrapped_lm_chain import compact_chain, outside_blocks, train_step

VLMS = [f for f in FAMILIES if available(f)]
MISSING = [f for f in FAMILIES if not available(f)]
CONFIG = dict(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5)
TOL = 1e-5  # float32: the compacted model computes the kept channels' sums in another order


@pytest.mark.parametrize("family", MISSING or ["-"])
def test_vlm_families_this_transformers_lacks_are_reported(family):
    if family == "-":
        return
    pytest.skip(f"{unavailable_reason(family)}: {family!r} is not tested")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """helpers.rel_err over the logits the model does not suppress: Chameleon's head sets its image tokens' logits
    to the dtype's minimum, whose size would swamp the norm (any difference elsewhere would look 0); those must be
    suppressed in both."""
    floor = torch.finfo(ref.dtype).min / 2
    kept = ref > floor
    assert torch.equal(kept, out > floor), "the suppressed logits differ"
    return _rel_err(out[kept], ref[kept])


def _with_labels(inputs: dict) -> dict:
    """The inputs with labels: the text tokens (the image's masked), or an encoder-decoder's decoder tokens."""
    if "decoder_input_ids" in inputs:
        return dict(inputs, labels=inputs["decoder_input_ids"])
    return dict(inputs, labels=inputs["input_ids"].masked_fill(inputs["input_ids"] == IMAGE_ID, -100))


def _train_step(model, family: str) -> None:
    """One optimizer step of the causal-LM loss on image inputs (adapters and mask logits)."""
    train_step(model, _with_labels(image_inputs(family)), FAMILIES[family].eval_while_training)


def _outside_blocks(model, family: str) -> dict:
    return outside_blocks(model, FAMILIES[family].block_lists)


def _text_config(config):
    """The config holding the language model's sizes: ``text_config``, or the config itself where the VLM's config
    is its language model's (Idefics 1)."""
    return getattr(config, "text_config", config)


def _spec_says_text_alone(config) -> bool:
    """Whether masked_dora takes the model to run every block of its language model on text alone, as the CLI
    (which trains on text) decides: a wrapped VLM by its ``WrapperSpec.text_alone``; another model with a vision
    tower (Idefics 1, whose config is its language model's) never (the CLI refuses it)."""
    if config.model_type in WRAPPERS:
        return WRAPPERS[config.model_type].text_alone
    return getattr(config, "vision_config", None) is None


def _kv_heads(text_config):
    """The KV heads (a tuple, one per layer, for a heterogeneous config: Gemma 4's full-attention layers have
    their own)."""
    if getattr(text_config, "is_heterogeneous", False):
        return tuple(layer.num_key_value_heads for layer in text_config.per_layer_config)
    return getattr(text_config, "num_key_value_heads", text_config.num_attention_heads)  # OPT: one per query head


def _generate(model, inputs: dict) -> torch.Tensor:
    return model.generate(**inputs, max_new_tokens=5, do_sample=False)


def _inputs(family: str, n: int = 2) -> dict:
    """``n`` rows of image inputs and, where the model runs them, of text-only ones (generate() gets one row,
    built as the batch is: packed or flattened pixels stay the row's own)."""
    image = {"image": image_inputs(family, n=n)}
    return dict(image, text=text_inputs(n=n)) if FAMILIES[family].text_alone else image


def _chain(family: str, path: str) -> dict:
    config = MaskedDoRAConfig(**CONFIG, target_groups=FAMILIES[family].groups)
    return compact_chain(tiny_vlm(family), config, FAMILIES[family].block_lists, lambda m: _train_step(m, family),
                         _inputs(family), "image", path, _inputs(family, n=1))


@pytest.fixture(scope="module")
def chains(tmp_path_factory):
    return {family: _chain(family, str(tmp_path_factory.mktemp(family))) for family in VLMS}


@pytest.mark.parametrize("family", VLMS)
def test_vlm_spec_is_its_language_models(family):
    """The spec is the language model's (by the text config's model_type), its blocks the language model's
    (not the vision tower's, which comes first and has a ``layers`` list too), its groups only there."""
    model = tiny_vlm(family)
    spec = spec_for(model)
    if model.config.model_type in WRAPPERS:
        assert spec.name == f"{model.config.model_type}+{spec_for(model.config.text_config).name}"
    else:  # a VLM whose config is its language model's (Idefics 1): a spec of its own, hidden pruning refused
        assert spec.name == model.config.model_type and spec.refusal("hidden", model.config) is not None
    language_model = FAMILIES[family].language_model
    assert tuple(find_layers(model, stack)[0] for stack in stack_specs(spec)) == FAMILIES[family].block_lists
    # a model that cannot run on text alone must say so in its spec (the CLI, which trains on text, refuses by it)
    assert FAMILIES[family].text_alone or not _spec_says_text_alone(model.config)
    groups = FAMILIES[family].groups
    if "heads" not in groups:  # refused, naming the VLM, before anything is wrapped
        with pytest.raises(ValueError, match=rf"'heads' cannot be pruned in a '{model.config.model_type}' model"):
            prepare_model(model, MaskedDoRAConfig(**CONFIG))
    prepare_model(model, MaskedDoRAConfig(**CONFIG, target_groups=groups))
    wrapped = [n for n, m in model.named_modules() if type(m).__name__ == "MaskedDoRALinear"]
    assert len(wrapped) == FAMILIES[family].wrapped and all(n.startswith(language_model + ".") for n in wrapped)
    blocks = 2 * len(FAMILIES[family].stacks)
    assert sorted(get_state(model).groups) == sorted(f"{g}_{i}" for g in groups for i in range(blocks))


@pytest.mark.parametrize("family", VLMS)
def test_vlm_spec_says_whether_text_alone_runs_every_block(family):
    """``WrapperSpec.text_alone``, by which the CLI (training on text) refuses a VLM: where it holds, importance
    calibrated on text alone reaches every pruned block; where it does not, text alone fails or leaves blocks
    unseen (BLIP-2's forward needs an image; Mllama skips its cross-attention blocks without one)."""
    model = tiny_vlm(family)
    config = MaskedDoRAConfig(**dict(CONFIG, importance="activation"), target_groups=FAMILIES[family].groups)
    if _spec_says_text_alone(model.config):
        prepare_model(model, config, calibration=[text_inputs(n=2)])
    else:
        with pytest.raises((ValueError, TypeError)):
            prepare_model(model, config, calibration=[text_inputs(n=2)])


@pytest.mark.parametrize("family", VLMS)
def test_vlm_compacts_saves_reloads_and_generates_equal(chains, family):
    c = chains[family]
    with torch.no_grad():  # the image reaches the logits (the image-input comparison is not a text-only one)
        key, pixels = FAMILIES[family].pixels_key, c["inputs"]["image"][FAMILIES[family].pixels_key]
        # a ramp over the last dim, not a constant: an encoder-free embedder's LayerNorm over the raw patch
        # (Gemma 4 Unified) cancels a constant shift
        other = dict(c["inputs"]["image"], **{key: pixels + torch.linspace(0.5, 1.5, pixels.shape[-1])})
        assert rel_err(c["model"](**other).logits, c["ref"]["image"]) > 1e-3
    for kind in c["inputs"]:
        assert rel_err(c["out"][kind], c["ref"][kind]) < TOL, kind
    small, text = c["small"], _text_config(c["small"].config)
    # the MLP width key: an MoE's is one expert's (moe_intermediate_size); "" where the key sizes other modules
    width = spec_for(small).mlp.size_key
    before = _text_config(FAMILIES[family].config(__import__("transformers")))
    heads = (2, _kv_heads(before) // 2) if "heads" in FAMILIES[family].groups else (4, _kv_heads(before))
    assert (width and (getattr(text, width), text.num_attention_heads, _kv_heads(text)) == (32, *heads)) or (
        not FAMILIES[family].plain and getattr(small.config, LAYER_SIZES_KEY) == [
            dict(intermediate=32, heads=heads[0], kv_heads=heads[1], head_dim=8)] * 2 * len(FAMILIES[family].stacks))
    assert get_state(c["model"]).save_form == ("plain" if FAMILIES[family].plain else "per_layer")
    # the vision tower, the projector, the embeddings and the LM head: the original model's, untouched
    kept = _outside_blocks(small, family)
    assert kept.keys() == c["before"].keys()
    assert all(torch.equal(v, c["before"][k]) for k, v in kept.items())
    reloaded = load_compact(c["path"])
    with torch.no_grad():
        for kind, inputs in c["inputs"].items():
            assert rel_err(reloaded(**inputs).logits, c["ref"][kind]) < TOL, kind
    for kind, inputs in c["one_row"].items():
        assert torch.equal(_generate(reloaded, inputs), _generate(c["model"], inputs)), kind


def test_plain_vlm_checkpoints_reload_with_plain_transformers(chains):
    """The head-pruned VLMs whose text config has head_dim load with AutoModelForImageTextToText alone."""
    import transformers

    if not hasattr(transformers, "AutoModelForImageTextToText"):
        pytest.skip("this transformers has no AutoModelForImageTextToText")
    plain = [f for f in chains if FAMILIES[f].plain]
    if not plain:
        pytest.skip("no plain VLM family in this transformers")
    outputs = reload_plain_in_clean_process([(chains[f]["path"], "AutoModelForImageTextToText") for f in plain])
    for family, out in zip(plain, outputs):
        assert rel_err(out, chains[family]["ref"]["image"]) < TOL, family


ONE_GROUP_PLAIN = (("qwen2_vl", ("mlp",)), ("qwen2_5_vl", ("mlp",)), ("mllama", ("mlp",)), ("glm4v", ("mlp",)),
                   ("glm4v_moe", ("heads",)), ("ernie4_5_vl_moe", ("heads",)), ("aria", ("heads",)),
                   ("fuyu", ("mlp",)), ("idefics", ("mlp",)), ("chameleon", ("mlp",)), ("llama4", ("heads",)))


@pytest.mark.parametrize("family,groups", [(f, g) for f, g in ONE_GROUP_PLAIN if f in VLMS])
def test_vlm_one_group_alone_saves_plainly(family, groups, tmp_path):
    """Where one group's pruned sizes need the per-layer form, the other group alone is a plain checkpoint that
    reloads with from_pretrained alone. Qwen2-VL's, Mllama's and GLM-4.1V's attention derives head_dim from the
    hidden size (pruned heads: the per-layer form), but their pruned MLP alone saves plainly (intermediate_size
    in the text config), as do Fuyu's (a Persimmon), Idefics 1's (both stacks at one width) and Chameleon's;
    GLM-4.5V's, ERNIE-4.5-VL's and Aria's pruned expert width also sizes their shared experts (the per-layer form),
    but their pruned heads alone save plainly (head_dim in the text config, which their attention reads)."""
    model = tiny_vlm(family)
    prepare_model(model, MaskedDoRAConfig(**CONFIG, target_groups=groups))
    assert get_state(model).save_form == "plain"
    randomize_adapters(model)
    harden(model)
    inputs = image_inputs(family)
    with torch.no_grad():
        ref = model(**inputs).logits
        small = compact_model(model)
    text = _text_config(small.config)
    sizes = (text.intermediate_size,) if groups == ("mlp",) else (text.num_attention_heads, text.num_key_value_heads)
    assert not hasattr(small.config, LAYER_SIZES_KEY) and sizes == ((32,) if groups == ("mlp",) else (2, 1))
    small.save_pretrained(str(tmp_path))
    reloaded = type(small).from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        assert rel_err(reloaded(**inputs).logits, ref) < TOL


@pytest.mark.parametrize("family", [f for f in ("llava", "gemma3") if f in VLMS])
def test_vlm_trains_with_the_trainer_callback(family, tmp_path):
    """The Trainer's loss is the VLM's: the callback's hook adds the penalty to it (the multipliers and the
    mask logits move)."""
    from transformers import Trainer, TrainingArguments

    model = tiny_vlm(family)
    prepare_model(model, MaskedDoRAConfig(**CONFIG))
    inputs = _with_labels(image_inputs(family, n=4))
    rows = [{k: v[i] for k, v in inputs.items()} for i in range(4)]
    callback = MaskedDoRACallback(model, lambda_lr=0.5)
    before = get_state(model).group("heads", 0).mask_logits.detach().clone()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2,
                             learning_rate=1e-2, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback]).train()
    assert float(callback.mask_trainer.controller.controllers["heads"].lambda_1.detach()) != 0.0
    assert not torch.equal(get_state(model).group("heads", 0).mask_logits.detach(), before)


@pytest.mark.parametrize("family", [f for f in ("llava", "qwen2_vl") if f in VLMS])
def test_vlm_training_state_and_compact_for_training_keep_the_outputs(family, tmp_path):
    """save/load_training_state on a fresh VLM gives the same model; compact_for_training (training at the kept
    size) and then compact_model keep the masked model's outputs on image inputs."""
    from masked_dora.models import compact_for_training, load_training_state, save_training_state

    model = tiny_vlm(family)
    prepare_model(model, MaskedDoRAConfig(**CONFIG))
    randomize_adapters(model)
    inputs = image_inputs(family)
    save_training_state(model, str(tmp_path))
    loaded = load_training_state(tiny_vlm(family), str(tmp_path))
    harden(model)
    harden(loaded)
    with torch.no_grad():
        ref = model(**inputs).logits
        assert rel_err(loaded(**inputs).logits, ref) < TOL
        compact_for_training(model)
        assert rel_err(model(**inputs).logits, ref) < TOL
        assert rel_err(compact_model(model)(**inputs).logits, ref) < TOL


def test_vlm_reads_its_language_models_flags_from_the_text_config(tmp_path):
    """A LLaVA around a Cohere with use_qk_norm, a flag of the text config (the LLaVA config has none): the
    per-head q/k norm rows follow their heads into the compacted model, which reloads with plain transformers."""
    import transformers

    if "llava" not in VLMS or not hasattr(transformers, "CohereConfig"):
        pytest.skip("this transformers has no LLaVA or Cohere")
    model = tiny_llava_around(transformers.CohereConfig(**TEXT, use_qk_norm=True))
    with torch.no_grad():  # every head's norm its own values (they start at ones: the wrong rows would pass)
        for name, p in model.named_parameters():
            if ".q_norm." in name or ".k_norm." in name:
                p.copy_(1.0 + 0.5 * torch.randn(p.shape))
    prepare_model(model, MaskedDoRAConfig(**CONFIG))
    randomize_adapters(model)
    ref, small, out = harden_and_compact_vlm(model, "llava")
    assert rel_err(out, ref) < TOL
    attention = small.model.language_model.layers[0].self_attn
    assert tuple(attention.q_norm.weight.shape) == (2, 8) and tuple(attention.k_norm.weight.shape) == (1, 8)
    small.save_pretrained(str(tmp_path))
    with torch.no_grad():
        reloaded = transformers.LlavaForConditionalGeneration.from_pretrained(str(tmp_path)).eval()
        assert rel_err(reloaded(**image_inputs("llava")).logits, ref) < TOL


def test_vlm_refuses_what_its_language_models_config_refuses():
    """A LLaVA config around a Falcon: the alibi flag that refuses a Falcon's heads is read from the text config
    (the LLaVA config has none), and the blocks are looked up under the language model ("h")."""
    import transformers

    if not hasattr(transformers, "LlavaConfig"):
        pytest.skip("this transformers has no LlavaConfig")
    for alibi in (True, False):
        config = transformers.LlavaConfig(text_config=dict(model_type="falcon", alibi=alibi))
        spec = spec_for(config)
        assert spec.layers == ("language_model.h",) and spec.name.startswith("llava+falcon")
        reason = spec.refusal("heads", config)
        assert (reason is not None and "alibi" in reason) if alibi else reason is None
        assert spec.refusal("mlp", config) is None


@pytest.mark.parametrize("mode", ["global", "per_block"])
def test_vlm_hidden_pruning_is_refused_before_anything_changes(mode):
    family = VLMS[0] if VLMS else pytest.skip("no VLM family in this transformers")
    model = tiny_vlm(family)
    config = MaskedDoRAConfig(**dict(CONFIG, target_groups=("mlp", "heads", "hidden")), hidden_mode=mode)
    with pytest.raises(ValueError, match=r"'hidden' .*cannot be pruned in a '\w+' model: the vision projector"):
        prepare_model(model, config)
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())


def test_vlm_whose_language_model_has_no_spec_is_refused_naming_it():
    import transformers

    if not hasattr(transformers, "LlavaConfig"):
        pytest.skip("this transformers has no LlavaConfig")
    config = transformers.LlavaConfig(text_config={"model_type": "mamba"})
    with pytest.raises(ValueError, match=r"'llava' model's language model \(config.text_config, model_type "
                                         r"'mamba'\) has no spec"):
        spec_for(config)


@pytest.mark.parametrize("family", [f for f in ("blip-2-flan-t5",) if f in VLMS])
def test_vlm_around_flan_t5_prunes_one_stack_in_the_per_layer_form(family, tmp_path):
    """A BLIP-2 around a Flan-T5 pruning its encoder's MLP alone (stacks=("encoder",)): the decoder keeps d_ff,
    which both stacks share, so the checkpoint is in the per-layer form, said at prepare_model; load_compact gives
    the masked model's outputs, the encoder's MLP narrower and the decoder's whole."""
    model = tiny_vlm(family)
    with pytest.warns(UserWarning, match="'d_ff' sizes several stacks"):
        prepare_model(model, MaskedDoRAConfig(**CONFIG, target_groups=("mlp",), stacks=("encoder",)))
    assert get_state(model).save_form == "per_layer" and sorted(get_state(model).groups) == ["mlp_0", "mlp_1"]
    randomize_adapters(model)
    _train_step(model, family)
    harden(model)
    inputs = image_inputs(family)
    with torch.no_grad():
        ref = model(**inputs).logits
        small = compact_model(model)
        assert rel_err(small(**inputs).logits, ref) < TOL
    small.save_pretrained(str(tmp_path))
    reloaded = load_compact(str(tmp_path))
    t5 = reloaded.language_model
    assert [b.layer[1].DenseReluDense.wi_0.out_features for b in t5.encoder.block] == [32, 32]
    assert [b.layer[2].DenseReluDense.wi_0.out_features for b in t5.decoder.block] == [64, 64]
    with torch.no_grad():
        assert rel_err(reloaded(**inputs).logits, ref) < TOL


def test_mllama_cross_attention_blocks_take_their_heads_at_their_own_paths():
    """Llama 3.2 Vision's text model: its self-attention block's heads are self_attn's, its cross-attention
    block's cross_attn's (ModelSpec.heads_elsewhere), with the same config keys; a heads_elsewhere reading other
    keys is refused at the spec's construction."""
    from dataclasses import replace as replace_dataclass

    from masked_dora.models.blocks import model_blocks

    if "mllama" not in VLMS:
        pytest.skip("this transformers has no Mllama")
    model = tiny_vlm("mllama")
    spec = spec_for(model)
    blocks = model_blocks(model, spec)
    assert [type(b.module).__name__ for b in blocks] == ["MllamaSelfAttentionDecoderLayer",
                                                         "MllamaCrossAttentionDecoderLayer"]
    assert [(b.spec.heads.query, b.spec.heads.output) for b in blocks] == [
        ("self_attn.q_proj", "self_attn.o_proj"), ("cross_attn.q_proj", "cross_attn.o_proj")]
    with pytest.raises(ValueError, match="heads_elsewhere is the same attention at other paths"):
        replace_dataclass(spec, heads_elsewhere=replace_dataclass(spec.heads_elsewhere, head_dim_key="head_dim"))


def test_ernie_vl_prunes_its_text_experts_and_keeps_its_vision_experts_whole():
    """ERNIE-4.5-VL's MoE block: the text experts' channels prune (mlp.text_moe.experts narrower after compaction),
    the vision experts, which its image tokens go to, and the shared expert are kept as they were."""
    if "ernie4_5_vl_moe" not in VLMS:
        pytest.skip("this transformers has no ERNIE-4.5-VL")
    model = tiny_vlm("ernie4_5_vl_moe")
    moe = model.model.language_model.layers[1].mlp
    kept = {k: v.detach().clone() for k, v in moe.state_dict().items() if not k.startswith("text_moe.experts.")}
    prepare_model(model, MaskedDoRAConfig(**CONFIG, target_groups=("mlp",)))
    randomize_adapters(model)
    _train_step(model, "ernie4_5_vl_moe")
    ref, small, out = harden_and_compact_vlm(model, "ernie4_5_vl_moe")
    assert rel_err(out, ref) < TOL
    moe = small.model.language_model.layers[1].mlp
    assert tuple(moe.text_moe.experts.down_proj.shape) == (4, 32, 32)
    after = {k: v for k, v in moe.state_dict().items() if not k.startswith("text_moe.experts.")}
    assert after.keys() == kept.keys() and all(torch.equal(v, kept[k]) for k, v in after.items())


def test_molmo2_refuses_heads_where_its_qk_norms_span_all_heads():
    """Molmo2's qk_norm_type (a string) picks its q/k norms' layout: "olmo" (over all heads' width) refuses its
    heads before anything changes (an ``unsupported`` flag term "qk_norm_type=olmo"), while its MLP still prunes
    to the masked model's outputs; "qwen3" (per head, the tiny row's) prunes both."""
    import transformers

    from tiny_vlm_configs_extra import molmo2

    if "molmo2" not in VLMS:
        pytest.skip("this transformers has no Molmo2")
    torch.manual_seed(0)
    model = transformers.Molmo2ForConditionalGeneration(molmo2(transformers, qk_norm_type="olmo")).eval()
    assert spec_for(model).refusal("heads", model.config) is not None
    assert spec_for(tiny_vlm("molmo2")).refusal("heads", tiny_vlm("molmo2").config) is None
    with pytest.raises(ValueError, match=r"'heads' cannot be pruned in a 'molmo2' model: its q/k norms normalise"):
        prepare_model(model, MaskedDoRAConfig(**CONFIG))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())
    prepare_model(model, MaskedDoRAConfig(**CONFIG, target_groups=("mlp",)))
    randomize_adapters(model)
    harden(model)
    inputs = image_inputs("molmo2")
    with torch.no_grad():
        ref = model(**inputs).logits
        assert rel_err(compact_model(model)(**inputs).logits, ref) < TOL


def test_chameleon_per_head_qk_norms_follow_their_heads():
    """Chameleon's q/k LayerNorms hold a weight and a bias row per head (each head normalised over its own head_dim):
    compaction keeps the kept heads' rows, so the compacted model gives the masked one's logits (each row drawn
    its own: the ones and zeros they start at would pass with the wrong rows)."""
    if "chameleon" not in VLMS:
        pytest.skip("this transformers has no Chameleon")
    model = tiny_vlm("chameleon")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".q_norm." in name or ".k_norm." in name:
                p.copy_(0.5 + torch.randn(p.shape))
    prepare_model(model, MaskedDoRAConfig(**CONFIG, target_groups=("heads",)))
    randomize_adapters(model)
    harden(model)
    inputs = image_inputs("chameleon")
    with torch.no_grad():
        ref = model(**inputs).logits
        small = compact_model(model)
        assert rel_err(small(**inputs).logits, ref) < TOL
    attention = small.model.layers[0].self_attn
    assert tuple(attention.q_norm.weight.shape) == (2, 8) and tuple(attention.k_norm.bias.shape) == (1, 8)

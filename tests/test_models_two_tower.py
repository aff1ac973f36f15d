"""Two-tower image-text models (CLIPModel, MetaClip2Model, SiglipModel, Siglip2Model): both towers' blocks prune,
each tower's sizes read from and written to its own sub-config (text_config, vision_config), as a user runs it:
prepare -> one training step -> harden -> compact (equal logits_per_image and embeddings) -> save -> reload (plain
transformers in a clean process where the sub-configs say the sizes, load_compact otherwise) -> equal outputs. The
projections, logit_scale and the embeddings stay as they were."""

from __future__ import annotations

import os

import pytest
import torch
import transformers

from masked_dora.models import MaskedDoRAConfig, compact_model, get_state, harden, load_compact, prepare_model
from masked_dora.models.compact import LAYER_SIZES_KEY

from tiny_models import randomize_adapters, reload_plain_in_clean_process

_BLOCKS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
# the towers differ (text MLP 64, vision MLP 48): a sub-config that got the other tower's sizes would not load
_TEXT = dict(_BLOCKS, intermediate_size=64, vocab_size=97, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
             eos_token_id=2)
# model class -> (config class, the vision tower's config arguments, its image inputs (batch 2))
TOWERS = {
    "CLIPModel": ("CLIPConfig", dict(_BLOCKS, intermediate_size=48, image_size=16, patch_size=4)),
    # MetaCLIP 2: CLIP's towers under its own model types
    "MetaClip2Model": ("MetaClip2Config", dict(_BLOCKS, intermediate_size=48, image_size=16, patch_size=4)),
    "SiglipModel": ("SiglipConfig", dict(_BLOCKS, intermediate_size=48, image_size=16, patch_size=4)),
    # Siglip2: pre-patchified images (16 patches of 4 x 4 x 3) with their mask and grid shape
    "Siglip2Model": ("Siglip2Config", dict(_BLOCKS, intermediate_size=48, num_patches=16, patch_size=4)),
}
AVAILABLE = [name for name, (config, _) in TOWERS.items() if hasattr(transformers, name)
             and hasattr(transformers, config)]
PRUNE = dict(rank=2, alignment={"mlp": 8}, importance="none", target_sparsity=0.5)
UNTOUCHED = ("visual_projection", "text_projection", "logit_scale", "logit_bias", "embeddings", "text_model.head",
             "vision_model.head")


def _model(name: str):
    config_class, vision = TOWERS[name]
    config = getattr(transformers, config_class)(text_config=dict(_TEXT), vision_config=dict(vision))
    torch.manual_seed(0)
    return getattr(transformers, name)(config).eval()


def _inputs(name: str, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (2, 9), generator=gen)
    if name == "Siglip2Model":
        return dict(input_ids=ids, pixel_values=torch.randn(2, 16, 48, generator=gen),
                    pixel_attention_mask=torch.ones(2, 16, dtype=torch.long), spatial_shapes=torch.tensor([[4, 4]] * 2))
    return dict(input_ids=ids, pixel_values=torch.randn(2, 3, 16, 16, generator=gen))


def _outputs(model, inputs) -> dict:
    with torch.no_grad():
        out = model(**inputs)
    return {k: getattr(out, k) for k in ("logits_per_image", "text_embeds", "image_embeds")}


def _train_step(model, inputs) -> None:
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-2)
    out = model(**inputs)
    (out.text_embeds.pow(2).mean() + out.image_embeds.pow(2).mean()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    opt.step()
    model.eval()


def _untouched(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if any(k.startswith(u) or f".{u}." in k
                                                                         for u in UNTOUCHED)}


def _chain(name: str, groups, path: str, **prune):
    """prepare -> train step -> harden -> compact -> save: the masked model, its outputs and the compacted model."""
    model = _model(name)
    inputs = _inputs(name)
    prepare_model(model, MaskedDoRAConfig(target_groups=groups, **PRUNE, **prune))
    randomize_adapters(model)
    _train_step(model, inputs)
    harden(model)
    ref = _outputs(model, inputs)
    kept = _untouched(model)
    small = compact_model(model)
    for key, out in _outputs(small, inputs).items():
        torch.testing.assert_close(out, ref[key], rtol=1e-4, atol=1e-5, msg=key)
    assert kept and all(torch.equal(small.state_dict()[k], v) for k, v in kept.items())
    small.save_pretrained(path)
    torch.save(inputs, os.path.join(path, "inputs.pt"))
    return model, ref, small


@pytest.mark.parametrize("groups", [("mlp",), ("mlp", "heads")])
@pytest.mark.parametrize("name", AVAILABLE)
def test_two_tower_model_prunes_both_towers_and_reloads_equal(tmp_path, name, groups):
    """Both towers' MLPs (and heads) prune, each to its own width; the reloaded model gives the masked model's
    logits_per_image and embeddings. SigLIP's vision tower keeps its pooling head's MLP (per-layer form); pruned
    heads need the per-layer form (the towers' head size is hidden_size // heads)."""
    model, ref, small = _chain(name, groups, str(tmp_path))
    plain = groups == ("mlp",) and name in ("CLIPModel", "MetaClip2Model")
    assert get_state(model).save_form == ("plain" if plain else "per_layer")
    text, vision = small.text_model.encoder.layers[0], small.vision_model.encoder.layers[0]
    assert (text.mlp.fc1.out_features, vision.mlp.fc1.out_features) == (32, 24)
    heads = 2 if "heads" in groups else 4
    assert (text.self_attn.q_proj.out_features, vision.self_attn.q_proj.out_features) == (8 * heads, 8 * heads)
    if plain:  # each sub-config says its own tower's width
        assert not hasattr(small.config, LAYER_SIZES_KEY)
        assert (small.config.text_config.intermediate_size, small.config.vision_config.intermediate_size) == (32, 24)
        (out,) = reload_plain_in_clean_process([(str(tmp_path), name)])
        torch.testing.assert_close(out, ref["logits_per_image"], rtol=1e-4, atol=1e-5)
    reloaded = load_compact(str(tmp_path))
    for key, out in _outputs(reloaded, _inputs(name)).items():
        torch.testing.assert_close(out, ref[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.skipif("SiglipModel" not in AVAILABLE, reason="this transformers has no SigLIP")
def test_one_tower_alone_prunes_and_keeps_the_other_whole(tmp_path):
    """MaskedDoRAConfig(stacks=("text",)) prunes the text tower alone: SigLIP's vision tower (whose pooling head
    has no key of its own) keeps its sizes, so the checkpoint is plain; stacks=("vision",) prunes the images'."""
    model, ref, small = _chain("SiglipModel", ("mlp",), str(tmp_path), stacks=("text",))
    assert get_state(model).save_form == "plain" and not hasattr(small.config, LAYER_SIZES_KEY)
    assert small.config.text_config.intermediate_size == 32 and small.config.vision_config.intermediate_size == 48
    (out,) = reload_plain_in_clean_process([(str(tmp_path), "SiglipModel")])
    torch.testing.assert_close(out, ref["logits_per_image"], rtol=1e-4, atol=1e-5)
    model, _, small = _chain("SiglipModel", ("mlp",), str(tmp_path / "vision"), stacks=("vision",))
    assert sorted(get_state(model).groups) == ["mlp_2", "mlp_3"]
    assert small.text_model.encoder.layers[0].mlp.fc1.out_features == 64
    assert small.vision_model.encoder.layers[0].mlp.fc1.out_features == 24


@pytest.mark.skipif("Siglip2Model" not in AVAILABLE, reason="this transformers has no SigLIP 2")
def test_siglip2_vision_tower_alone_prunes_and_keeps_its_pooling_head(tmp_path):
    """Siglip2VisionModel (pre-patchified pixel_values with their mask and grid): its encoder's MLP and heads prune;
    its pooling head keeps its MLP (per-layer form); equal pooled outputs after load_compact."""
    torch.manual_seed(0)
    model = transformers.Siglip2VisionModel(transformers.Siglip2VisionConfig(**TOWERS["Siglip2Model"][1])).eval()
    inputs = {k: v for k, v in _inputs("Siglip2Model").items() if k != "input_ids"}
    with pytest.warns(UserWarning, match="per-layer form"):
        prepare_model(model, MaskedDoRAConfig(target_groups=("mlp", "heads"), **PRUNE))
    randomize_adapters(model)
    harden(model)
    with torch.no_grad():
        ref = model(**inputs).pooler_output
        small = compact_model(model)
        torch.testing.assert_close(small(**inputs).pooler_output, ref, rtol=1e-4, atol=1e-5)
    small.save_pretrained(str(tmp_path))
    reloaded = load_compact(str(tmp_path))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).pooler_output, ref, rtol=1e-4, atol=1e-5)
    vision = getattr(reloaded, "vision_model", reloaded)
    layer = vision.encoder.layers[0]
    assert (layer.mlp.fc1.out_features, layer.self_attn.q_proj.out_features, vision.head.mlp.fc1.out_features) == (
        24, 16, 48)

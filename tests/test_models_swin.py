"""Hierarchical image encoders pruned stage by stage: Swin, Swin V2, Donut's and MaskFormer's Swin
(masked_dora/models/stage_spec.py, the specs in families_vision_speech.py). Each stage is a stack of its own width and
head count (embed_dim doubling, num_heads per stage): its blocks' MLP channels and heads prune as its own groups, each
block's per-head position parameters (bias table column, Swin V2's logit scale and position-bias MLP rows) cut with its
heads, and the compacted model equals the masked one, saved in the per-layer form and reloaded with load_compact."""

from __future__ import annotations

import pytest
import torch
import transformers

from masked_dora.models import (MaskedDoRAConfig, ModelSpec, StagesSpec, compact_model, get_state, harden,
                                load_compact, prepare_model, register_spec, spec_for)
from masked_dora.models.compact import LAYER_SIZES_KEY
from masked_dora.models.stage_spec import StageConfig

from stage_chain import PRUNE, compact_equal, images, one_stage_round_trip, rel_err
from tiny_models import output_tensor, randomize_adapters

# 32 x 32 images in patches of 4: stage 0 has 8 x 8 tokens in windows of 4 (its odd blocks shifted, with the shift
# mask), stage 1 4 x 4; widths 16 and 32, 2 and 4 heads of 8, MLPs 64 and 128
TINY = dict(image_size=32, patch_size=4, num_channels=3, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4,
            mlp_ratio=4.0, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, drop_path_rate=0.0, num_labels=3)
# model type -> (config class, model classes: an image classifier where the family has one, the bare encoder)
FAMILIES = {"swin": ("SwinConfig", ("SwinForImageClassification", "SwinModel")),
            "swinv2": ("Swinv2Config", ("Swinv2ForImageClassification", "Swinv2Model")),
            "donut-swin": ("DonutSwinConfig", ("DonutSwinModel",)),
            "maskformer-swin": ("MaskFormerSwinConfig", ("MaskFormerSwinModel",))}
CASES = [(t, head) for t, (config, heads) in FAMILIES.items() for head in heads
         if hasattr(transformers, config) and hasattr(transformers, head)]
# per-head parameters of a block (name suffix -> the dim holding one entry per head)
PER_HEAD = {"relative_position_bias_table": 1, "logit_scale": 0, "continuous_position_bias_mlp.2.weight": 0}


def _model(model_type: str, head: str, **overrides):
    """``head`` of the tiny config of ``model_type``, its per-head position parameters random (Swin's bias tables
    start at zeros: a wrong kept column would go unseen)."""
    config = getattr(transformers, FAMILIES[model_type][0])(**{**TINY, **overrides})
    torch.manual_seed(0)
    model = getattr(transformers, head)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(name.endswith(suffix) for suffix in PER_HEAD):
                p.add_(torch.randn_like(p))
    return model


@pytest.mark.parametrize("model_type, head", CASES)
def test_swin_stages_prune_compact_and_reload_equal(model_type, head, tmp_path):
    """prepare (MLP and heads) -> a training step -> harden -> compact: per-stage groups keep half of each stage's
    MLP and heads, the per-head position parameters are cut with their heads, and the compacted model's outputs (the
    classification logits, or last_hidden_state) equal the masked model's; saved per layer, load_compact reloads
    it equal."""
    model = _model(model_type, head)
    spec = spec_for(model)
    assert [s.stack for s in (spec,) + spec.stacks] == ["stage0", "stage1"]
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp", "heads"), **PRUNE))
    state = get_state(model)
    assert sorted(state.groups) == [f"{kind}_{i}" for kind in ("heads", "mlp") for i in range(4)]
    assert [state.groups[f"heads_{i}"].mask_logits.numel() for i in range(4)] == [2, 2, 4, 4]  # one per head
    ref, small = compact_equal(model)
    sizes = getattr(small.config, LAYER_SIZES_KEY)
    assert [(s["intermediate"], s["heads"], s["head_dim"]) for s in sizes] == [(32, 1, 8)] * 2 + [(64, 2, 8)] * 2
    assert small.config.num_heads == [2, 4] and small.config.embed_dim == 16  # the config's own, as built
    per_head = [(name, p.shape[dim]) for name, p in small.named_parameters()
                for suffix, dim in PER_HEAD.items() if name.endswith(suffix)]
    assert per_head and all(n == (1 if ".layers.0." in name else 2) for name, n in per_head), per_head
    small.save_pretrained(str(tmp_path))
    with torch.no_grad():
        reloaded = output_tensor(load_compact(str(tmp_path))(**images()))
    assert rel_err(reloaded, ref) < 1e-5


@pytest.mark.skipif(not hasattr(transformers, "SwinForImageClassification"), reason="this transformers has no Swin")
def test_one_stage_prunes_alone_and_its_training_state_reloads(tmp_path):
    """MaskedDoRAConfig(stacks=("stage1",)) prunes the second stage alone (its groups keep their block numbers across
    stages); a saved training state reloads into a fresh model to the same outputs, and it compacts equal, stage 0
    kept whole."""
    small = one_stage_round_trip(_model("swin", "SwinForImageClassification"),
                                 _model("swin", "SwinForImageClassification"), tmp_path,
                                 ["heads_2", "heads_3", "mlp_2", "mlp_3"])
    sizes = getattr(small.config, LAYER_SIZES_KEY)
    # stage 0 whole (64 channels, 2 heads); stage 1 half of its 128 channels and 4 heads
    assert [(s["intermediate"], s["heads"]) for s in sizes] == [(64, 2), (64, 2), (64, 2), (64, 2)]


@pytest.mark.parametrize("model_type", [t for t in FAMILIES if hasattr(transformers, FAMILIES[t][0])])
def test_swin_with_nothing_pruned_saves_plain_keeping_each_stage_s_heads(model_type, tmp_path):
    """A plain checkpoint writes each stage's head count into its own entry of num_heads (StageConfig): with every
    unit kept, the config keeps [2, 4, 4] (one count per key would say one stage's for all), and from_pretrained
    loads it equal, without masked_dora's per-layer sizes."""
    head = FAMILIES[model_type][1][-1]
    model = _model(model_type, head, depths=[1, 1, 1], num_heads=[2, 4, 4], image_size=64)  # (stage 2: 4 x 4)
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp", "heads"), **dict(PRUNE, target_sparsity=0.0)))
    assert get_state(model).save_form == "plain"
    harden(model)
    inputs = images(size=64)
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        small = compact_model(model)
    assert not hasattr(small.config, LAYER_SIZES_KEY) and small.config.num_heads == [2, 4, 4]
    small.save_pretrained(str(tmp_path))
    with torch.no_grad():
        out = output_tensor(getattr(transformers, head).from_pretrained(str(tmp_path)).eval()(**inputs))
    assert rel_err(out, ref) < 1e-5


@pytest.mark.skipif(not hasattr(transformers, "SwinModel"), reason="this transformers has no Swin")
def test_swin_stage_configs_read_and_write_their_own_entries():
    """Each stage reads its own head count and width (embed_dim doubled per stage, head size width / heads); setting
    a stage's count writes its entry alone; its width cannot be set; hidden pruning is refused before anything
    changes (patch merging between stages reads the widths)."""
    from masked_dora.models.blocks import head_layout

    model = _model("swin", "SwinModel", depths=[1, 1, 1], num_heads=[2, 4, 8], image_size=64)
    spec = spec_for(model)
    stages = (spec,) + spec.stacks
    assert [s.stack for s in stages] == ["stage0", "stage1", "stage2"] and spec_for(model) is spec
    assert [(h.heads, h.head_dim) for h in (head_layout(model.config, s) for s in stages)] == [(2, 8), (4, 8), (8, 8)]
    view = stages[1].sized_config(model.config)
    assert isinstance(view, StageConfig) and view.embed_dim == 32 and view.num_heads == 4
    view.num_heads = 3
    assert model.config.num_heads == [2, 3, 8]
    with pytest.raises(ValueError, match="embed_dim: the width of stage 1"):
        view.embed_dim = 24
    with pytest.raises(ValueError, match="'hidden' cannot be pruned in a 'swin' model"):
        prepare_model(model, MaskedDoRAConfig(target_groups=("hidden",), **PRUNE))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())


@pytest.mark.skipif(not hasattr(transformers, "SwinModel"), reason="this transformers has no Swin")
def test_a_swin_of_an_unknown_model_type_is_told_to_register_like_swin(monkeypatch):
    """A model of an unregistered type laid out as Swin: the error names register_spec(..., like='swin') (the block
    list of a spec with stages is per stage, which matching_specs read as one list and so matched nothing), and the
    registration prunes it stage by stage."""
    import masked_dora.models.specs as specs_module

    monkeypatch.setattr(specs_module, "SPECS", dict(specs_module.SPECS))  # (the registration ends with the test)
    model = _model("swin", "SwinModel")
    model.config.model_type = "my-swin"
    with pytest.raises(ValueError, match=r"register_spec\('my-swin', like='swin'\)"):
        spec_for(model)
    register_spec("my-swin", like="swin")
    spec = spec_for(model)
    assert [s.stack for s in (spec,) + spec.stacks] == ["stage0", "stage1"]


@pytest.mark.skipif(not hasattr(transformers, "SwinModel"), reason="this transformers has no Swin")
def test_magnitude_importance_ranks_units_of_stages_of_different_widths_alike():
    """The magnitude score of a unit is its share of each member's norm relative to the member's mean unit, so every
    block's units average one per member whatever its width, and allocation='global' (the default importance,
    magnitude) spreads the cut over the stages: each keeps a quarter to three quarters of its MLP channels. (Divided
    by the member's total, a stage twice as wide scored half as much per unit: the last stage lost 7/8 of its
    channels and heads, the first two kept everything.)"""
    from masked_dora.models.importance import importance_scores

    model = _model("swin", "SwinModel", depths=[2, 2, 2], num_heads=[2, 4, 8], image_size=64)
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp", "heads"), **dict(PRUNE, importance="magnitude"),
                                          allocation="global"))
    scores = importance_scores(model, "magnitude")
    members = {"mlp": 2, "heads": 4}  # fc1 rows and fc2 columns; q, k, v rows and o_proj columns
    assert all(abs(float(s.mean()) - members[key.split("_")[0]]) < 1e-9 for key, s in scores.items()), scores
    harden(model)
    state = get_state(model)
    kept = [float(state.groups[f"mlp_{i}"].hard().float().mean()) for i in range(6)]
    assert all(0.25 <= k <= 0.75 for k in kept), kept


def test_stages_spec_bad_layouts_are_refused():
    """A stage block list without its stage number, a growth below 1, and a spec with stages and stacks of its own
    (stages make the stacks) are refused where they are declared."""
    with pytest.raises(ValueError, match="StagesSpec.layers: expected a block list path with '{stage}'"):
        StagesSpec(layers="encoder.layers", count_key="depths")
    with pytest.raises(ValueError, match="StagesSpec.width_growth"):
        StagesSpec(layers="encoder.layers.{stage}.blocks", count_key="depths", width_growth=0)
    swin = spec_for(transformers.SwinConfig()) if hasattr(transformers, "SwinConfig") else None
    if swin is not None:
        from dataclasses import replace

        with pytest.raises(ValueError, match="a spec with stages gets one stack per stage"):
            ModelSpec(**{**{f: getattr(swin, f) for f in ("name", "model_types", "layers", "hidden_key", "mlp",
                                                          "heads")},
                         "stages": replace(swin.stages, index=-1), "stacks": (swin.stacks[0],)})


@pytest.mark.parametrize("model_type, backbone", [(t, b) for t, b in (("swin", "SwinBackbone"),
                                                                      ("swinv2", "Swinv2Backbone"))
                                                  if hasattr(transformers, b)])
def test_swin_backbones_prune_with_equal_feature_maps(model_type, backbone):
    """The backbones of detection and segmentation heads: every stage's feature map (read at the stage's width,
    which block pruning keeps, through its own norm) equals the masked model's after compaction."""
    model = _model(model_type, backbone, out_features=["stage1", "stage2"])
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp", "heads"), **PRUNE))
    randomize_adapters(model)
    harden(model)
    inputs = images()
    with torch.no_grad():
        ref = model(**inputs).feature_maps
        out = compact_model(model)(**inputs).feature_maps
    assert [tuple(f.shape[:2]) for f in ref] == [(2, 16), (2, 32)]
    assert all(rel_err(o, r) < 1e-5 for o, r in zip(out, ref))


@pytest.mark.skipif(not hasattr(transformers, "Swinv2ForImageClassification"),
                    reason="this transformers has no Swin V2")
def test_swinv2_compacts_for_training_then_compacts_equal():
    """compact_for_training drops the hardened units in place (each stage's blocks and per-head parameters: logit
    scales, position-bias MLP rows) and the model still computes the masked one; compact_model after it too."""
    from masked_dora.models import compact_for_training

    model = _model("swinv2", "Swinv2ForImageClassification")
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp", "heads"), **PRUNE))
    randomize_adapters(model)
    harden(model)
    inputs = images()
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        compact_for_training(model)
        assert rel_err(output_tensor(model(**inputs)), ref) < 1e-5
        assert rel_err(output_tensor(compact_model(model)(**inputs)), ref) < 1e-5
    scales = [m.logit_scale.shape[0] for m in model.modules() if hasattr(m, "logit_scale")]
    assert scales == [1, 1, 2, 2]

"""SegFormer, PVT and PVT v2, hierarchical encoders pruned stage by stage (StagesSpec with a width per stage,
``widths_key="hidden_sizes"``), their Mix-FFN's depthwise convolution cut with the MLP channels
(``MLPSpec.depthwise``; PVT v1's MLP has none): prepare -> train -> harden -> compact gives the masked model's
logits, saved in the per-layer form and reloaded with load_compact; one stage alone; the training state round trip;
PVT v2's heads refused (its attention reshapes to the full width)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import transformers
from torch import nn

from masked_dora.models import (MaskedDoRAConfig, MLPSpec, StagesSpec, compact_for_training, compact_model, get_state,
                                harden, load_compact, load_training_state, prepare_model, save_training_state,
                                spec_for)
from masked_dora.models.compact import LAYER_SIZES_KEY
from masked_dora.models.families import SPECS
from masked_dora.models.stage_spec import StageConfig

from stage_chain import PRUNE, compact_equal, images, one_stage_round_trip, rel_err
from tiny_models import output_tensor, randomize_adapters

# 32 x 32 images: stage 0 embeds 7 x 7 patches at stride 4 (8 x 8 tokens, keys and values reduced 2 x 2 by its
# strided convolution), stage 1 3 x 3 at stride 2 (4 x 4 tokens); widths 16 and 32, 2 and 4 heads of 8, MLPs 64 and 128
TINY = dict(num_encoder_blocks=2, depths=[1, 2], hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2],
            num_attention_heads=[2, 4], mlp_ratios=[4, 4], num_labels=3, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, drop_path_rate=0.0)
# (PVT v1: its patch embeddings are a strided convolution of kernel patch_sizes, its position embeddings sized for
# image_size, interpolated to the tokens)
EXTRA = {"segformer": dict(sr_ratios=[2, 1], decoder_hidden_size=32, classifier_dropout_prob=0.0),
         "pvt_v2": dict(sr_ratios=[2, 1]),
         "pvt": dict(sequence_reduction_ratios=[2, 1], image_size=32, patch_sizes=[4, 2])}
# model type -> (config class, model classes: the task models and the bare encoder)
FAMILIES = {"segformer": ("SegformerConfig", ("SegformerForSemanticSegmentation", "SegformerForImageClassification",
                                              "SegformerModel")),
            "pvt_v2": ("PvtV2Config", ("PvtV2ForImageClassification", "PvtV2Model")),
            "pvt": ("PvtConfig", ("PvtForImageClassification", "PvtModel"))}
CASES = [(t, head) for t, (config, heads) in FAMILIES.items() for head in heads
         if hasattr(transformers, config) and hasattr(transformers, head)]
# the groups each family prunes (PVT v2's heads are refused)
TARGETS = {"segformer": ("mlp", "heads"), "pvt_v2": ("mlp",), "pvt": ("mlp", "heads")}
HAS_SEGFORMER = hasattr(transformers, "SegformerForSemanticSegmentation")


def _model(model_type: str, head: str, **overrides):
    """``head`` of the tiny config of ``model_type``, its linear and convolution layers at PyTorch's default
    initialisation (transformers' std 0.02 leaves the blocks' branches too small beside the residual stream for a
    wrong channel or filter to show in the logits)."""
    config = getattr(transformers, FAMILIES[model_type][0])(**{**TINY, **EXTRA[model_type], **overrides})
    torch.manual_seed(0)
    model = getattr(transformers, head)(config).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.reset_parameters()
    return model


def _dwconvs(model) -> list:
    return [m for name, m in model.named_modules() if name.endswith("dwconv.dwconv")]


@pytest.mark.parametrize("model_type, head", CASES)
def test_stages_prune_compact_and_reload_equal(model_type, head, tmp_path):
    """prepare -> a training step -> harden -> compact: per-stage groups keep half of each stage's MLP (and
    SegFormer's heads), each Mix-FFN's depthwise convolution is cut to the kept channels, and the compacted model's
    outputs (segmentation or class logits, last_hidden_state) equal the masked model's, which pruning changed;
    saved per layer, load_compact reloads it equal."""
    model = _model(model_type, head)
    with torch.no_grad():
        full = output_tensor(model(**images()))
    spec = spec_for(model)
    assert [s.stack for s in (spec,) + spec.stacks] == ["stage0", "stage1"]
    targets = TARGETS[model_type]
    prepare_model(model, MaskedDoRAConfig(target_groups=targets, **PRUNE))
    state = get_state(model)
    assert sorted(state.groups) == [f"{kind}_{i}" for kind in sorted(targets) for i in range(3)]
    assert [state.groups[f"mlp_{i}"].mask_logits.numel() for i in range(3)] == [64, 128, 128]
    ref, small = compact_equal(model)
    assert rel_err(ref, full) > 1e-2  # (pruning and the adapters changed the model)
    sizes = getattr(small.config, LAYER_SIZES_KEY)
    heads = [1, 2, 2] if "heads" in targets else [2, 4, 4]
    assert [(s["intermediate"], s["heads"], s["head_dim"]) for s in sizes] == list(zip([32, 64, 64], heads, [8] * 3))
    kept = [(c.weight.shape[0], c.bias.shape[0], c.groups) for c in _dwconvs(small)]
    assert kept == ([] if model_type == "pvt" else [(n, n, n) for n in (32, 64, 64)])  # (PVT v1: a plain MLP)
    assert small.config.hidden_sizes == [16, 32] and small.config.num_attention_heads == [2, 4]  # as built
    small.save_pretrained(str(tmp_path))
    with torch.no_grad():
        reloaded = output_tensor(load_compact(str(tmp_path))(**images()))
    assert rel_err(reloaded, ref) < 1e-5


@pytest.mark.skipif(not HAS_SEGFORMER, reason="this transformers has no SegFormer")
def test_one_stage_prunes_alone_and_its_training_state_reloads(tmp_path):
    """MaskedDoRAConfig(stacks=("stage1",)) prunes the second stage alone (its groups keep their block numbers);
    a saved training state reloads into a fresh model to the same outputs, and it compacts equal, stage 0 whole."""
    small = one_stage_round_trip(_model("segformer", "SegformerForSemanticSegmentation"),
                                 _model("segformer", "SegformerForSemanticSegmentation"), tmp_path,
                                 ["heads_1", "heads_2", "mlp_1", "mlp_2"])
    sizes = getattr(small.config, LAYER_SIZES_KEY)
    assert [(s["intermediate"], s["heads"]) for s in sizes] == [(64, 2), (64, 2), (64, 2)]
    assert [c.groups for c in _dwconvs(small)] == [64, 64, 64]


@pytest.mark.parametrize("model_type, head", [c for c in CASES if c[1].endswith("ForImageClassification")])
def test_compact_for_training_cuts_the_depthwise_convolutions_then_compacts_equal(model_type, head, tmp_path):
    """compact_for_training drops the hardened channels (and heads) in place, each depthwise convolution's filters,
    biases and groups with them (PVT v1 has none), and the model still computes the masked one; its training state
    reloads compacted into a fresh model, and compact_model after it gives the same logits."""
    model = _model(model_type, head)
    fresh = _model(model_type, head)
    prepare_model(model, MaskedDoRAConfig(target_groups=TARGETS[model_type], **PRUNE))
    randomize_adapters(model)
    harden(model)
    inputs = images()
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        compact_for_training(model)
        assert rel_err(output_tensor(model(**inputs)), ref) < 1e-5
    kept = [(c.weight.shape[0], c.in_channels, c.groups) for c in _dwconvs(model)]
    assert kept == ([] if model_type == "pvt" else [(n, n, n) for n in (32, 64, 64)])
    save_training_state(model, str(tmp_path))
    load_training_state(fresh, str(tmp_path))
    with torch.no_grad():
        assert rel_err(output_tensor(fresh(**inputs)), ref) < 1e-5
        assert rel_err(output_tensor(compact_model(model)(**inputs)), ref) < 1e-5


@pytest.mark.skipif(not hasattr(transformers, "PvtV2Backbone"), reason="this transformers has no PVT v2")
def test_pvt_v2_backbone_prunes_with_equal_feature_maps():
    """PVT v2's backbone (of detection and segmentation heads): each stage's feature map, read at the stage's
    width, which block pruning keeps, equals the masked model's after compaction."""
    model = _model("pvt_v2", "PvtV2Backbone", out_features=["stage1", "stage2"])
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), **PRUNE))
    randomize_adapters(model)
    harden(model)
    inputs = images()
    with torch.no_grad():
        ref = model(**inputs).feature_maps
        out = compact_model(model)(**inputs).feature_maps
    assert [tuple(f.shape[:2]) for f in ref] == [(2, 16), (2, 32)]
    assert all(rel_err(o, r) < 1e-5 for o, r in zip(out, ref))


@pytest.mark.skipif(not hasattr(transformers, "PvtV2Model"), reason="this transformers has no PVT v2")
def test_pvt_v2_linear_attention_prunes_its_mlp_equal():
    """PVT v2 with linear_attention (the keys and values pooled to 7 x 7, a ReLU before the Mix-FFN's convolution,
    which maps 0 to 0): the MLP channels prune and compact to the masked model's logits."""
    model = _model("pvt_v2", "PvtV2ForImageClassification", linear_attention=True)
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), **PRUNE))
    _, small = compact_equal(model, train=False)
    assert [c.groups for c in _dwconvs(small)] == [32, 64, 64]


@pytest.mark.parametrize("model_type", [t for t in FAMILIES if hasattr(transformers, FAMILIES[t][0])])
def test_nothing_pruned_saves_plain(model_type, tmp_path):
    """With every unit kept, the compacted model is a plain checkpoint (its config's per-stage lists as built) that
    from_pretrained loads equal."""
    head = FAMILIES[model_type][1][0]
    model = _model(model_type, head)
    prepare_model(model, MaskedDoRAConfig(target_groups=TARGETS[model_type], **dict(PRUNE, target_sparsity=0.0)))
    assert get_state(model).save_form == "plain"
    harden(model)
    inputs = images()
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        small = compact_model(model)
    assert not hasattr(small.config, LAYER_SIZES_KEY) and small.config.num_attention_heads == [2, 4]
    small.save_pretrained(str(tmp_path))
    with torch.no_grad():
        out = output_tensor(getattr(transformers, head).from_pretrained(str(tmp_path)).eval()(**inputs))
    assert rel_err(out, ref) < 1e-5


@pytest.mark.skipif(not HAS_SEGFORMER, reason="this transformers has no SegFormer")
def test_stage_configs_read_their_own_width_and_heads():
    """Each stage reads its own width from hidden_sizes (widths_key) and its head count (head size width / heads);
    setting a stage's head count writes its entry alone; its width cannot be set; hidden pruning is refused before
    anything changes."""
    from masked_dora.models.blocks import head_layout

    model = _model("segformer", "SegformerModel", hidden_sizes=[16, 48], num_attention_heads=[2, 3])
    spec = spec_for(model)
    stages = (spec,) + spec.stacks
    assert [(h.heads, h.head_dim) for h in (head_layout(model.config, s) for s in stages)] == [(2, 8), (3, 16)]
    view = stages[1].sized_config(model.config)
    assert isinstance(view, StageConfig) and view.hidden_sizes == 48 and view.num_attention_heads == 3
    view.num_attention_heads = 1
    assert model.config.num_attention_heads == [2, 1]
    with pytest.raises(ValueError, match="hidden_sizes: the width of stage 1"):
        view.hidden_sizes = 24
    with pytest.raises(ValueError, match="'hidden' cannot be pruned in a 'segformer' model"):
        prepare_model(model, MaskedDoRAConfig(target_groups=("hidden",), **PRUNE))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())


@pytest.mark.skipif(not hasattr(transformers, "PvtV2Model"), reason="this transformers has no PVT v2")
def test_pvt_v2_heads_are_refused_before_anything_changes():
    """PVT v2's attention reshapes its heads' output to the full width: pruning its heads is refused by name, with
    the reason, and nothing is wrapped."""
    model = _model("pvt_v2", "PvtV2Model")
    with pytest.raises(ValueError, match="'heads' cannot be pruned in a 'pvt_v2' model: its attention reshapes"):
        prepare_model(model, MaskedDoRAConfig(target_groups=("mlp", "heads"), **PRUNE))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())


@pytest.mark.skipif(not HAS_SEGFORMER, reason="this transformers has no SegFormer")
def test_a_depthwise_path_at_another_module_is_refused_before_anything_changes(monkeypatch):
    """MLPSpec.depthwise must name convolutions with one filter per MLP channel: a spec naming the attention's
    spatial reduction (a full convolution over the stage's width) is refused by prepare_model, nothing wrapped."""
    seg = SPECS["segformer"]
    bad = replace(seg, mlp=replace(seg.mlp, depthwise=("attention.sequence_reduction.sequence_reduction",)))
    monkeypatch.setitem(SPECS, "segformer", bad)
    model = _model("segformer", "SegformerModel")
    with pytest.raises(ValueError, match=r"stages\.0\.blocks\.0\.attention\.sequence_reduction\.sequence_reduction "
                                         r"should be a depthwise convolution over the MLP's 64 channels"):
        prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), **PRUNE))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())


def test_depthwise_and_per_stage_widths_bad_specs_are_refused():
    """A depthwise convolution without the consumer's input gated (its bias would reach the consumer from a pruned
    channel), or in an MoE MLP; a stage width read from both width_key and widths_key, or widths_key also a
    per-stage key (written): refused where they are declared."""
    with pytest.raises(ValueError, match="need gate_consumer_input=True"):
        MLPSpec(producers=("fc1",), consumer="fc2", size_key="", depthwise=("dwconv",))
    with pytest.raises(ValueError, match="depthwise convolutions"):
        MLPSpec(producers=("gate_up",), consumer="down", size_key="", depthwise=("dwconv",), segments=(2,),
                gate_consumer_input=True)
    with pytest.raises(ValueError, match="from width_key .* or from widths_key"):
        StagesSpec(layers="s.{stage}.blocks", count_key="depths", width_key="embed_dim", widths_key="hidden_sizes")
    with pytest.raises(ValueError, match="widths_key 'hidden_sizes' cannot also be a per_stage_keys entry"):
        StagesSpec(layers="s.{stage}.blocks", count_key="depths", widths_key="hidden_sizes",
                   per_stage_keys=("hidden_sizes",))


@pytest.mark.skipif(not HAS_SEGFORMER, reason="this transformers has no SegFormer")
def test_peft_export_of_pruned_mix_ffn_channels_is_refused_naming_the_convolution(tmp_path):
    """A pruned Mix-FFN channel is cut at fc2's input (the depthwise convolution's bias makes it non-zero), which a
    PEFT DoRA adapter cannot express: export_peft refuses, naming the convolution, and writes nothing."""
    from masked_dora.models import export_peft

    model = _model("segformer", "SegformerForImageClassification")
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), **PRUNE))
    harden(model)
    with pytest.raises(NotImplementedError, match="MLP runs a depthwise convolution between its layers, whose bias "
                                                  "makes a gated channel non-zero, so its pruned channels are cut at "
                                                  r"the input of segformer\.stages\.0\.blocks\.0\.mlp\.fc2"):
        export_peft(model, str(tmp_path))
    assert not any(tmp_path.iterdir())

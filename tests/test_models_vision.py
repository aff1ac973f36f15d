"""Image encoders with a relative-position bias per head (BEiT, data2vec-vision) beyond the family chain
(tests/test_models_families.py runs each of tests/tiny_families_vision.py through prepare -> train -> compact -> save
-> reload): a bias table shared by every block refuses heads (the MLP still prunes), and the task heads besides
image classification (masked image modelling, semantic segmentation over four blocks' outputs) prune their encoder."""

from __future__ import annotations

import pytest
import torch
import transformers

from masked_dora.models import MaskedDoRAConfig, compact_model, harden, load_compact, prepare_model, spec_for

from tiny_family_table import AVAILABLE
from tiny_models import output_tensor, randomize_adapters, tiny_inputs

PRUNE = dict(rank=2, alignment={"mlp": 8}, importance="none", target_sparsity=0.5)
BEIT_LIKE = [f for f in ("beit", "data2vec-vision") if f in AVAILABLE]


def _model(family: str, head: str, **overrides):
    """``head`` (a transformers class name) of the tiny ``family``'s config with ``overrides``, its relative-position
    bias tables random (they start at zeros: a wrong kept column would go unseen)."""
    config = getattr(transformers, AVAILABLE[family].classes[0])(**{**AVAILABLE[family].config, **overrides})
    torch.manual_seed(0)
    model = getattr(transformers, head)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.uniform_(-1.0, 1.0)
    return model


def _compact_equal(model, family: str, groups):
    """prepare (``groups``) -> random adapters -> harden -> compact: equal outputs; returns (reference, compacted)."""
    prepare_model(model, MaskedDoRAConfig(target_groups=groups, **PRUNE))
    randomize_adapters(model)
    harden(model)
    inputs = tiny_inputs(family=family)
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        small = compact_model(model)
        torch.testing.assert_close(output_tensor(small(**inputs)), ref, rtol=1e-4, atol=1e-5)
    return ref, small


@pytest.mark.parametrize("family", BEIT_LIKE)
def test_shared_relative_position_bias_refuses_heads(family):
    """use_shared_relative_position_bias (BEiT's pre-training checkpoints): one table of num_attention_heads columns
    is added to every block's attention scores, so heads are refused before anything changes, naming the flag; the
    MLP alone prunes exactly."""
    head = AVAILABLE[family].classes[2]
    shared = dict(use_shared_relative_position_bias=True, use_relative_position_bias=False)
    model = _model(family, head, **shared)
    with pytest.raises(ValueError, match="'heads' cannot be pruned in a .*use_shared_relative_position_bias: one "
                                         "relative-position bias table"):
        prepare_model(model, MaskedDoRAConfig(target_groups=("mlp", "heads"), **PRUNE))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())
    _ref, small = _compact_equal(_model(family, head, **shared), family, ("mlp",))
    assert small.config.intermediate_size == 32


@pytest.mark.parametrize("family, head", [(f, head) for f, head in (
    ("beit", "BeitForMaskedImageModeling"), ("beit", "BeitForSemanticSegmentation"),
    ("data2vec-vision", "Data2VecVisionForSemanticSegmentation")) if f in AVAILABLE and hasattr(transformers, head)])
def test_beit_task_heads_prune_their_encoder(family, head, tmp_path):
    """BEiT's masked-image-modelling head (a vocabulary of 97 visual tokens) and the semantic-segmentation heads
    (UperNet and FCN over the outputs of blocks 1-4, read at the hidden size, which block pruning keeps): heads and
    MLP prune, each block's bias table cut to its kept heads; equal outputs after compaction and load_compact."""
    model = _model(family, head, num_hidden_layers=4, out_indices=[1, 2, 3, 4], vocab_size=97, pool_scales=[1, 2],
                   hidden_size=32, auxiliary_channels=8)
    ref, small = _compact_equal(model, family, ("mlp", "heads"))
    encoder = getattr(small, small.base_model_prefix)
    blocks = encoder.layers if hasattr(encoder, "layers") else encoder.encoder.layer
    tables = [m.relative_position_bias_table for m in blocks.modules() if hasattr(m, "relative_position_bias_table")]
    assert len(tables) == 4 and all(t.shape[1] == 2 for t in tables)
    small.save_pretrained(str(tmp_path))
    with torch.no_grad():
        out = output_tensor(load_compact(str(tmp_path))(**tiny_inputs(family=family)))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


# model type -> (config class, what the refusal names); Swin (V1, V2, Donut's) prunes stage by stage
# (tests/test_models_swin.py), SegFormer and PVT (V1, V2) too (tests/test_models_segformer.py)
HIERARCHICAL = {"hiera": ("HieraConfig", "fused qkv"), "levit": ("LevitConfig", "BatchNorm")}


# model type -> (config class, what the refusal names): the ConvNeXt encoders, with no attention in their blocks
CONVOLUTIONAL = {"convnext": ("ConvNextConfig", "read a head count for every block"),
                 "convnextv2": ("ConvNextV2Config", "Global Response Norm .* mean of every channel")}


@pytest.mark.parametrize("model_type", sorted(CONVOLUTIONAL))
def test_convolutional_image_encoders_are_refused_naming_the_reason(model_type):
    """ConvNeXt (no attention, a head count the specs need) and ConvNeXt V2 (its GRN's mean over the MLP's
    channels): spec_for and prepare_model say why before anything changes."""
    config_class, why = CONVOLUTIONAL[model_type]
    if not hasattr(transformers, config_class):
        pytest.skip(f"this transformers has no {config_class}")
    config = getattr(transformers, config_class)(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
    assert config.model_type == model_type
    with pytest.raises(ValueError, match=rf"masked_dora cannot prune a '{model_type}' model exactly: .*{why}"):
        spec_for(config)
    model = getattr(transformers, config_class.replace("Config", "Model"))(config)
    with pytest.raises(ValueError, match=rf"masked_dora cannot prune a '{model_type}' model exactly: .*{why}"):
        prepare_model(model, MaskedDoRAConfig(target_groups=("mlp",), importance="none"))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())


@pytest.mark.parametrize("model_type", sorted(HIERARCHICAL))
def test_hierarchical_image_encoders_are_refused_naming_the_reason(model_type):
    """Hiera, LeViT: stages of different widths and head counts, given per stage in their configs, with blocks no
    spec describes (Hiera's fused qkv and query pooling, LeViT's attention): spec_for and prepare_model say why, not
    "no spec", before anything changes."""
    config_class, why = HIERARCHICAL[model_type]
    if not hasattr(transformers, config_class):
        pytest.skip(f"this transformers has no {config_class}")
    config = getattr(transformers, config_class)()
    assert config.model_type == model_type
    with pytest.raises(ValueError, match=rf"masked_dora cannot prune a '{model_type}' model exactly: a hierarchical "
                                         rf"encoder.*{why}"):
        spec_for(config)
    if model_type == "levit":  # a model too: refused before any layer is wrapped
        model = transformers.LevitForImageClassification(transformers.LevitConfig(
            image_size=32, hidden_sizes=[16, 32], num_attention_heads=[1, 2], depths=[1, 1], key_dim=[8, 8],
            mlp_ratio=[2, 2], attention_ratio=[2, 2], down_ops=[["Subsample", 8, 1, 2, 2, 2]], num_labels=2))
        with pytest.raises(ValueError, match="cannot prune a 'levit' model exactly"):
            prepare_model(model, MaskedDoRAConfig(**PRUNE))
        assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())

"""Specs, MaskedDoRAConfig and prepare_model: groups, shared masks, freezing, clear errors."""

import warnings

import pytest
import torch
from torch import nn

from masked_dora.models import GroupMask, MaskedDoRAConfig, get_state, prepare_model, spec_for
from masked_dora.models.blocks import find_layers, head_layout
from masked_dora.nn import MaskedDoRALinear

from tiny_models import FAMILIES, kv_heads, output_tensor, prune_kwargs, tiny_inputs, tiny_model

SMALL = dict(rank=4, alignment={"mlp": 8}, importance="none")


@pytest.mark.parametrize("family", FAMILIES)
def test_spec_finds_layers_and_heads(family):
    model = tiny_model(family)
    spec = spec_for(model)
    _, layers = find_layers(model, spec)
    assert len(layers) == 2
    hl = head_layout(model.config, spec)
    assert (hl.heads, hl.head_dim) == (4, 8)
    assert hl.kv_heads == kv_heads(family)


def test_unknown_architecture_names_what_is_missing():
    from transformers import XLNetConfig, XLNetModel  # (GPT-J, the example before, has a spec now)

    model = XLNetModel(XLNetConfig(vocab_size=50, d_model=16, n_layer=1, n_head=2, d_inner=32))
    with pytest.raises(ValueError, match=r"no masked_dora spec for model_type 'xlnet'.*MLP producers"):
        prepare_model(model, MaskedDoRAConfig(**SMALL))
    with pytest.raises(TypeError, match="model_type"):
        spec_for(nn.Linear(2, 2))


@pytest.mark.parametrize("found", ["4.57.6", "5.16.1"])
def test_a_transformers_older_than_the_specs_is_named_before_the_model_changes(monkeypatch, found):
    """Under transformers 4.57 the specs failed deep inside ("no block list named like ['layers'] in ViTModel"),
    or StableLM's attention reshaped pruned heads wrong; setup.py said >= 4.45 and CI tested only 5.17 and later."""
    from masked_dora.models import specs

    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(specs, "_transformers_version", lambda: found)
    with pytest.raises(RuntimeError, match=rf"transformers {found} is installed; .*transformers >= 5\.17"):
        prepare_model(model, MaskedDoRAConfig(importance="none"))
    assert not any(isinstance(m, MaskedDoRALinear) for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="pip install 'transformers>=5.17'"):
        spec_for(model.config)
    monkeypatch.setattr(specs, "_transformers_version", lambda: "5.17.0")
    assert spec_for(model.config).name == "llama"


@pytest.mark.parametrize("family", FAMILIES)
def test_prepare_is_identity_with_every_unit_kept(family):
    model = tiny_model(family)
    inputs = tiny_inputs(family=family)
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
    prepare_model(model, MaskedDoRAConfig(**SMALL, **prune_kwargs(family)))
    assert not model.training  # new modules follow the model's mode
    with torch.no_grad():
        out = output_tensor(model(**inputs))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_prepare_wraps_members_shares_weights_and_freezes_the_rest():
    model = tiny_model("llama", kind="lm")
    q_weight = model.model.layers[0].self_attn.q_proj.weight
    prepare_model(model, MaskedDoRAConfig(**SMALL))
    block = model.model.layers[0]
    for m in (block.mlp.gate_proj, block.mlp.up_proj, block.mlp.down_proj, block.self_attn.q_proj,
              block.self_attn.k_proj, block.self_attn.v_proj, block.self_attn.o_proj):
        assert isinstance(m, MaskedDoRALinear)
    assert block.self_attn.q_proj.weight is q_weight  # shared, not copied
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable, "nothing to train"
    for name in trainable:
        assert name.endswith(("lora_A", "lora_B", "magnitude")) or name.startswith("masked_dora.groups"), name
    # one logit set per group; members' own logits are frozen
    assert "masked_dora.groups.mlp_0.mask_logits" in trainable
    assert not block.mlp.gate_proj.mask_logits.requires_grad
    assert not any("embed" in n or "norm" in n or "lm_head" in n for n in trainable)


def test_group_members_share_one_mask():
    model = tiny_model("llama")
    prepare_model(model, MaskedDoRAConfig(**SMALL))
    state = get_state(model)
    block = model.layers[1]
    g = state.group("mlp", 1)
    keep = torch.arange(64) % 3 != 0
    g.set_mask(keep)
    assert torch.equal(block.mlp.gate_proj.keep_mask(), keep)
    assert torch.equal(block.mlp.up_proj.keep_mask(), keep)
    assert block.mlp.down_proj.keep_mask().all()  # consumer: columns go at compaction
    # heads by KV group (GQA 4 q / 2 kv, head_dim 8): unit 1 = kv head 1 = q heads 2, 3
    h = state.group("heads", 1)
    assert h.num_units == 2
    h.set_mask(torch.tensor([True, False]))
    assert torch.equal(block.self_attn.q_proj.keep_mask(), torch.arange(32) < 16)
    assert torch.equal(block.self_attn.k_proj.keep_mask(), torch.arange(16) < 8)
    assert torch.equal(block.self_attn.v_proj.keep_mask(), torch.arange(16) < 8)
    with pytest.raises(RuntimeError, match="shared mask source"):
        block.mlp.gate_proj.set_mask(torch.ones(64, dtype=torch.bool))


def test_training_samples_once_per_forward_for_all_members():
    model = tiny_model("llama")
    prepare_model(model, MaskedDoRAConfig(**SMALL))
    model.train()
    block = model.layers[0]
    seen = {}

    def grab(name):
        def hook(module, args, out):
            seen[name] = module.gate_values().detach().clone()
        return hook

    block.mlp.gate_proj.register_forward_hook(grab("gate"))
    block.mlp.up_proj.register_forward_hook(grab("up"))
    model(**tiny_inputs())
    first = seen["gate"]
    assert torch.equal(seen["gate"], seen["up"])
    assert ((first > 0) & (first < 1)).any(), "expected a relaxed sample in training"
    model(**tiny_inputs())
    assert not torch.equal(seen["gate"], first), "a new forward must draw a new sample"


def test_query_heads_mode_keeps_kv_heads_and_needs_equal_counts():
    model = tiny_model("qwen2")
    prepare_model(model, MaskedDoRAConfig(gqa="query_heads", **SMALL))
    h = get_state(model).group("heads", 0)
    assert (h.num_units, h.partitions) == (4, 2)
    with pytest.raises(ValueError, match="same number of kept query heads"):
        h.set_mask(torch.tensor([True, True, True, False]))
    h.set_mask(torch.tensor([True, False, False, True]))
    attn = model.layers[0].self_attn
    assert attn.k_proj.keep_mask().all() and attn.v_proj.keep_mask().all()
    assert torch.equal(attn.q_proj.keep_mask(), torch.isin(torch.arange(32) // 8, torch.tensor([0, 3])))


@pytest.mark.parametrize("kwargs, match", [
    (dict(target_groups=("mlp", "ffn")), "target_groups"),
    (dict(target_sparsity=1.0), r"target_sparsity\['mlp'\]"),
    (dict(target_sparsity={"mlp": 0.5}), r"target_sparsity\['heads'\]"),
    (dict(target_sparsity={"mlp": 0.5, "heads": 0.5, "head": 0.5}), r"target_sparsity: expected keys .*'head'"),
    (dict(alignment={"mlp": 0}), r"alignment\['mlp'\]"),
    (dict(gqa="kv"), "gqa"),
    (dict(allocation="per_layer"), "allocation"),
    (dict(importance="fisher"), "importance"),
    (dict(rank=0), "rank"),
    (dict(gate="relu"), "gate"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MaskedDoRAConfig(**kwargs)


def test_config_warns_of_a_target_for_a_kind_it_does_not_prune():
    with pytest.warns(UserWarning, match=r"target_sparsity: \['heads'\] are not in target_groups=\('mlp',\)"):
        cfg = MaskedDoRAConfig(target_groups=("mlp",), target_sparsity={"mlp": 0.5, "heads": 0.5})
    assert cfg.target_sparsity == {"mlp": 0.5, "heads": 0.5}  # kept as given: a saved state round-trips
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MaskedDoRAConfig(target_groups=("mlp",), target_sparsity=0.5)


def test_config_round_trips_through_dict():
    cfg = MaskedDoRAConfig(rank=2, target_sparsity={"mlp": 0.5, "heads": 0.25}, gqa="query_heads")
    assert MaskedDoRAConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        MaskedDoRAConfig.from_dict({"rnak": 2})


def test_prepare_rejects_bad_input():
    model = tiny_model("bert")
    with pytest.raises(TypeError, match="config"):
        prepare_model(model, {"rank": 4})
    prepare_model(model, MaskedDoRAConfig(**SMALL))
    with pytest.raises(ValueError, match="already prepared"):
        prepare_model(model, MaskedDoRAConfig(**SMALL))
    with pytest.raises(ValueError, match="num_units"):
        GroupMask("mlp", 0, 0, {})


def test_mask_source_hook_on_the_layer():
    layer = MaskedDoRALinear(8, 6, rank=2)
    with pytest.raises(TypeError, match="source"):
        layer.set_mask_source(object())
    with pytest.raises(TypeError, match="source"):
        layer.set_mask_source(nn.Linear(2, 2))

    class Half:
        def gate_values(self):
            return torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])

        def keep_mask(self):
            return self.gate_values().bool()

    layer.set_mask_source(Half())
    assert not layer.mask_logits.requires_grad
    x = torch.randn(3, 8)
    y = layer(x)
    assert (y[:, 1::2] == 0).all() and (y[:, ::2] != 0).all()
    assert torch.equal(layer.keep_mask(), torch.tensor([True, False] * 3))
    layer.set_mask_source(None)
    assert layer.mask_logits.requires_grad and layer.keep_mask().all()


def test_missing_module_is_named():
    model = tiny_model("llama")
    del model.layers[1].mlp.up_proj
    with pytest.raises(ValueError, match=r"mlp module 'mlp.up_proj' is missing"):
        prepare_model(model, MaskedDoRAConfig(**SMALL))
    # nothing was changed: no block half-wrapped
    assert not any(isinstance(m, MaskedDoRALinear) for m in model.modules())
    assert not hasattr(model, "masked_dora")

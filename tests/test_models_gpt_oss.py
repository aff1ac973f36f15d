"""gpt-oss: experts stored transposed, (E, in, out), with gate and up outputs interleaved per channel, biases and a
clamped SwiGLU (``ExpertsLayout``), and attention with one learned sink logit per query head (a ``PerHeadSpec``).
The family chain runs in ``test_models_families.py``; these tests give the biases, sinks and expert weights
values that tell every channel and head apart (the tiny model's start at zero or near it)."""

from __future__ import annotations

import copy
from dataclasses import replace as replace_dataclass

import pytest
import torch

from masked_dora.models import MaskedDoRAConfig, compact_for_training, get_state, harden, load_compact, prepare_model
from masked_dora.models.compact import LAYER_SIZES_KEY
from masked_dora.nn import ClampedSwiGLU, MaskedDoRAExperts

from tiny_family_table import AVAILABLE
from tiny_models import harden_and_compact, output_tensor, randomize_adapters, tiny_inputs, tiny_model

pytestmark = pytest.mark.skipif("gpt_oss" not in AVAILABLE, reason="this transformers has no gpt-oss")


def _gpt_oss():
    """A tiny gpt-oss whose biases and sinks are distinct and whose expert weights are large enough that the
    SwiGLU's clamps (limit 7) act on some channels."""
    model = tiny_model("gpt_oss", kind="lm")
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("bias", "sinks")):
                p.copy_(torch.rand(p.shape, generator=gen) - 0.5)
            elif ".experts." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 1.5)
    return model


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_wrapped_experts_compute_what_the_original_module_computes():
    """Before training (adapters at their start, every channel kept) the prepared model is the model: the
    wrapper reads the transposed weights, the interleaved gate/up rows, the biases and the activation as
    gpt-oss's own experts module does (the clamps act on some channels here)."""
    model = _gpt_oss()
    original = copy.deepcopy(model)
    experts = original.model.layers[0].mlp.experts
    x = torch.randn(64, 32) * 3
    gate_up = x @ experts.gate_up_proj[0] + experts.gate_up_proj_bias[0]
    assert (gate_up[..., ::2] > experts.limit).any()  # the gate clamp acts
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none"))
    wrapped = model.model.layers[0].mlp.experts
    assert isinstance(wrapped, MaskedDoRAExperts) and wrapped.interleaved and isinstance(wrapped.glu, ClampedSwiGLU)
    assert wrapped.gate_up[1].bias is not None and wrapped.down[1].bias is not None
    inputs = tiny_inputs()
    with torch.no_grad():
        assert _rel(output_tensor(model(**inputs)), output_tensor(original(**inputs))) < 1e-5
        index = torch.randint(0, 4, (64, 2))
        weights = torch.rand(64, 2)
        assert _rel(wrapped(x, index, weights), experts(x, index, weights)) < 1e-5


def test_a_pruned_channel_adds_nothing_to_the_expert_output():
    """A channel whose gate and up rows are gated (bias included) is 0 after the clamped SwiGLU, so the expert's
    output equals that of the expert without the channel (its interleaved rows 2c, 2c + 1 and down column c)."""
    torch.manual_seed(0)
    E, H, inter = 2, 6, 4
    gate_up, down = torch.randn(E, H, 2 * inter, dtype=torch.float64) * 3, torch.randn(E, inter, H, dtype=torch.float64)
    bias_gu, bias_d = torch.randn(E, 2 * inter, dtype=torch.float64), torch.randn(E, H, dtype=torch.float64)
    glu = ClampedSwiGLU(1.702, 7.0)
    experts = MaskedDoRAExperts.from_packed(gate_up.transpose(1, 2), down.transpose(1, 2), None, gate_up_bias=bias_gu,
                                            down_bias=bias_d, interleaved=True, glu=glu, rank=2)
    experts.eval()
    pruned = 1
    with torch.no_grad():
        experts.gate_up[0].set_mask(torch.arange(2 * inter) // 2 != pruned)
        x = torch.randn(5, H, dtype=torch.float64)
        out = experts.expert(0, x)
    keep = torch.arange(inter) != pruned
    gu = x @ gate_up[0] + bias_gu[0]
    expected = glu(gu[:, ::2][:, keep], gu[:, 1::2][:, keep]) @ down[0][keep] + bias_d[0]
    assert _rel(out, expected) < 1e-12
    assert glu(torch.zeros(3), torch.zeros(3)).eq(0).all()


@pytest.mark.parametrize("gqa", ["kv_groups", "query_heads"])
def test_pruned_experts_and_heads_compact_to_an_equal_model_in_both_save_forms(tmp_path, gqa):
    """Experts and heads pruned, layer 0 keeping less than layer 1 (the per-layer form): the compacted experts
    are stored transposed with their kept channels' gate and up columns interleaved and their biases cut, the
    sinks are the kept query heads'; the model equals the masked one, and so does its reload."""
    model = _gpt_oss()
    prepare_model(model, MaskedDoRAConfig(rank=2, alignment={"mlp": 8}, importance="none", allocation="global",
                                          gqa=gqa, target_sparsity={"mlp": 0.25, "heads": 0.25}))
    randomize_adapters(model)
    state = get_state(model)
    with torch.no_grad():  # layer 1 keeps every unit; layer 0 its last heads (of each KV group) and channels
        for kind in ("mlp", "heads"):
            state.group(kind, 1).mask_logits.add_(10.0)
            group = state.group(kind, 0)
            group.mask_logits.copy_(torch.linspace(-1.0, 1.0, group.num_units))
    sinks = model.model.layers[0].self_attn.sinks.detach().clone()
    experts = model.model.layers[0].mlp.experts
    ref, small, out = harden_and_compact(model)
    assert _rel(out, ref) < 1e-5
    kept_channels = state.group("mlp", 0).hard().view(4, -1)[1].nonzero().flatten()
    kept_heads = model.model.layers[0].self_attn.q_proj.keep_mask().view(4, 8).all(1).nonzero().flatten()
    assert 0 < kept_heads.numel() < 4 and 0 < kept_channels.numel() < 64
    sizes = getattr(small.config, LAYER_SIZES_KEY)
    assert [s["intermediate"] for s in sizes] == [kept_channels.numel(), 64]
    layer = small.model.layers[0]
    inter = kept_channels.numel()
    assert tuple(layer.mlp.experts.gate_up_proj.shape) == (4, 32, 2 * inter)
    assert tuple(layer.mlp.experts.gate_up_proj_bias.shape) == (4, 2 * inter)
    assert tuple(layer.mlp.experts.down_proj.shape) == (4, inter, 32)
    w, b = experts.gate_up[1].merged_weight()  # expert 1: its kept channels' (gate, up) rows, in turn
    rows = torch.stack([2 * kept_channels, 2 * kept_channels + 1], dim=1).flatten()
    torch.testing.assert_close(layer.mlp.experts.gate_up_proj[1], w[rows].t(), rtol=0, atol=0)
    torch.testing.assert_close(layer.mlp.experts.gate_up_proj_bias[1], b[rows], rtol=0, atol=0)
    torch.testing.assert_close(layer.self_attn.sinks, sinks[kept_heads], rtol=0, atol=0)
    small.save_pretrained(tmp_path)
    reloaded = load_compact(str(tmp_path))
    inputs = tiny_inputs()
    with torch.no_grad():
        assert _rel(output_tensor(reloaded(**inputs)), ref) < 1e-5
    ids = inputs["input_ids"][:1]
    gen = dict(max_new_tokens=6, do_sample=False)
    assert torch.equal(reloaded.generate(ids, **gen), model.generate(ids, **gen))


def test_training_at_the_kept_size_narrows_each_expert_and_says_its_width():
    """compact_for_training keeps each expert's kept (interleaved) gate/up rows and down columns; the wrapper's
    width follows (gpt-oss's experts module names its width intermediate_size, which the spec's size_attrs set,
    not the wrapper's intermediate_dim). The full chain at the kept size is in test_compact_training.py."""
    model = _gpt_oss()
    prepare_model(model, MaskedDoRAConfig(rank=2, alignment={"mlp": 8}, importance="none", target_groups=("mlp",),
                                          target_sparsity=0.5))
    harden(model)
    compact_for_training(model)
    for layer in model.model.layers:
        experts = layer.mlp.experts
        assert experts.intermediate_dim == experts.down[0].in_features == 32
        assert experts.gate_up[0].out_features == 64


def test_an_experts_layout_that_is_not_the_modules_is_refused_before_anything_changes(monkeypatch):
    """Mixtral's layout ((experts, out, in), [gate | up], no bias) against gpt-oss's experts module, which says its
    own layout: prepare_model names both before it wraps anything. (A module that does not say it: the packed
    shapes must pair, next test.)"""
    from masked_dora.models import specs as specs_module
    from masked_dora.nn import MaskedDoRALinear

    monkeypatch.setattr(specs_module, "SPECS", dict(specs_module.SPECS))
    specs_module.register_spec("gpt_oss", like="mixtral", replace=True)
    model = _gpt_oss()
    with pytest.raises(ValueError, match=r"expected experts stored \(experts, out, in\), without bias, gate/up "
                                         r"concatenated .*GptOssExperts has \{'is_transposed': True"):
        prepare_model(model, MaskedDoRAConfig(importance="none"))
    assert not any(isinstance(m, (MaskedDoRALinear, MaskedDoRAExperts)) for m in model.modules())


def test_packed_shapes_that_do_not_pair_in_the_spec_layout_are_refused():
    """An experts module without layout flags whose tensors are gpt-oss's (experts, in, out), read as Mixtral's
    (experts, out, in): gate_up_proj's rows are not twice down_proj's inputs."""
    from masked_dora.models.blocks import packed_experts
    from masked_dora.models.specs import SPECS

    block = torch.nn.Module()
    block.mlp = torch.nn.Module()
    block.mlp.experts = torch.nn.Module()
    block.mlp.experts.gate_up_proj = torch.nn.Parameter(torch.zeros(4, 32, 128))
    block.mlp.experts.down_proj = torch.nn.Parameter(torch.zeros(4, 64, 32))
    with pytest.raises(ValueError, match=r"'gate_up_proj' \(4, 32, 128\) and 'down_proj' \(4, 64, 32\) on "
                                         r"Module do not pair as \(experts, out, in\)"):
        packed_experts(block, SPECS["mixtral"])
    gpt_oss = SPECS["gpt_oss"]
    no_bias = replace_dataclass(gpt_oss.mlp.experts_layout, bias=False)
    packed_experts(block, replace_dataclass(gpt_oss, mlp=replace_dataclass(gpt_oss.mlp, experts_layout=no_bias)))


def test_experts_layout_checks_its_values():
    from masked_dora.models import ExpertsLayout, MLPSpec

    with pytest.raises(ValueError, match="ExpertsLayout.glu: expected one of"):
        ExpertsLayout(glu="gelu")
    with pytest.raises(ValueError, match="act and limit_attr describe glu='clamped_act', got glu='clamped_swiglu'"):
        ExpertsLayout(glu="clamped_swiglu", limit_attr="swiglu_limit")
    with pytest.raises(ValueError, match="alpha_attr describes glu='clamped_swiglu', got glu='act'"):
        ExpertsLayout(alpha_attr="swiglu_alpha")
    with pytest.raises(ValueError, match=r"glu='clamped_swiglu' computes .* itself and reads no act_fn, got "
                                         r"act_fn='mlp.activation_fn'"):  # (it was ignored)
        ExpertsLayout(glu="clamped_swiglu", act_fn="mlp.activation_fn")
    with pytest.raises(ValueError, match="experts_layout describes packed experts; it needs experts="):
        MLPSpec(producers=("mlp.up",), consumer="mlp.down", size_key="", experts_layout=ExpertsLayout(bias=True))
    with pytest.raises(ValueError, match="act_fn, glu: expected exactly one"):
        MaskedDoRAExperts.from_packed(torch.randn(2, 8, 6), torch.randn(2, 6, 4), None)
    with pytest.raises(ValueError, match=r"gate_up_bias: expected shape \(2, 8\)"):
        MaskedDoRAExperts.from_packed(torch.randn(2, 8, 6), torch.randn(2, 6, 4), torch.nn.functional.silu,
                                      gate_up_bias=torch.randn(2, 4))


class _NestedExperts(torch.nn.Module):
    """gpt-oss's experts module one level down (``inner``): its packed parameters and their biases at dotted paths
    below the module a spec names (as DBRX's ``mlp.w1``)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.alpha, self.limit = inner, inner.alpha, inner.limit

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


def test_packed_biases_follow_dotted_parameter_paths(monkeypatch):
    """A spec naming the packed parameters by dotted paths below the experts module (``inner.gate_up_proj``) with
    ``experts_layout.bias``: their biases are ``inner.gate_up_proj_bias`` and ``inner.down_proj_bias`` (looked up on
    the experts module itself, they were refused as missing), and the prepared model is the model."""
    from masked_dora.models import specs as specs_module

    spec = specs_module.SPECS["gpt_oss"]
    monkeypatch.setattr(specs_module, "SPECS", dict(specs_module.SPECS))
    specs_module.register_spec("gpt_oss", replace=True, spec=replace_dataclass(spec, mlp=replace_dataclass(
        spec.mlp, producers=("inner.gate_up_proj",), consumer="inner.down_proj")))
    model = _gpt_oss()
    for layer in model.model.layers:
        layer.mlp.experts = _NestedExperts(layer.mlp.experts)
    original = copy.deepcopy(model)
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none"))
    wrapped, inner = model.model.layers[1].mlp.experts, original.model.layers[1].mlp.experts.inner
    assert isinstance(wrapped, MaskedDoRAExperts)
    torch.testing.assert_close(wrapped.gate_up[2].bias, inner.gate_up_proj_bias[2])
    torch.testing.assert_close(wrapped.down[2].bias, inner.down_proj_bias[2])
    inputs = tiny_inputs()
    with torch.no_grad():
        assert _rel(output_tensor(model(**inputs)), output_tensor(original(**inputs))) < 1e-5

"""Exact sparsity after hardening, importance init, and pruned models equal to the masked ones."""

import pytest
import torch

from masked_dora.masks import kept_count
from masked_dora.models import (MaskedDoRAConfig, SparsityController, compact_model, expected_keep, get_state,
                                harden, kept_fraction, plan_keep, prepare_model)
from masked_dora.models.compact import LAYER_SIZES_KEY
from masked_dora.models.importance import importance_scores

from tiny_models import (FAMILIES, ONE_KV_HEAD, harden_and_compact, output_tensor, randomize_adapters, tiny_inputs,
                         tiny_model)

DECODERS = ("llama", "mistral", "qwen2")


def _prepared(family, kind="base", **cfg):
    model = tiny_model(family, kind=kind)
    base = dict(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5)
    base.update(cfg)
    prepare_model(model, MaskedDoRAConfig(**base))
    randomize_adapters(model)
    return model


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("gqa", ["kv_groups", "query_heads"])
def test_pruned_model_equals_masked_model(family, gqa):
    if family in ONE_KV_HEAD and gqa == "kv_groups":  # the only KV group always stays: an error, not a no-op
        with pytest.raises(ValueError, match="one KV head for its 4 query heads.*use gqa='query_heads'"):
            _prepared(family, kind="lm", gqa=gqa)
        return
    model = _prepared(family, kind="lm", gqa=gqa)
    ref, small, out = harden_and_compact(model, family)
    # every layer is a plain nn.Linear of the new sizes
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in small.modules())
    assert not hasattr(small, "masked_dora")
    n_small = sum(p.numel() for p in small.parameters())
    n_big = sum(p.numel() for n, p in model.named_parameters() if not any(
        k in n for k in ("lora_", "magnitude", "mask_logits")))
    assert n_small < n_big
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", DECODERS)
def test_uniform_decoder_config_is_plain(family):
    model = _prepared(family, target_sparsity={"mlp": 0.25, "heads": 0.5})
    harden(model)
    cfg = compact_model(model).config
    assert cfg.intermediate_size == 48
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 1, 8)
    assert not hasattr(cfg, LAYER_SIZES_KEY)


def test_query_heads_mode_keeps_kv_heads_in_config():
    model = _prepared("llama", gqa="query_heads", target_sparsity=0.5)
    harden(model)
    cfg = compact_model(model).config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (2, 2, 8)


def test_bert_pruned_heads_need_per_layer_sizes():
    model = _prepared("bert", target_sparsity=0.5)
    harden(model)
    cfg = compact_model(model).config
    sizes = getattr(cfg, LAYER_SIZES_KEY)
    assert [s["heads"] for s in sizes] == [2, 2] and [s["intermediate"] for s in sizes] == [32, 32]
    mlp_only = _prepared("bert", target_groups=("mlp",), target_sparsity=0.5)
    harden(mlp_only)
    cfg = compact_model(mlp_only).config
    assert cfg.intermediate_size == 32 and not hasattr(cfg, LAYER_SIZES_KEY)


@pytest.mark.parametrize("gqa", ["kv_groups", "query_heads"])
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.7])
def test_harden_hits_exact_sparsity_uniform(gqa, sparsity):
    model = _prepared("llama", gqa=gqa, target_sparsity=sparsity)
    summary = harden(model)
    state = get_state(model)
    for g in state.groups_of("mlp"):
        assert int(g.hard().sum()) == kept_count(64, sparsity, 8)
    for g in state.groups_of("heads"):
        if gqa == "kv_groups":
            assert int(g.hard().sum()) == kept_count(2, sparsity, 1)
        else:  # the same number of query heads in each KV group
            per_group = g.hard().view(2, 2).sum(1)
            assert per_group[0] == per_group[1] == kept_count(4, sparsity, 2) // 2
    assert summary["mlp"]["kept"] == 2 * kept_count(64, sparsity, 8)
    # hardening keeps the top logits
    g = state.group("mlp", 0)
    kept, dropped = g.mask_logits[g.hard()], g.mask_logits[~g.hard()]
    assert dropped.numel() == 0 or kept.min() >= dropped.max()


def test_harden_global_allocation_is_exact_and_non_uniform():
    model = _prepared("llama", target_groups=("mlp",), target_sparsity=0.5, allocation="global")
    state = get_state(model)
    with torch.no_grad():  # layer 0 clearly more important than layer 1
        state.group("mlp", 0).mask_logits.add_(5.0)
    harden(model)
    counts = [int(g.hard().sum()) for g in state.groups_of("mlp")]
    assert sum(counts) == kept_count(128, 0.5, 8)
    assert counts[0] > counts[1] >= 8 and all(c % 8 == 0 for c in counts)


def test_plan_keep_rejects_bad_scores():
    model = _prepared("llama")
    groups = get_state(model).groups_of("mlp")
    with pytest.raises(ValueError, match="scores"):
        plan_keep(groups, [torch.zeros(3)] * 2, 0.5, 8)
    with pytest.raises(ValueError, match="allocation"):
        plan_keep(groups, [torch.zeros(64)] * 2, 0.5, 8, "per_layer")


@pytest.mark.parametrize("method", ["magnitude", "taylor", "activation"])
def test_importance_init_starts_at_the_target_cut(method):
    model = tiny_model("llama", kind="lm")
    inputs = tiny_inputs()
    batches = [dict(inputs, labels=inputs["input_ids"])] * 2
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance=method, target_sparsity=0.25),
                  calibration=batches)
    state = get_state(model)
    assert kept_fraction(model, "mlp") == pytest.approx(kept_count(64, 0.25, 8) / 64)
    for g in state.groups.values():
        assert (g.mask_logits.abs() > 0).all() and g.mask_logits.abs().max() <= 3.0
    scores = importance_scores(model, method, batches)
    s0 = scores["mlp_0"]
    assert s0.shape == (64,) and torch.isfinite(s0).all() and (s0 > 0).any()
    # the units that start kept are the top-scoring ones of their layer
    keep = state.group("mlp", 0).hard()
    assert s0[keep].min() >= s0[~keep].max()


@pytest.mark.parametrize("method", ["taylor", "activation"])
@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_calibrated_importance_does_not_depend_on_the_budget(method, allocation):
    """The scores are the dense model's: under budget="exact" a forward would keep the top-k of the logits
    (all equal before the init: the lowest indices), and an activation score read through that mask scored the
    arbitrary cut (issue 12: learned_exact started from it)."""
    inputs = tiny_inputs()
    batches = [dict(inputs, labels=inputs["input_ids"])] * 2
    cuts = {}
    for budget in ("lagrangian", "exact"):
        model = tiny_model("llama", kind="lm")
        prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance=method, budget=budget,
                                              target_sparsity=0.5, allocation=allocation), calibration=batches)
        cuts[budget] = {k: g.mask_logits.detach().clone() for k, g in get_state(model).groups.items()}
    for key, logits in cuts["exact"].items():
        assert torch.equal(logits, cuts["lagrangian"][key]), key


def test_importance_needs_calibration():
    model = tiny_model("llama")
    with pytest.raises(ValueError, match="calibration"):
        prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="taylor"))
    assert not hasattr(model, "masked_dora")  # refused before anything changed


def test_magnitude_importance_finds_dead_channels():
    model = tiny_model("llama")
    dead = torch.arange(0, 64, 4)
    with torch.no_grad():
        for block in model.layers:
            block.mlp.gate_proj.weight[dead] = 0
            block.mlp.up_proj.weight[dead] = 0
            block.mlp.down_proj.weight[:, dead] = 0
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="magnitude",
                                          target_groups=("mlp",), target_sparsity=0.25))
    for g in get_state(model).groups_of("mlp"):
        assert not g.hard()[dead].any()


def test_controller_drives_expected_keep_to_target():
    model = _prepared("llama", target_groups=("mlp",), target_sparsity=0.5, gate="sigmoid_ste")
    with torch.no_grad():
        get_state(model).group("mlp", 0).mask_logits.fill_(3.0)
        get_state(model).group("mlp", 1).mask_logits.fill_(3.0)
    controller = SparsityController(model)
    logits = [g.mask_logits for g in get_state(model).groups.values()]
    opt = torch.optim.Adam(logits, lr=0.1)
    lam = controller.make_optimizer(lr=0.1)
    start = float(expected_keep(model, "mlp").detach())
    for _ in range(150):
        penalty = controller.penalty(model)
        opt.zero_grad(); lam.zero_grad()
        penalty.backward()
        opt.step(); lam.step(); controller.advance()
    end = float(expected_keep(model, "mlp").detach())
    assert start > 0.9 and abs(end - 0.5) < 0.1, (start, end)


def test_bf16_pruned_model_matches_to_bf16_rounding():
    from helpers import rel_err

    model = tiny_model("mistral", kind="lm").to(torch.bfloat16)
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="magnitude",
                                          target_sparsity=0.25))
    randomize_adapters(model)
    ref, small, out = harden_and_compact(model)
    assert out.dtype == torch.bfloat16 and next(small.parameters()).dtype == torch.bfloat16
    assert rel_err(out, ref) < 1e-2


def test_deepcopy_keeps_groups_tied_to_their_own_layers():
    import copy

    model = _prepared("llama")
    clone = copy.deepcopy(model)
    harden(clone)
    assert not get_state(model).group("mlp", 0).mask_fixed  # the original is untouched
    layer = clone.layers[0].mlp.gate_proj
    assert layer.mask_source.group is get_state(clone).group("mlp", 0)
    inputs = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(compact_model(clone)(**inputs)),
                                   output_tensor(clone(**inputs)), rtol=1e-4, atol=1e-5)


def test_targets_that_rounding_changes_warn_at_prepare_with_the_numbers():
    """25% of 2 KV groups per layer is none (round(1.5) = 2): a warning with the numbers, not silence."""
    import warnings

    with pytest.warns(UserWarning, match=r"target_sparsity\['heads'\]=0.25 becomes 0 after rounding: 2 KV groups"
                                         r".*2 x 0.75 = 1.5 to 2 kept") as caught:
        model = prepare_model(tiny_model("llama"), MaskedDoRAConfig(
            target_groups=("mlp", "heads"), target_sparsity=0.25, alignment={"mlp": 64}, importance="none"))
    assert any("target_sparsity['mlp']=0.25 becomes 0" in str(w.message) for w in caught)  # 64 channels, blocks of 64
    assert harden(model) == {"mlp": {"kept": 128, "total": 128, "sparsity": 0.0},
                             "heads": {"kept": 4, "total": 4, "sparsity": 0.0}}
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # reachable targets say nothing
        prepare_model(tiny_model("llama"), MaskedDoRAConfig(target_groups=("mlp", "heads"), target_sparsity=0.5,
                                                            alignment={"mlp": 8}, gqa="query_heads",
                                                            importance="none"))


def test_planned_save_form_follows_query_heads_kept_per_kv_group_whatever_the_heads_alignment():
    """gqa='query_heads' keeps the same count of query heads in every KV group; alignment['heads'] applies inside
    a group only when there is one group. prepare_model's planned save form used to round with it anyway (8 heads
    in 2 KV groups at 25% with alignment 2: planned 8 kept and a plain checkpoint; hardening keeps 6)."""
    import warnings

    from transformers import LlamaConfig, LlamaForCausalLM

    from masked_dora.models.save_form import planned_sizes

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=8, num_key_value_heads=2, head_dim=8)).eval()
    cfg = MaskedDoRAConfig(target_groups=("heads",), gqa="query_heads", target_sparsity=0.25,
                           alignment={"heads": 2}, rank=2, importance="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare_model(model, cfg)
    state = get_state(model)
    assert [s["heads"] for s in planned_sizes(model, state.spec, cfg)] == [6, 6]
    randomize_adapters(model)
    assert harden(model)["heads"]["kept"] == 12
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "prepare_model planned a plain checkpoint, but ..." at compaction
        small = compact_model(model)
    assert state.save_form == ("per_layer" if hasattr(small.config, LAYER_SIZES_KEY) else "plain")

"""Hidden-dimension pruning, hidden_mode="global": one mask over the residual stream of RMSNorm decoders.

The chain prepare -> train -> harden -> compact (equal outputs) -> save -> plain reload in a clean process
(equal outputs) -> generate (equal tokens), the norm/epsilon scaling that makes it exact, importance
initialisation, gradient checkpointing and the refusals.
"""

import json
import math

import pytest
import torch

from masked_dora.models import (MaskedDoRAConfig, compact_model, get_state, harden, is_prepared, kept_fraction,
                                prepare_model, train_masked)
from masked_dora.models import hidden as hidden_mod
from masked_dora.models.compact import LAYER_SIZES_KEY

from tiny_models import (assert_checkpointing_keeps_loss_and_gradients, harden_and_compact, lm_batches, output_tensor,
                         randomize_adapters, reload_plain_in_clean_process, tiny_config, tiny_inputs, tiny_model)

FAMILIES = ("llama", "mistral", "qwen2")
ALL = ("mlp", "heads", "hidden")
CFG = dict(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity={"mlp": 0.5, "heads": 0.5, "hidden": 0.5})


def _model(family, tied=False, seed=0):
    import transformers

    if not tied:
        return tiny_model(family, kind="lm", seed=seed)
    config = tiny_config(family)
    config.tie_word_embeddings = True
    torch.manual_seed(seed)
    return getattr(transformers, type(tiny_model(family, kind="lm")).__name__)(config).eval()


def _prepared(family, groups=ALL, tied=False, **cfg):
    model = _model(family, tied)
    prepare_model(model, MaskedDoRAConfig(target_groups=groups, **{**CFG, **cfg}))
    randomize_adapters(model)
    return model


def _rel_err(out, ref):
    return float((out - ref).abs().max() / ref.abs().max())


def _rms_norm(x, w, eps):
    return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def test_rms_norm_over_kept_channels_equals_the_full_one_in_float64():
    """rms_full^2 = (d'/d) mean_kept + eps = (d'/d)(mean_kept + eps d/d'): weight x sqrt(d/d'), eps x d/d'."""
    gen = torch.Generator().manual_seed(0)
    d, eps = 32, 1e-2  # a large eps, so dropping its scaling shows far above float64 rounding
    keep = torch.randperm(d, generator=gen)[:12].sort().values
    x = torch.zeros(3, d, dtype=torch.float64)
    x[:, keep] = torch.randn(3, keep.numel(), generator=gen, dtype=torch.float64)
    w = torch.rand(d, generator=gen, dtype=torch.float64) + 0.5
    full = _rms_norm(x, w, eps)[:, keep]
    r = d / keep.numel()
    assert torch.allclose(_rms_norm(x[:, keep], w[keep] * math.sqrt(r), eps * r), full, rtol=1e-14, atol=0)
    assert not torch.allclose(_rms_norm(x[:, keep], w[keep] * math.sqrt(r), eps), full, rtol=1e-4, atol=0)
    assert not torch.allclose(_rms_norm(x[:, keep], w[keep], eps * r), full, rtol=1e-4, atol=0)


def _train(model, steps=3):
    before = get_state(model).groups["hidden"].mask_logits.detach().clone()
    train_masked(model, lm_batches(3), lambda m, b: m(**b).loss, steps=steps, lr=1e-3, mask_lr=0.1)
    assert not torch.equal(get_state(model).groups["hidden"].mask_logits.detach(), before)  # the mask learns


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("groups", [ALL, ("hidden",)])
def test_compacted_model_equals_the_masked_one(family, groups):
    model = _prepared(family, groups)
    _train(model)
    summary = harden(model)
    assert summary["hidden"] == {"kept": 16, "total": 32, "sparsity": 0.5}
    inputs = tiny_inputs()
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        small = compact_model(model)
        out = output_tensor(small(**inputs))
    cfg = small.config
    assert (cfg.hidden_size, cfg.head_dim) == (16, 8)
    assert cfg.rms_norm_eps == pytest.approx(model.config.rms_norm_eps * 2)
    assert small.get_input_embeddings().weight.shape == (97, 16) and small.lm_head.weight.shape == (97, 16)
    assert all(m.weight.shape == (16,) for n, m in small.named_modules() if n.endswith("norm"))
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in small.modules())
    assert _rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("scaling", ["weight", "eps"])
def test_dropping_either_norm_scaling_breaks_equality(monkeypatch, scaling):
    """The tolerance above sees the scaling: without the weight's sqrt(d/d') or the eps's d/d', it fails."""
    model = _prepared("llama")
    harden(model)
    inputs = tiny_inputs()
    if scaling == "eps":
        real = hidden_mod.hidden_config

        def no_eps(config, spec, d, kept, head_dim):
            eps = getattr(config, spec.hidden.eps_key)
            real(config, spec, d, kept, head_dim)
            setattr(config, spec.hidden.eps_key, eps)
            return config
        monkeypatch.setattr("masked_dora.models.compact.hidden_config", no_eps)
    else:
        monkeypatch.setattr(hidden_mod, "norm_scale", lambda d, d_kept: 1.0)
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        out = output_tensor(compact_model(model)(**inputs))
    assert _rel_err(out, ref) > 1e-4


def test_checkpoints_reload_with_plain_transformers_and_generate_the_masked_tokens(tmp_path):
    jobs, refs, tokens = [], [], []
    gen = dict(max_new_tokens=6, do_sample=False)
    ids = tiny_inputs()["input_ids"][:1]
    for family, tied in [(f, False) for f in FAMILIES] + [("llama", True)]:
        model = _prepared(family, tied=tied)
        harden(model)
        inputs = tiny_inputs()
        with torch.no_grad():
            ref = output_tensor(model(**inputs))
        small = compact_model(model)
        if tied:
            assert small.lm_head.weight is small.get_input_embeddings().weight
        path = tmp_path / f"{family}{'-tied' if tied else ''}"
        small.save_pretrained(str(path))
        torch.save(inputs, path / "inputs.pt")
        config = json.loads((path / "config.json").read_text())
        assert config["hidden_size"] == 16 and config["head_dim"] == 8 and LAYER_SIZES_KEY not in config
        masked_tokens = model.generate(ids, **gen)
        assert torch.equal(small.generate(ids, **gen), masked_tokens)
        jobs.append((str(path), "AutoModelForCausalLM"))
        refs.append(ref)
        tokens.append(masked_tokens)
    for out, ref in zip(reload_plain_in_clean_process(jobs), refs):
        assert _rel_err(out, ref) < 1e-5


def test_pruned_heads_that_divide_only_the_pruned_hidden_size_compact_to_a_plain_checkpoint(tmp_path):
    """4 heads of 16 over hidden 64, 25% of heads and hidden pruned: transformers refuses hidden 64 with 3 heads
    but takes the compacted model's hidden 48 (the plain config is checked with the kept hidden size; it used to
    be checked with the original one and refused)."""
    import transformers as t

    torch.manual_seed(0)
    model = t.LlamaForCausalLM(t.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                                             max_position_embeddings=64)).eval()
    prepare_model(model, MaskedDoRAConfig(target_groups=ALL, rank=4, alignment={"mlp": 8}, importance="none",
                                          target_sparsity={"mlp": 0.25, "heads": 0.25, "hidden": 0.25}))
    randomize_adapters(model)
    ref, small, _ = harden_and_compact(model)
    cfg = small.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim) == (48, 3, 16)
    assert not hasattr(cfg, LAYER_SIZES_KEY)
    small.save_pretrained(str(tmp_path / "m"))
    with torch.no_grad():
        out = output_tensor(t.AutoModelForCausalLM.from_pretrained(str(tmp_path / "m")).eval()(**tiny_inputs()))
    assert _rel_err(out, ref) < 1e-5


def test_kv_cache_generation_of_the_compacted_model_equals_the_masked_one():
    """Longer greedy generation with the KV cache (and without), batch of two with padding."""
    model = _prepared("qwen2")
    harden(model)
    small = compact_model(model)
    inputs = tiny_inputs()
    gen = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    masked = model.generate(**inputs, **gen)
    assert torch.equal(small.generate(**inputs, **gen), masked)
    assert torch.equal(small.generate(**inputs, use_cache=False, **gen), masked)


@pytest.mark.parametrize("sparsity, kept", [(0.5, 16), (0.3, 24), (0.9, 8)])
@pytest.mark.parametrize("method", ["none", "magnitude", "activation", "taylor"])
def test_importance_starts_at_the_aligned_target_and_hardening_hits_it(method, sparsity, kept):
    model = _model("llama")
    calibration = lm_batches(2) if method in ("activation", "taylor") else None
    prepare_model(model, MaskedDoRAConfig(target_groups=ALL, **{**CFG, "importance": method,
                                                                "target_sparsity": {"mlp": 0.5, "heads": 0.5,
                                                                                    "hidden": sparsity}}),
                  calibration=calibration)
    logits = get_state(model).groups["hidden"].mask_logits
    if method != "none":
        assert int((logits > 0).sum()) == kept  # the planned cut, aligned to 8
    harden(model)
    assert kept_fraction(model, "hidden") == kept / 32


def test_magnitude_importance_keeps_the_strong_channels():
    model = _model("llama")
    with torch.no_grad():  # channels 0..7 dead in the embeddings and every writer
        model.get_input_embeddings().weight[:, :8] = 0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[:8] = 0
            layer.mlp.down_proj.weight[:8] = 0
    prepare_model(model, MaskedDoRAConfig(target_groups=("hidden",), **{**CFG, "importance": "magnitude"}))
    harden(model)
    keep = get_state(model).groups["hidden"].hard()
    assert not keep[:8].any() and int(keep.sum()) == 16


@pytest.mark.parametrize("checkpointing, reentrant", [(False, False), (True, False), (True, True)])
def test_gradient_checkpointing_step_gives_the_same_loss_and_gradients(checkpointing, reentrant):
    """Reentrant too: every block reads the hidden group's one sample, and a reentrant checkpoint backpropagates
    each block down to the logits on its own (it raised "backward through the graph a second time")."""
    ref = assert_checkpointing_keeps_loss_and_gradients(lambda: _prepared("llama", gqa="query_heads"), checkpointing,
                                                        reentrant)
    assert ref["masked_dora.groups.hidden.mask_logits"].abs().sum() > 0


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_after_narrowing_the_stream_gives_the_same_loss_and_gradients(reentrant):
    from masked_dora.models import compact_for_training

    def make():
        model = _prepared("llama", groups=("mlp", "hidden"))
        harden(model)
        return compact_for_training(model)

    assert_checkpointing_keeps_loss_and_gradients(make, True, reentrant)


@pytest.mark.parametrize("family, match", [
    ("gpt2", "LayerNorms subtract the mean"), ("phi", "LayerNorms subtract the mean"),
    ("gemma", r"sqrt\(hidden_size\)"), ("gemma2", "post-norms"), ("granite", "multipliers"), ("qwen3", "q/k RMSNorms"),
    ("olmo2", "no HiddenSpec"), ("mixtral", "no HiddenSpec")])
def test_families_it_cannot_prune_exactly_are_refused_before_any_change(family, match):
    model = tiny_model(family, kind="lm")
    with pytest.raises(ValueError, match=match):
        prepare_model(model, MaskedDoRAConfig(target_groups=ALL, **CFG))
    assert not is_prepared(model)
    assert not any(type(m).__name__ == "MaskedDoRALinear" for m in model.modules())


@pytest.mark.parametrize("cfg, match", [
    (dict(allocation="global"), "allocation: 'hidden' needs allocation='uniform'"),
    (dict(save_form="per_layer"), "save_form: 'hidden' compacts to a plain checkpoint only")])
def test_settings_it_does_not_build_are_refused_before_any_change(cfg, match):
    model = tiny_model("llama", kind="lm")
    with pytest.raises(ValueError, match=match):
        prepare_model(model, MaskedDoRAConfig(target_groups=ALL, **{**CFG, **cfg}))
    assert not is_prepared(model)


def test_config_validates_hidden_mode_and_alignment():
    assert MaskedDoRAConfig(target_groups=("hidden",)).alignment["hidden"] == 8
    with pytest.raises(ValueError, match="hidden_mode"):
        MaskedDoRAConfig(hidden_mode="layer")
    with pytest.raises(ValueError, match=r"alignment\['hidden'\]"):
        MaskedDoRAConfig(target_groups=("hidden",), alignment={"hidden": 0})


@pytest.mark.parametrize("family", FAMILIES)
def test_compact_for_training_narrows_the_stream_to_the_masked_models_outputs(family):
    """float32, the families' own RMSNorms (float64 training equality: tests/test_compact_training.py)."""
    from masked_dora.models import compact_for_training

    model = _prepared(family)
    harden(model)
    inputs = tiny_inputs()
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        compact_for_training(model)
        out = output_tensor(model(**inputs))
    assert model.config.hidden_size == 16 and model.get_input_embeddings().embedding_dim == 16
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_export_peft_refuses_pruned_residual_channels(tmp_path):
    pytest.importorskip("peft")
    from masked_dora.models import export_peft

    model = _prepared("llama", gqa="kv_groups")
    harden(model)
    with pytest.raises(NotImplementedError, match="residual channels"):
        export_peft(model, str(tmp_path))


def test_deepcopy_gates_the_copy_with_its_own_hidden_group():
    import copy

    model = _prepared("llama")
    harden(model)
    twin = copy.deepcopy(model)
    gate = next(iter(twin.get_input_embeddings()._forward_hooks.values()))
    assert gate.group is get_state(twin).groups["hidden"]
    writer = twin.model.layers[0].self_attn.o_proj
    assert writer.mask_source.group is get_state(twin).groups["hidden"]
    inputs = tiny_inputs()
    with torch.no_grad():
        assert torch.equal(output_tensor(twin(**inputs)), output_tensor(model(**inputs)))


def test_training_state_round_trip_keeps_the_hidden_mask(tmp_path):
    from masked_dora.models import load_training_state, save_training_state

    model = _prepared("llama")
    harden(model)
    save_training_state(model, str(tmp_path))
    fresh = _model("llama")
    prepare_model(fresh, MaskedDoRAConfig(target_groups=ALL, **CFG))
    load_training_state(fresh, str(tmp_path))
    assert torch.equal(get_state(fresh).groups["hidden"].hard(), get_state(model).groups["hidden"].hard())
    inputs = tiny_inputs()
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(fresh(**inputs)), output_tensor(model(**inputs)))


@pytest.mark.parametrize("groups", [ALL, ("hidden",)])
def test_writer_biases_and_query_heads_inside_kv_groups_compact_exactly(groups):
    """o_proj/down_proj with biases (their pruned rows' biases go with them), and the o_proj input gate of
    gqa='query_heads' together with its hidden-gated output rows."""
    import transformers

    config = tiny_config("llama")
    config.attention_bias = config.mlp_bias = True
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    prepare_model(model, MaskedDoRAConfig(target_groups=groups, gqa="query_heads", **CFG))
    randomize_adapters(model)
    ref, small, out = harden_and_compact(model)
    assert small.model.layers[0].self_attn.o_proj.bias.shape == (16,)
    assert _rel_err(out, ref) < 1e-5


def test_exact_budget_trains_at_the_hidden_target_and_compacts_exactly():
    model = _prepared("mistral", budget="exact")
    _train(model)
    model.train()
    model(**lm_batches(1)[0])  # a training forward keeps exactly the planned channels
    assert int(get_state(model).groups["hidden"].values().detach().round().sum()) == 16
    harden(model)
    inputs = tiny_inputs()
    with torch.no_grad():
        ref = output_tensor(model.eval()(**inputs))
        out = output_tensor(compact_model(model)(**inputs))
    assert _rel_err(out, ref) < 1e-5

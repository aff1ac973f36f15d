"""Mixture-of-experts blocks (Mixtral, Qwen3-MoE): experts packed into 3-D parameters, one MLP group per block.

The group's units are every expert's channels and its partitions are the experts, so each expert keeps the
same (aligned) count and the compacted experts pack again into (experts, out, in) tensors. The router is
untouched. The family chain (prepare, a training step, harden, compact, save, reload, generate) runs in
``test_models_families.py``; this file checks what is particular to experts.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace as replace_dataclass

import pytest
import torch

from masked_dora.models import (MaskedDoRAConfig, export_peft, get_state, harden, load_compact,
                                load_training_state, prepare_model, save_training_state)
from masked_dora.models import specs as specs_module
from masked_dora.models.compact import LAYER_SIZES_KEY
from masked_dora.nn import MaskedDoRAExperts, MaskedDoRALinear

from tiny_family_table import AVAILABLE as TABLE_FAMILIES
from tiny_models import (assert_reloads_and_generates_equal, harden_and_compact, output_tensor, randomize_adapters,
                         tiny_config, tiny_inputs, tiny_model)

MOE = ("mixtral", "qwen3_moe")


def _prepared(family, **cfg):
    model = tiny_model(family, kind="lm")
    base = dict(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5)
    prepare_model(model, MaskedDoRAConfig(**{**base, **cfg}))
    randomize_adapters(model)
    return model


@pytest.mark.parametrize("family", MOE)
def test_experts_are_wrapped_around_the_packed_weights_without_a_copy(family):
    model = tiny_model(family, kind="lm")
    experts = model.model.layers[0].mlp.experts
    gate_up, down = experts.gate_up_proj, experts.down_proj
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none"))
    wrapped = model.model.layers[0].mlp.experts
    assert isinstance(wrapped, MaskedDoRAExperts) and wrapped.num_experts == 4
    for e in range(4):
        for layer, packed in ((wrapped.gate_up[e], gate_up), (wrapped.down[e], down)):
            assert isinstance(layer, MaskedDoRALinear) and not layer.weight.requires_grad
            assert layer.weight.data_ptr() == packed[e].data_ptr()  # a view of the packed tensor
    group = get_state(model).group("mlp", 0)
    width = wrapped.intermediate_dim
    assert (group.num_units, group.partitions) == (4 * width, 4)
    assert not model.model.layers[0].mlp.gate.weight.requires_grad  # the router is not trained
    # unit e * width + c: channel c of expert e, gating both its gate and its up row, in no other expert
    keep = torch.ones(4 * width, dtype=torch.bool)
    keep[torch.tensor([2 * width + 3, 2 * width + 4, width + 5, 5, 3 * width + 6])] = False
    keep[width + 7] = keep[6] = keep[3 * width + 7] = False  # two in each expert
    group.set_mask(keep)
    rows = wrapped.gate_up[2].keep_mask()
    assert torch.equal(torch.nonzero(~rows).flatten(), torch.tensor([3, 4, width + 3, width + 4]))
    assert torch.equal(torch.nonzero(~wrapped.gate_up[0].keep_mask()).flatten(),
                       torch.tensor([5, 6, width + 5, width + 6]))
    assert wrapped.down[2].keep_mask().all()  # the consumer loses columns at compaction, not rows


def test_every_expert_keeps_the_same_aligned_count_and_layers_may_differ():
    model = _prepared("mixtral", allocation="global", save_form="per_layer")
    harden(model)
    per_layer = []
    for i in range(2):
        keep = get_state(model).group("mlp", i).hard().view(4, -1).sum(1)
        assert (keep == keep[0]).all() and int(keep[0]) % 8 == 0, keep
        per_layer.append(int(keep[0]))
    assert sum(per_layer) == 2 * 32  # 50% of 2 layers x 64 channels per expert
    group = get_state(model).group("mlp", 0)
    unequal = torch.ones(group.num_units, dtype=torch.bool)
    unequal[0] = False
    with pytest.raises(ValueError, match="same number of kept channels in each of the 4 experts"):
        group.set_mask(unequal)


@pytest.mark.parametrize("family", MOE)
def test_per_layer_checkpoint_reloads_from_the_hub_layout(tmp_path, family):
    """A non-uniform compacted MoE saves with per-layer sizes; transformers writes its experts in the hub layout
    (one tensor per expert and projection), which load_compact packs again."""
    model = _prepared(family, allocation="global")
    with torch.no_grad():
        get_state(model).group("mlp", 0).mask_logits.add_(1.0)  # layer 0 keeps more than layer 1
    ref, small, out = harden_and_compact(model)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    inputs = tiny_inputs()
    sizes = getattr(small.config, LAYER_SIZES_KEY)
    assert sizes[0]["intermediate"] != sizes[1]["intermediate"]
    assert tuple(small.model.layers[0].mlp.experts.down_proj.shape)[2] == sizes[0]["intermediate"]
    assert_reloads_and_generates_equal(small, tmp_path, model, ref, inputs)
    from safetensors import safe_open

    with safe_open(os.path.join(tmp_path, "model.safetensors"), "pt") as f:  # as saved: the hub layout
        keys = list(f.keys())
    assert any(".experts.3." in k for k in keys) and not any(k.endswith("experts.gate_up_proj") for k in keys)


@pytest.mark.parametrize("family", MOE)
def test_activation_importance_ranks_each_experts_channels(family):
    model = tiny_model(family, kind="lm")
    batches = [tiny_inputs(seed=s) for s in range(2)]
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="activation",
                                          target_sparsity=0.5), calibration=batches)
    for group in get_state(model).groups_of("mlp"):
        kept = (group.mask_logits > 0).view(4, -1).sum(1)
        assert (kept == kept[0]).all() and int(kept[0]) == group.num_units // 8  # half of each expert


@pytest.mark.parametrize("dense", [dict(mlp_only_layers=[0]), dict(decoder_sparse_step=2)])
def test_dense_blocks_under_a_spec_without_dense_mlp_are_refused_before_anything_changes(monkeypatch, tmp_path,
                                                                                         dense):
    """An MoE spec that does not name the dense blocks' MLP (a registered one: ``dense_mlp=None``) refuses the
    MLP of a model with such blocks (the shipped qwen3_moe spec names it: the families chain runs
    ``qwen3_moe-dense``); the heads still prune, with the dense block left as it is."""
    import transformers as t

    monkeypatch.setattr(specs_module, "SPECS", dict(specs_module.SPECS))
    shipped = specs_module.SPECS["qwen3_moe"]
    specs_module.register_spec("qwen3_moe", spec=replace_dataclass(shipped, name="qwen3_moe-experts-only",
                                                                    dense_mlp=None), replace=True)
    config = tiny_config("qwen3_moe")
    for key, value in dense.items():
        setattr(config, key, value)
    model = t.Qwen3MoeForCausalLM(config)
    with pytest.raises(ValueError, match=r"'mlp' cannot be pruned in a 'qwen3_moe' model: its blocks \[0\] hold a "
                                         r"dense MLP .*'qwen3_moe-experts-only' does not describe "
                                         r".*target_groups=\('heads',\)"):
        prepare_model(model, MaskedDoRAConfig(importance="none"))
    assert not any(isinstance(m, (MaskedDoRALinear, MaskedDoRAExperts)) for m in model.modules())
    prepare_model(model, MaskedDoRAConfig(target_groups=("heads",), importance="none", target_sparsity=0.25,
                                          allocation="global"))
    randomize_adapters(model)
    with torch.no_grad():
        get_state(model).group("heads", 0).mask_logits.add_(5.0)  # layer 0 keeps both KV groups, layer 1 one
    ref, small, out = harden_and_compact(model)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    inputs = tiny_inputs()
    assert [s["kv_heads"] for s in getattr(small.config, LAYER_SIZES_KEY)] == [2, 1]
    assert_reloads_and_generates_equal(small, tmp_path, model, ref, inputs)


def test_training_state_round_trips_bit_exactly(tmp_path):
    model = _prepared("mixtral")
    save_training_state(model, str(tmp_path))
    fresh = load_training_state(tiny_model("mixtral", kind="lm"), str(tmp_path))
    inputs = tiny_inputs()
    with torch.no_grad():
        assert torch.equal(output_tensor(fresh(**inputs)), output_tensor(model(**inputs)))
    names = json.dumps(sorted(dict(fresh.named_parameters())))
    assert "experts.gate_up.3.lora_A" in names


def test_export_peft_refuses_experts_before_writing(tmp_path):
    model = _prepared("mixtral")
    with pytest.raises(NotImplementedError, match="PEFT adapts packed expert parameters only with plain LoRA"):
        export_peft(model, str(tmp_path / "adapter"))
    assert not (tmp_path / "adapter").exists()


def test_experts_module_checks_its_inputs():
    experts = MaskedDoRAExperts.from_packed(torch.randn(2, 8, 6), torch.randn(2, 6, 4), torch.nn.functional.silu,
                                            rank=2)
    with pytest.raises(ValueError, match=r"down_proj: expected shape \(2, 6, 4\)"):
        MaskedDoRAExperts.from_packed(torch.randn(2, 8, 6), torch.randn(2, 6, 3), torch.nn.functional.silu)
    with pytest.raises(ValueError, match=r"hidden_states: expected \(tokens, 6\)"):
        experts(torch.randn(3, 5), torch.zeros(3, 1, dtype=torch.long), torch.ones(3, 1))
    with pytest.raises(ValueError, match="top_k_index, top_k_weights: expected equal shapes"):
        experts(torch.randn(3, 6), torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 1))


def test_experts_layout_refuses_dbrx_flags_with_other_layouts():
    from masked_dora.models.spec_types import ExpertsLayout

    for other in (dict(bias=True), dict(interleaved=True), dict(transposed=True)):
        with pytest.raises(ValueError, match="flat, up and down_transposed describe DBRX's layout"):
            ExpertsLayout(flat=True, up="mlp.v1", **other)


def test_experts_take_unflattened_tokens_with_flat_routing():
    """DBRX's experts get the block's (batch, seq, H) tokens with (batch * seq, k) routing and return them so."""
    torch.manual_seed(0)
    experts = MaskedDoRAExperts.from_packed(torch.randn(3, 8, 6), torch.randn(3, 6, 4), torch.nn.functional.silu,
                                            rank=2).eval()
    x, index, weights = torch.randn(2, 5, 6), torch.randint(0, 3, (10, 2)), torch.rand(10, 2)
    with torch.no_grad():
        out = experts(x, index, weights)
        assert out.shape == x.shape
        torch.testing.assert_close(out, experts(x.view(10, 6), index, weights).view(2, 5, 6), rtol=0, atol=0)


def test_experts_forward_matches_the_float64_reference():
    """Each token's output is the weighted sum over its top-k experts of D_e(act(G_e x) * U_e x), with every
    projection masked DoRA (float64 reference by hand, pruned channels included)."""
    torch.manual_seed(0)
    E, H, inter = 3, 6, 4
    experts = MaskedDoRAExperts.from_packed(torch.randn(E, 2 * inter, H, dtype=torch.float64),
                                            torch.randn(E, H, inter, dtype=torch.float64), torch.nn.functional.silu,
                                            rank=2)
    with torch.no_grad():
        for layer in list(experts.gate_up) + list(experts.down):
            layer.lora_B.normal_()
            layer.magnitude.mul_(1.5)
        experts.gate_up[1].set_mask(torch.tensor([1, 0, 1, 1] * 2, dtype=torch.bool))
    experts.eval()
    x = torch.randn(5, H, dtype=torch.float64)
    index = torch.tensor([[0, 1], [1, 2], [2, 0], [1, 0], [E, 1]])  # E: no local expert
    weights = torch.rand(5, 2, dtype=torch.float64)

    def dora(layer, v):
        w = layer.weight + layer.scaling * layer.lora_B @ layer.lora_A
        scale = layer.magnitude * layer.keep_mask().double() / w.norm(dim=1)
        return (v @ w.T) * scale

    expected = torch.zeros_like(x)
    for t in range(5):
        for k in range(2):
            e = int(index[t, k])
            if e == E:
                continue
            g, u = dora(experts.gate_up[e], x[t]).chunk(2)
            expected[t] += weights[t, k] * dora(experts.down[e], torch.nn.functional.silu(g) * u)
    with torch.no_grad():
        out = experts(x, index, weights)
    assert ((out - expected).norm() / expected.norm()).item() < 1e-12


def test_a_prepared_moe_model_saves_with_save_pretrained(tmp_path):
    """The Trainer saves checkpoints with save_pretrained: transformers' save-time conversion must not take the
    wrapped experts' layers for packed experts (it did while they kept the packed parameters' names)."""
    from safetensors.torch import load_file

    model = _prepared("mixtral")
    model.save_pretrained(tmp_path)
    saved = load_file(os.path.join(tmp_path, "model.safetensors"))
    assert saved.keys() == model.state_dict().keys()  # its own keys: the Trainer resumes with load_state_dict
    assert saved["model.layers.0.mlp.experts.gate_up.3.lora_A"].shape == (4, 32)
    assert torch.equal(saved["model.layers.1.mlp.experts.down.2.weight"],
                       model.model.layers[1].mlp.experts.down[2].weight)


def test_trainer_checkpoints_and_resumes_a_moe_model(tmp_path):
    """The HF Trainer with the callback, gradient checkpointing and a checkpoint every step (save_pretrained of
    the prepared model), then a resume, bit for bit: the path a Mixtral fine-tune takes. (The Trainer resumes with
    a plain load_state_dict; while save_pretrained converted the prepared model to the hub layout, the experts'
    adapters were not found on resume and restarted from their step-0 values, with only a logged warning.)"""
    from transformers import Trainer, TrainingArguments

    from masked_dora.models import MaskedDoRACallback, param_groups

    def run(max_steps, resume):
        torch.manual_seed(0)
        model = _prepared("mixtral", lora_dropout=0.0)
        data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(3, 97, (8, 9))]
        args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=max_steps, per_device_train_batch_size=4,
                                 learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="steps", save_steps=1,
                                 disable_tqdm=True, gradient_checkpointing=True, seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[MaskedDoRACallback(model)],
                          optimizer_cls_and_kwargs=(torch.optim.AdamW, {"params": param_groups(model, lr=1e-3)}))
        trainer.train(resume_from_checkpoint=resume)
        return model

    full = run(2, None)
    assert (tmp_path / "out" / "checkpoint-1").is_dir() and (tmp_path / "out" / "checkpoint-2").is_dir()
    resumed = run(2, str(tmp_path / "out" / "checkpoint-1"))
    for (name, p), q in zip(full.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.skipif("granitemoe_swa" not in TABLE_FAMILIES, reason="this transformers has no GraniteMoE-SWA")
def test_granitemoe_swa_sinks_follow_their_query_heads(tmp_path):
    """GraniteMoE-SWA's self_attn.sinks (one logit per query head, zeros at init: made distinct here) are cut to
    the kept query heads; the compacted model equals the masked one and reloads equal."""
    model = tiny_model("granitemoe_swa", kind="lm")
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.copy_(torch.tensor([0.5, -1.0, 1.5, -0.25]))
    prepare_model(model, MaskedDoRAConfig(target_groups=("heads",), rank=2, importance="none", gqa="query_heads",
                                          target_sparsity=0.5))
    randomize_adapters(model)
    with torch.no_grad():  # keep the second head of each KV group (1 and 3)
        for group in get_state(model).groups_of("heads"):
            group.mask_logits.copy_(torch.tensor([-1.0, 1.0, -1.0, 1.0]))
    ref, small, out = harden_and_compact(model)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for layer in small.model.layers:
        torch.testing.assert_close(layer.self_attn.sinks, torch.tensor([-1.0, -0.25]), rtol=0, atol=0)
    small.save_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(output_tensor(load_compact(str(tmp_path))(**tiny_inputs())), ref,
                                   rtol=1e-4, atol=1e-5)

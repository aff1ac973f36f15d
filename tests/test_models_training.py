"""Training: the Trainer callback inside a real 2-step Trainer run, and the plain loop."""

import pytest
import torch

from masked_dora.models import (MaskedDoRACallback, MaskedDoRAConfig, get_state, harden, kept_fraction,
                                prepare_model, train_masked)

from tiny_models import lm_batches, randomize_adapters, tiny_model


def test_callback_runs_inside_trainer(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = tiny_model("llama", kind="lm")
    cfg = MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5,
                           temperature=1.0, final_temperature=0.5, temperature_steps=2)
    prepare_model(model, cfg)
    rows = [{k: v[i] for k, v in b.items()} for b in lm_batches() for i in range(2)]
    callback = MaskedDoRACallback(model, lambda_lr=0.5)
    logits_before = get_state(model).group("mlp", 0).mask_logits.detach().clone()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2,
                             learning_rate=1e-2, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback])
    trainer.train()
    assert trainer.state.global_step == 2
    ctrl = callback.mask_trainer.controller.controllers["mlp"]
    assert int(ctrl.step) == 2
    # the penalty reached the loss: the multipliers moved (gradient ascent) and so did the mask logits
    assert float(ctrl.lambda_1.detach()) != 0.0
    assert not torch.equal(get_state(model).group("mlp", 0).mask_logits.detach(), logits_before)
    # the temperature followed its schedule (step 1 of 2: sqrt(1.0 * 0.5))
    assert float(get_state(model).group("mlp", 0).gate.temperature) == pytest.approx(0.5 ** 0.5, rel=1e-5)
    logged = [e for e in trainer.state.log_history if "sparsity/mlp_expected_keep" in e]
    assert len(logged) >= 2 and len(callback.history) >= 2
    assert logged[-1]["sparsity/mlp_target_keep"] == pytest.approx(0.5)
    # the hook is removed after training: eval losses carry no penalty
    assert not model._forward_hooks or all(type(h).__name__ != "_AddPenalty" for h in model._forward_hooks.values())


def test_train_masked_reaches_target_and_hardens_exactly():
    model = tiny_model("llama", kind="lm")
    cfg = MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5,
                           target_groups=("mlp",))
    prepare_model(model, cfg)
    log = train_masked(model, lm_batches(), lambda m, b: m(**b).loss, steps=40, lr=1e-3, mask_lr=0.1,
                       log_every=10)
    assert len(log) == 5 and all(torch.isfinite(torch.tensor(e["loss"])) for e in log)
    assert log[-1]["sparsity/mlp_expected_keep"] < log[0]["sparsity/mlp_expected_keep"]
    assert not model.training
    harden(model)
    assert kept_fraction(model, "mlp") == 0.5


def test_train_masked_rejects_bad_input():
    model = tiny_model("llama", kind="lm")
    with pytest.raises(ValueError, match="prepare_model"):
        train_masked(model, lm_batches(), lambda m, b: m(**b).loss, steps=1)
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none"))
    with pytest.raises(ValueError, match="steps"):
        train_masked(model, lm_batches(), lambda m, b: m(**b).loss, steps=0)
    with pytest.raises(ValueError, match="batches"):
        train_masked(model, [], lambda m, b: m(**b).loss, steps=1)


def test_prepared_model_compiles_as_one_graph():
    """torch.compile(fullgraph=True) of a prepared decoder: eval equals eager, training step traces."""
    from masked_dora import MaskedDoRAConfig, prepare_model
    from tiny_models import output_tensor, tiny_inputs, tiny_model

    model = prepare_model(tiny_model("llama"), MaskedDoRAConfig(
        rank=4, alpha=8, target_groups=("mlp", "heads"), target_sparsity={"mlp": 0.25, "heads": 0.5},
        alignment={"mlp": 8, "heads": 1}, importance="none"))
    inputs = tiny_inputs()
    model.eval()
    eager = output_tensor(model(**inputs))
    compiled = torch.compile(lambda **kw: output_tensor(model(**kw)), fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(**inputs), eager, rtol=1e-5, atol=1e-6)
    model.train()
    loss_fn = torch.compile(lambda **kw: output_tensor(model(**kw)).pow(2).mean(), fullgraph=True,
                            backend="aot_eager")
    loss = loss_fn(**inputs)
    loss.backward()
    logits = [p for n, p in model.named_parameters() if n.endswith("mask_logits") and p.requires_grad]
    assert logits and all(p.grad is not None for p in logits)


def _loss_and_grads(checkpointing, family="llama"):
    """One training forward/backward of a prepared tiny ``family`` under ``checkpointing``, same gate noise."""
    from torch.utils.checkpoint import checkpoint

    from masked_dora.models.blocks import model_blocks
    from masked_dora.models.specs import spec_for

    model = tiny_model(family, kind="lm")
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5,
                                          gqa="query_heads"))
    randomize_adapters(model)  # mixed logits: a gate sample clamped at 1 would have no gradient anyway
    model.train()
    if checkpointing in ("reentrant", "non_reentrant"):
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": checkpointing == "reentrant"})
    elif checkpointing == "torch_block":  # torch.utils.checkpoint around one decoder block, by hand
        block = model_blocks(model, spec_for(model))[1].module
        inner = block.forward
        block.forward = lambda *a, **k: checkpoint(inner, *a, use_reentrant=False, **k)
    batch = lm_batches(1)[0]
    torch.manual_seed(123)  # the same gate noise in every variant
    out = model(**batch)
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return out.loss.detach(), grads


@pytest.mark.parametrize("family", ["llama", "mixtral", "falcon"])  # Mixtral: MoE experts; Falcon: fused q/k/v
@pytest.mark.parametrize("checkpointing", ["non_reentrant", "reentrant", "torch_block"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(checkpointing, family):
    """The gate is sampled once per forward, before any block: a checkpoint recomputes with the same sample.
    (Sampled lazily inside the first block, non-reentrant raised CheckpointError and reentrant left every
    mask logit without a gradient.)"""
    if (checkpointing, family) == ("torch_block", "falcon"):
        pytest.skip("a hand-wrapped torch.utils.checkpoint around a Falcon block fails on the plain model too "
                    "(a size mismatch inside FalconDecoderLayer); HF's gradient checkpointing is checked above")
    ref_loss, ref = _loss_and_grads(None, family)
    loss, grads = _loss_and_grads(checkpointing, family)
    assert torch.equal(loss, ref_loss)
    logits = [n for n in ref if n.endswith("mask_logits")]
    assert len(logits) == 4 and all(ref[n] is not None and ref[n].abs().sum() > 0 for n in logits)
    for name, g in ref.items():
        assert grads[name] is not None, f"{checkpointing}: no gradient for {name}"
        assert torch.allclose(grads[name], g, rtol=1e-5, atol=1e-7), name


# ---------------------------------------------------------------- budget="exact": the hardening plan in every forward

def _exact_model(allocation="uniform"):
    model = tiny_model("llama", kind="lm")
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5,
                                          budget="exact", allocation=allocation, gqa="query_heads"))
    randomize_adapters(model)
    with torch.no_grad():  # distinct logits, so the plan is unambiguous
        gen = torch.Generator().manual_seed(5)
        for g in get_state(model).groups.values():
            g.mask_logits.copy_(torch.randn(g.num_units, generator=gen))
    return model


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_exact_budget_trains_at_the_target_and_hardens_to_what_it_trained(allocation):
    model = _exact_model(allocation)
    state = get_state(model)
    model.train()
    out = model(**lm_batches(1)[0])
    kept = {k: g.values().detach() for k, g in state.groups.items()}
    assert all(bool(((v == 0) | (v == 1)).all()) for v in kept.values())  # hard 0/1 in the forward
    for kind in ("mlp", "heads"):
        assert kept_fraction(model, kind) == 0.5  # exactly the target, every step
    out.loss.backward()
    grads = [g.mask_logits.grad for g in state.groups.values()]
    assert all(gr is not None and gr.abs().sum() > 0 for gr in grads)  # straight-through reaches the logits
    from masked_dora.models import SparsityController

    assert float(SparsityController(model).penalty(model)) == 0.0
    planned = {k: g.hard().clone() for k, g in state.groups.items()}
    harden(model)
    assert all(torch.equal(g.fixed_keep, planned[k]) for k, g in state.groups.items())  # nothing flips


@pytest.mark.parametrize("budget", ["exact", "lagrangian"])
def test_pruned_units_logit_gradients_equal_the_full_p_backward(budget, monkeypatch):
    """The layers keep their output, not P (issue 16); a unit the plan prunes (z = 0) still needs dc under
    budget="exact" (straight-through): its logit gradient equals the backward that recomputes P in full."""
    from masked_dora.ops import _saved_output

    def grads():
        model = _exact_model()
        if budget == "lagrangian":
            get_state(model).config.budget = "lagrangian"
        model.train()
        torch.manual_seed(3)
        model(**lm_batches(1)[0]).loss.backward()
        return {k: g.mask_logits.grad.clone() for k, g in get_state(model).groups.items()}

    kept = grads()
    monkeypatch.setattr(_saved_output, "take", lambda ctx: None)  # every layer: P recomputed in full
    full = grads()
    for k in kept:
        assert torch.allclose(kept[k], full[k], rtol=1e-4, atol=1e-6), k
    if budget == "exact":  # pruned heads learn (through o_proj's gated input; a SwiGLU channel at z = 0 gets none)
        assert all(bool((full[k] != 0).all()) for k in full if k.startswith("heads"))


def test_exact_budget_logits_learn_and_eval_uses_the_plan():
    model = _exact_model()
    state = get_state(model)
    before = {k: g.mask_logits.detach().clone() for k, g in state.groups.items()}
    train_masked(model, lm_batches(), lambda m, b: m(**b).loss, steps=5, lr=1e-3, mask_lr=0.1)
    assert any(not torch.equal(g.mask_logits.detach(), before[k]) for k, g in state.groups.items())
    model.eval()
    model(**lm_batches(1)[0])
    assert kept_fraction(model, "mlp") == 0.5  # eval before hardening: the same exact plan, not the signs


def test_exact_budget_plans_once_per_step_and_follows_a_loaded_config():
    model = _exact_model()
    state = get_state(model)
    batch = lm_batches(1)[0]
    model.train()
    model(**batch)
    plan = state.exact_plan()
    model(**batch)  # no logit changed: the same plan object, not planned again
    assert state.exact_plan() is plan
    with torch.no_grad():
        state.group("mlp", 0).mask_logits.mul_(-1.0)  # an optimizer step: planned again, differently
    assert state.exact_plan() is not plan
    state.config.budget = "lagrangian"  # e.g. a training state loaded later: the hook reads the config
    model(**batch)
    assert all(g._planned is None for g in state.groups.values())


def test_exact_budget_with_gradient_checkpointing_gives_the_same_gradients():
    grads = {}
    for checkpointing in (False, True):
        model = _exact_model()
        model.train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(**lm_batches(1)[0]).loss.backward()
        grads[checkpointing] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    for name, g in grads[False].items():
        assert grads[True][name] is not None and torch.allclose(grads[True][name], g, rtol=1e-5, atol=1e-7), name


def test_budget_is_validated():
    with pytest.raises(ValueError, match="budget"):
        MaskedDoRAConfig(budget="soft")


def test_exact_budget_inside_the_trainer(tmp_path):
    """The user's path: the HF Trainer with the callback; the masks learn and the budget holds every step."""
    from transformers import Trainer, TrainingArguments

    model = _exact_model()
    rows = [{k: v[i] for k, v in b.items()} for b in lm_batches() for i in range(2)]
    callback = MaskedDoRACallback(model)
    before = {k: g.mask_logits.detach().clone() for k, g in get_state(model).groups.items()}
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=2,
                             learning_rate=1e-2, logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
                             disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback]).train()
    state = get_state(model)
    assert any(not torch.equal(g.mask_logits.detach(), before[k]) for k, g in state.groups.items())
    assert all(e["sparsity/mlp_hard_keep"] == 0.5 for e in callback.history)
    assert float(callback.mask_trainer.controller.controllers["mlp"].lambda_1.detach()) == 0.0  # no penalty


@pytest.mark.parametrize("family, takes_items", [("llama", True), ("bert", False)])
def test_penalty_share_follows_how_the_head_uses_num_items(family, takes_items):
    """With the Trainer's ``num_items_in_batch``, a head that divides by it (Llama's causal-LM loss) gets the
    micro-batch's token share of the penalty; a head that takes its own mean and drops it (BERT's masked-LM
    head, transformers #47688: the Trainer then skips its accumulation division) gets the full penalty with
    every micro-batch, keeping the penalty's ratio to the task loss as on one process."""
    from masked_dora.models.training import MaskTrainer, _AddPenalty, loss_takes_num_items

    model = tiny_model(family, kind="lm")
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5))
    randomize_adapters(model)
    assert loss_takes_num_items(model) is takes_items
    trainer = MaskTrainer(model)
    model.train()
    batch = lm_batches(1)[0]
    labels = batch["labels"].clone()
    labels[0, :4] = -100
    counted = int(labels[:, 1:].ne(-100).sum()) if family == "llama" else int(labels.ne(-100).sum())
    items = 3 * counted  # this micro-batch holds a third of the step's label tokens
    torch.manual_seed(0)
    plain = model(**batch | {"labels": labels}, num_items_in_batch=items).loss
    handle = model.register_forward_hook(_AddPenalty(trainer), with_kwargs=True)
    try:
        torch.manual_seed(0)
        hooked = model(**batch | {"labels": labels}, num_items_in_batch=items).loss
    finally:
        handle.remove()
    penalty = trainer.penalty()
    assert float(penalty) != 0.0
    share = 1 / 3 if takes_items else 1.0
    torch.testing.assert_close(hooked, plain + share * penalty, rtol=1e-6, atol=1e-7)


def test_mask_group_needs_an_optimizer_that_takes_one_or_has_it():
    """An optimizer that takes no group after it is built (DeepSpeed's ZeRO-3 wrapper) gets a clear error
    naming the fix; one built from param_groups is recognised by its group's name even when the wrapper
    replaced the tensors (ZeRO-3 keeps flat partitions), and is left alone."""
    from masked_dora.models import param_groups
    from masked_dora.models.training import use_mask_group

    model = tiny_model("llama", kind="lm")
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5))

    class Frozen:  # param groups, no add_param_group
        def __init__(self, groups):
            self.param_groups = groups

    plain = Frozen([{"params": [p for p in model.parameters() if p.requires_grad], "lr": 1e-3}])
    with pytest.raises(TypeError, match=r"optimizer: a Frozen takes no parameter group.*optimizer_cls_and_kwargs"):
        use_mask_group(plain, model)
    flat = [dict(g, params=[torch.zeros(1)]) for g in param_groups(model, lr=1e-3)]  # as ZeRO-3 flattens them
    assert use_mask_group(Frozen(flat), model) is False


def test_controller_state_as_json_round_trips_bit_exactly():
    """The callback's entry in trainer_state.json: every tensor comes back with its dtype and bits (float32,
    bfloat16, float16, int64; awkward values included), an optimizer's integer-keyed state keeps its keys
    (JSON would turn them into strings, and torch's load_state_dict would then drop the state without a word)."""
    import json

    from masked_dora.models.json_state import from_json, to_json

    model = tiny_model("llama", kind="lm")
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5))
    from masked_dora.models.training import MaskTrainer

    helper = MaskTrainer(model)
    for step in range(3):  # moments, steps and multipliers that are not round numbers
        helper.begin_step(step)
        helper.penalty().backward()
        helper.end_step()
    state = helper.state_dict()
    state["extra"] = {"f32": torch.tensor([1 / 3, -0.0, 1e-38, 3.4e38], dtype=torch.float32),
                      "bf16": torch.tensor([1 / 3, 7.0], dtype=torch.bfloat16),
                      "f16": torch.tensor([[1 / 3], [6e-8]], dtype=torch.float16), "tuple": (0.9, 0.999)}
    back = from_json(json.loads(json.dumps(to_json(state))))
    assert set(back["optimizer"]["state"]) == set(state["optimizer"]["state"]) == {0, 1, 2, 3}

    def bits(t):
        return t.view({2: torch.int16, 4: torch.int32}[t.element_size()]) if t.is_floating_point() else t

    def same(a, b):
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a), bits(b)), (a, b)
        elif isinstance(a, dict):
            assert a.keys() == b.keys()
            for k in a:
                same(a[k], b[k])
        elif isinstance(a, (list, tuple)):
            assert isinstance(b, list) and len(a) == len(b)
            for x, y in zip(a, b):
                same(x, y)
        else:
            assert a == b and type(a) is type(b), (a, b)

    same(state, back)
    fresh = MaskTrainer(model)
    fresh.load_state_dict(back)
    assert all(torch.equal(fresh.controller.state_dict()[k], v) for k, v in helper.controller.state_dict().items())
    with pytest.raises(TypeError, match="value: cannot write a object as JSON"):
        to_json({"x": object()})


def test_callback_warns_when_its_checkpoints_cannot_resume_and_when_a_resume_has_no_state(tmp_path):
    """The group the callback adds to the Trainer's own optimizer is not there when a resumed Trainer loads the
    saved optimizer state (that load comes before any callback runs): a run that adds it and saves checkpoints
    says how to build the optimizer instead. A checkpoint without the controller's state (an older version's)
    resumes with a warning that the multipliers restart."""
    import json
    import warnings

    from transformers import Trainer, TrainingArguments

    from masked_dora.models import param_groups

    model = tiny_model("llama", kind="lm")
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5))
    rows = [{k: v[i] for k, v in b.items()} for b in lm_batches() for i in range(2)]

    def trainer(out, callback, **kw):
        args = TrainingArguments(output_dir=str(tmp_path / out), max_steps=2, per_device_train_batch_size=2,
                                 report_to=[], use_cpu=True, save_strategy="steps", save_steps=1, disable_tqdm=True)
        return Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback], **kw)

    def groups():
        return dict(optimizer_cls_and_kwargs=(torch.optim.AdamW, {"params": param_groups(model, lr=1e-3)}))

    with pytest.warns(UserWarning, match=r"resume only into an optimizer that has that group.*optimizer_cls_and_kwargs"):
        trainer("own", MaskedDoRACallback(model)).train()
    with warnings.catch_warnings():  # built with the groups: no warning
        warnings.simplefilter("error", UserWarning)
        trainer("groups", MaskedDoRACallback(model), **groups()).train()
    checkpoint = tmp_path / "groups" / "checkpoint-1"
    saved = json.loads((checkpoint / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["masked_dora"]["controller"]["controllers.mlp.step"]["__tensor__"] == 1
    del saved["stateful_callbacks"]["masked_dora"]
    (checkpoint / "trainer_state.json").write_text(json.dumps(saved))
    with pytest.warns(UserWarning, match="resuming at step 1 from a checkpoint without masked_dora's controller state"):
        trainer("groups", MaskedDoRACallback(model), **groups()).train(resume_from_checkpoint=str(checkpoint))


@pytest.mark.parametrize("strategy", ["steps", "epoch", "best"])
def test_every_checkpoint_carries_the_controller_state_of_its_own_step(tmp_path, strategy):
    """Whatever decides a save (every N steps, every epoch, a new best evaluation, which the Trainer decides
    only after the step's end event), the checkpoint's controller entry is from that checkpoint's step."""
    import json

    from transformers import Trainer, TrainingArguments

    from masked_dora.models import param_groups

    model = tiny_model("llama", kind="lm")
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5))
    rows = [{k: v[i] for k, v in b.items()} for b in lm_batches() for i in range(2)]  # 8 rows: 4 steps an epoch
    extra = dict(save_steps=3) if strategy == "steps" else {}
    if strategy == "best":
        extra = dict(eval_strategy="steps", eval_steps=1, metric_for_best_model="loss", greater_is_better=False)
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=2,
                             report_to=[], use_cpu=True, save_strategy=strategy, disable_tqdm=True, **extra)
    Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:2], callbacks=[MaskedDoRACallback(model)],
            optimizer_cls_and_kwargs=(torch.optim.AdamW, {"params": param_groups(model, lr=1e-3)})).train()
    checkpoints = sorted(tmp_path.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(checkpoints) >= (1 if strategy == "best" else 2)
    for checkpoint in checkpoints:
        saved = json.loads((checkpoint / "trainer_state.json").read_text())
        step = saved["stateful_callbacks"]["masked_dora"]["controller"]["controllers.mlp.step"]["__tensor__"]
        assert step == saved["global_step"] == int(checkpoint.name.split("-")[1])


def test_row_norms_refresh_every_forward_when_a_sharding_engine_regathers(monkeypatch):
    """FSDP2 writes each forward's gathered parameters into their buffers with the version counter preserved
    (torch.autograd._unsafe_preserve_version_counter, as done here), so the row-norm cache's key cannot see
    the new values; CI caught a norm one step old. A prepared model whose parameters are re-gathered
    (is_regathered) forgets its norms at every forward; the blind spot itself is shown first."""
    from masked_dora.models import group_mask
    from masked_dora.ops.row_norm import row_norm

    model = tiny_model("llama", kind="lm")
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5))
    randomize_adapters(model)
    layer = model.model.layers[0].mlp.up_proj
    inputs = lm_batches(1)[0]

    def fresh():
        return row_norm(layer.weight, layer.lora_A, layer.lora_B, layer.scaling, None, layer.norm_eps)

    def regather_a_new_step():
        with torch.no_grad(), torch.autograd._unsafe_preserve_version_counter(layer.lora_B):
            layer.lora_B.add_(0.05)

    def gap():
        return float(((layer.weight_norm() - fresh()).abs() / fresh()).max())

    model(**inputs)
    regather_a_new_step()
    model(**inputs)
    assert gap() > 1e-3  # without the engine's signal the key cannot tell
    monkeypatch.setattr(group_mask, "is_regathered", lambda param: True)
    model(**inputs)
    assert gap() == 0.0
    regather_a_new_step()
    model(**inputs)
    assert gap() == 0.0


def test_is_regathered_recognises_sharded_parameters():
    from masked_dora.nn.norm_cache import is_regathered

    plain = torch.nn.Parameter(torch.zeros(3))
    assert not is_regathered(plain)
    plain.ds_id = 7  # what DeepSpeed ZeRO-3 puts on the parameters it partitions
    assert is_regathered(plain)

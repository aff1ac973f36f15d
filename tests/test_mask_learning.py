"""What the masks learn (``mask_learning="layer"``: one offset per layer) and one continuous run
(``train_masked(harden_after=...)``): the options issue 12's quality study measures."""

import pytest
import torch

from masked_dora.models import MaskedDoRAConfig, get_state, prepare_model, train_masked

from tiny_models import lm_batches, tiny_model


def _loss(model, batch):
    return model(**batch).loss


def _prepared(**overrides):
    model = tiny_model("llama", kind="lm")
    cfg = dict(rank=4, alignment={"mlp": 8}, importance="magnitude", target_sparsity=0.5, budget="exact",
               allocation="global")
    prepare_model(model, MaskedDoRAConfig(**{**cfg, **overrides}))
    return model


def _logits(model):
    return {k: g.mask_logits.detach().clone() for k, g in get_state(model).groups.items()}


def test_mask_learning_is_validated():
    with pytest.raises(ValueError, match="mask_learning"):
        MaskedDoRAConfig(mask_learning="heads")
    assert MaskedDoRAConfig().mask_learning == "units"


@pytest.mark.parametrize("budget", ["exact", "lagrangian"])
def test_layer_learning_gives_every_unit_the_mean_gradient(budget):
    units, layer = _prepared(budget=budget), _prepared(budget=budget, mask_learning="layer")
    assert not any(g.tied for g in get_state(units).groups.values())
    assert all(g.tied for g in get_state(layer).groups.values())
    for model in (units, layer):
        model.train()
        torch.manual_seed(0)  # the same gate samples (lagrangian) in both models
        _loss(model, lm_batches()[0]).backward()
    differ = 0
    for key, g in get_state(layer).groups.items():
        own = get_state(units).groups[key].mask_logits.grad
        differ += not torch.allclose(own, own.mean().expand_as(own))  # untied, units get their own gradients
        assert torch.allclose(g.mask_logits.grad, own.mean().expand_as(own), rtol=1e-5, atol=1e-9), key
        # the forward read the same values: the tie changes gradients only
        assert torch.equal(g.logits().detach(), g.mask_logits.detach())
    assert differ > 0


@pytest.mark.parametrize("hidden_mode", ["global", "per_block"])
def test_layer_learning_ties_the_hidden_groups_too(hidden_mode):
    model = _prepared(mask_learning="layer", target_groups=("mlp", "heads", "hidden"), hidden_mode=hidden_mode,
                      allocation="uniform")
    groups = get_state(model).groups
    assert any(g.kind == "hidden" for g in groups.values()) and all(g.tied for g in groups.values())
    before = _logits(model)
    train_masked(model, lm_batches(), _loss, steps=2, lr=1e-3, mask_lr=0.2)
    for key, after in _logits(model).items():
        shift = after - before[key]
        assert shift.abs().max() > 0 and torch.allclose(shift, shift[0].expand_as(shift), atol=1e-5), key


def test_layer_learning_keeps_the_order_inside_each_layer_and_moves_budgets():
    model = _prepared(mask_learning="layer")
    before = _logits(model)
    train_masked(model, lm_batches(), _loss, steps=6, lr=1e-3, mask_lr=0.2)
    moved = []
    for key, after in _logits(model).items():
        shift = after - before[key]
        assert torch.allclose(shift, shift[0].expand_as(shift), atol=1e-5), key  # one offset per group
        moved.append(float(shift[0]))
    assert max(abs(m) for m in moved) > 0.1
    assert len({round(m, 4) for m in moved}) > 1  # the layers moved by different offsets


def test_harden_after_is_one_continuous_run():
    learned = _prepared(budget="lagrangian", mask_learning="units")
    torch.manual_seed(0)
    train_masked(learned, lm_batches(), _loss, steps=3, lr=1e-2, mask_lr=0.1)
    continuous = _prepared(budget="lagrangian", mask_learning="units")
    torch.manual_seed(0)
    log = train_masked(continuous, lm_batches(), _loss, steps=6, lr=1e-2, mask_lr=0.1, harden_after=3,
                       log_every=1)
    state = get_state(continuous)
    assert all(bool(g.mask_fixed) for g in state.groups.values())  # hardened
    for key, logits in _logits(continuous).items():  # the logits stopped learning at the hardening
        assert torch.equal(logits, _logits(learned)[key]), key
    assert [e["penalty"] == 0.0 for e in log] == [False] * 3 + [True] * 3
    # the adapters kept training after the hardening, at the full size (no compact_for_training)
    assert not state.compacted_for_training
    a = dict(learned.named_parameters())
    assert any(not torch.equal(p, a[n]) for n, p in continuous.named_parameters() if n.endswith("lora_B"))


@pytest.mark.parametrize("bad", [0, 6, 7, 2.0, True])
def test_harden_after_is_validated(bad):
    model = _prepared()
    with pytest.raises(ValueError, match="harden_after"):
        train_masked(model, lm_batches(), _loss, steps=6, harden_after=bad)


def test_cubic_progress_schedule():
    from masked_dora.models.sparsity import cubic_progress

    assert cubic_progress(0, 10) == 0.0 and cubic_progress(10, 10) == 1.0 and cubic_progress(50, 10) == 1.0
    assert cubic_progress(5, 10) == pytest.approx(1 - 0.5 ** 3)
    assert cubic_progress(3, 0) == 1.0
    with pytest.raises(ValueError, match="steps"):
        cubic_progress(0, -1)


def test_exact_budget_warmup_prunes_gradually_and_hardens_at_the_target():
    from masked_dora.models import harden, kept_fraction
    from masked_dora.models.training import MaskTrainer

    model = _prepared(warmup_steps=4, allocation="uniform")
    trainer = MaskTrainer(model)
    kept = []
    model.train()
    for step in range(6):
        trainer.begin_step(step)
        _loss(model, lm_batches()[0])  # the forward fixes this step's plan
        kept.append(kept_fraction(model, "mlp"))
    assert kept[0] == 1.0 and kept[-1] == 0.5 and kept[4] == 0.5
    assert all(a >= b for a, b in zip(kept, kept[1:])) and 0.5 < kept[1] < 1.0  # gradually, the cubic's fast start
    trainer.begin_step(1)  # back in the ramp: hardening still removes the whole target
    harden(model)
    assert kept_fraction(model, "mlp") == 0.5
    with pytest.raises(ValueError, match="progress"):
        from masked_dora.models.sparsity import plan_current

        plan_current(get_state(model), 1.5)

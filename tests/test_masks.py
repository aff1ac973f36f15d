"""Gates, schedules and the sparsity controller."""

import math

import pytest
import torch

from masked_dora.masks import (GumbelSigmoidGate, HardConcreteGate, LagrangianController, Schedule,
                               SigmoidSTEGate, kept_count, make_gate, topk_keep)

GATE_CLASSES = [HardConcreteGate, GumbelSigmoidGate, SigmoidSTEGate]


@pytest.mark.parametrize("cls", GATE_CLASSES, ids=lambda c: c.name)
def test_eval_gate_is_exact_threshold(cls):
    gate = cls().eval()
    logits = torch.tensor([-3.0, -0.01, 0.0, 0.01, 5.0])
    assert gate(logits).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("cls", GATE_CLASSES, ids=lambda c: c.name)
def test_training_values_in_unit_interval_and_differentiable(cls):
    gate = cls().train()
    logits = torch.randn(1000, requires_grad=True)
    z = gate(logits)
    assert ((z >= 0) & (z <= 1)).all()
    z.sum().backward()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", [HardConcreteGate, GumbelSigmoidGate], ids=lambda c: c.name)
def test_expected_keep_matches_monte_carlo(cls):
    gate = cls().train()
    logits = torch.tensor([-2.0, -0.5, 0.0, 0.7, 2.5])
    samples = gate(logits.expand(40000, -1))
    # P(z > 1/2): the sample is on the kept side of the eval / hardening decision 1[theta > 0]
    empirical = (samples > 0.5).float().mean(0)
    assert torch.allclose(empirical, gate.expected_keep(logits), atol=0.01)
    assert ((gate.expected_keep(logits) > 0.5) == (gate.eval()(logits) == 1)).all()
    if cls is HardConcreteGate:  # the L0 quantity, P(z != 0), stays available
        assert torch.allclose((samples > 0).float().mean(0), gate.prob_nonzero(logits), atol=0.01)


@pytest.mark.parametrize("name", ["hard_concrete", "gumbel_sigmoid", "sigmoid_ste"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_gates_compute_in_fp32_and_training_agrees_with_eval(name, dtype):
    """bf16 sigmoid(1e-3) rounds to exactly 1/2: a half-precision straight-through forward dropped small
    positive logits that eval keeps. Gates compute in float32 whatever the logits' dtype."""
    logits = torch.tensor([1e-3, 2e-3, -1e-3, 0.01, -0.01, 3.0], dtype=dtype)
    gate = make_gate(name)
    assert gate.train()(logits).dtype == torch.float32 and gate.expected_keep(logits).dtype == torch.float32
    assert gate.train()(logits.double()).dtype == torch.float64  # float64 stays float64 (the reference tests)
    hard_eval = gate.eval()(logits)
    assert hard_eval.tolist() == [1, 1, 0, 1, 0, 1]
    if name == "sigmoid_ste":  # deterministic: the training forward is exactly the eval decision
        assert torch.equal(gate.train()(logits), hard_eval)


def test_hard_concrete_reaches_exact_zero_and_one_in_training():
    z = HardConcreteGate().train()(torch.zeros(5000))
    assert (z == 0).any() and (z == 1).any()


@pytest.mark.parametrize("cls", [HardConcreteGate, GumbelSigmoidGate], ids=lambda c: c.name)
def test_straight_through_forward_is_hard_backward_soft(cls):
    gate = cls(straight_through=True).train()
    logits = torch.randn(500, requires_grad=True)
    z = gate(logits)
    assert set(z.unique().tolist()) <= {0.0, 1.0}
    z.sum().backward()
    assert logits.grad.abs().sum() > 0


def test_sigmoid_ste_is_deterministic():
    gate = SigmoidSTEGate().train()
    logits = torch.randn(100)
    assert torch.equal(gate(logits), (logits > 0).float())


def test_temperature_is_a_saved_buffer_and_validated():
    gate = make_gate("gumbel_sigmoid")
    gate.set_temperature(0.2)
    assert gate.state_dict()["temperature"].item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="temperature: expected a positive float"):
        gate.set_temperature(0.0)
    with pytest.raises(ValueError, match="gate: expected one of"):
        make_gate("nope")
    assert make_gate(gate) is gate


def test_lower_temperature_sharpens_samples():
    logits = torch.full((20000,), 0.5)
    spread = {}
    for t in (1.0, 0.1):
        spread[t] = GumbelSigmoidGate(temperature=t).train()(logits)
    # at low temperature samples crowd at 0 and 1
    middle = lambda z: ((z > 0.1) & (z < 0.9)).float().mean().item()  # noqa: E731
    assert middle(spread[0.1]) < 0.5 * middle(spread[1.0])


@pytest.mark.parametrize("kind", ["linear", "exponential", "cosine"])
def test_schedule_endpoints_and_monotone(kind):
    s = Schedule(2.0, 0.1, 100, kind)
    assert s(0) == pytest.approx(2.0) and s(100) == pytest.approx(0.1) and s(1000) == pytest.approx(0.1)
    values = [s(i) for i in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_schedule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kind: expected one of"):
        Schedule(1, 0.1, 10, "step")
    with pytest.raises(ValueError, match="exponential schedule needs"):
        Schedule(1, 0, 10, "exponential")
    assert Schedule(3, 1, 10, "constant")(7) == 3


def test_kept_count_rounds_to_alignment():
    assert kept_count(4096, 0.25) == 3072
    assert kept_count(1000, 0.25, alignment=64) == 768
    assert kept_count(100, 0.99, alignment=8) == 8  # never below one aligned block
    with pytest.raises(ValueError, match="sparsity: expected a sparsity in"):
        kept_count(100, 1.0)
    with pytest.raises(ValueError, match="alignment: expected a positive int"):
        kept_count(100, 0.5, alignment=0)


def test_topk_keep_is_exact_and_stable():
    scores = torch.tensor([0.5, 3.0, -1.0, 3.0, 2.0])
    assert topk_keep(scores, 2).tolist() == [False, True, False, True, False]
    assert topk_keep(scores, 5).all()
    with pytest.raises(ValueError, match=r"keep: expected an int in \[1, 5\]"):
        topk_keep(scores, 0)


def test_lagrangian_controller_drives_expected_keep_to_target():
    torch.manual_seed(0)
    gate = HardConcreteGate()
    logits = torch.full((200,), 3.0, requires_grad=True)
    controller = LagrangianController(target_sparsity=0.4, warmup_steps=50)
    assert controller.target_keep(0) == 1.0 and controller.target_keep(25) == pytest.approx(0.8)
    opt = torch.optim.Adam([logits], lr=0.05)
    lagrange_opt = controller.make_optimizer(lr=0.05)
    for _ in range(400):
        penalty = controller(gate.expected_keep(logits).mean())
        opt.zero_grad(), lagrange_opt.zero_grad()
        penalty.backward()
        opt.step(), lagrange_opt.step()
        controller.advance()
    expected = gate.expected_keep(logits).mean().item()
    assert abs(expected - 0.6) < 0.05, expected
    assert math.isfinite(controller.lambda_1.item())
    # hardening then hits the target exactly
    keep = topk_keep(logits, kept_count(200, 0.4))
    assert int(keep.sum()) == 120


def test_controller_rejects_bad_target():
    with pytest.raises(ValueError, match="target_sparsity: expected a sparsity in"):
        LagrangianController(1.2)

r"""Gate parameterisations: mask logits theta -> gate values z in [0, 1].

Every gate has three behaviours:

* **training** (``module.training``): a stochastic, differentiable relaxation of
  a Bernoulli keep/drop decision, sampled fresh each call;
* **eval** (``not module.training``): the deterministic hard decision
  ``z = 1[theta > 0]``, exactly 0 or 1 (for every gate below, ``theta > 0`` is
  the point where the deterministic relaxation crosses 1/2);
* ``expected_keep(theta)``: the probability that a training sample lands on
  the kept side of the decision eval and hardening make (``z > 1/2``, which
  for every gate here is ``sigmoid(theta / tau)`` with the sigmoid-STE's tau and
  ``sigmoid(theta)`` otherwise: above 1/2 exactly where ``theta > 0``),
  differentiable: what a sparsity controller steers, so that the soft masks are
  steered to the count hardening keeps. (Hard-concrete's L0 quantity
  ``P(z != 0)`` is :meth:`HardConcreteGate.prob_nonzero`; it is above 1/2 for
  logits down to about -1.6, i.e. for channels that hardening drops.)

Gates compute in float32 whatever the logits' dtype (float64 logits stay
float64): a bf16 ``sigmoid`` rounds small positive logits to exactly 1/2, so a
bf16 straight-through forward would prune channels that eval keeps.

``straight_through=True`` makes the training forward value hard (0/1 at 1/2)
while gradients flow through the soft value (straight-through estimator).

The temperature is a buffer, so it is saved with the model; schedules set it
(see :mod:`masked_dora.masks.schedules`).

Hard-concrete (Louizos, Welling and Kingma, 2018)::

    u ~ U(0, 1);  s = sigmoid((log u - log(1 - u) + theta) / beta)
    z = clamp(s (zeta - gamma) + gamma, 0, 1)
    P(z != 0) = sigmoid(theta - beta log(-gamma / zeta)),   P(z > 1/2) = sigmoid(theta)

defaults beta = 2/3, gamma = -0.1, zeta = 1.1 (the paper's). The stretch past
[0, 1] gives exact zeros and ones with non-zero probability during training.

Gumbel-sigmoid (binary concrete, Jang et al. / Maddison et al., 2017)::

    z = sigmoid((theta + log u - log(1 - u)) / tau),   P(z > 1/2) = sigmoid(theta)

default tau = 0.5.

Sigmoid straight-through (``"sigmoid_ste"``): no noise; forward ``1[theta > 0]``,
backward the gradient of ``sigmoid(theta / tau)``. Deterministic training.
"""

from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor, nn


def _logistic_noise(like: Tensor, eps: float = 1e-6) -> Tensor:
    """``log u - log(1 - u)`` for ``u ~ U(eps, 1 - eps)``: ``logit`` clamps and transforms in one op."""
    return torch.logit(torch.rand_like(like), eps=eps)


def _full(logits: Tensor) -> Tensor:
    """The logits in float32 (float64 stays float64): gates never compute in half precision."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _straight_through(soft: Tensor, hard: Tensor) -> Tensor:
    """Forward ``hard``, gradient of ``soft``."""
    return hard + (soft - soft.detach())


class _StretchedSigmoid(torch.autograd.Function):
    """``clamp(sigmoid(t) (zeta - gamma) + gamma, 0, 1)`` keeping one vector for the backward, its input ``t``
    (autograd's composition keeps ``sigmoid(t)`` and the clamp's input): issue 16, a layer's saved vectors.
    The backward is autograd's, formula for formula (clamp, scalar product, sigmoid), on ``sigmoid(t)``
    recomputed with the forward's operation: bit-equal gradients, and differentiable again (double backward),
    with a generated vmap rule (``torch.func``). Forward-mode AD raises (no ``jvp``: ``torch.compile`` cannot
    trace a Function that defines one, and a prepared model compiles with ``fullgraph=True``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(t: Tensor, gamma: float, zeta: float) -> Tensor:
        return (torch.sigmoid(t) * (zeta - gamma) + gamma).clamp(0.0, 1.0)

    @staticmethod
    def setup_context(ctx, inputs, output):
        t, gamma, zeta = inputs
        ctx.save_for_backward(t)
        ctx.gamma, ctx.zeta = gamma, zeta

    @staticmethod
    def _terms(ctx, t: Tensor):
        """``(sigmoid(t), the stretch, where the clamp passes)``, with the forward's operations."""
        s = torch.sigmoid(t)
        stretch = ctx.zeta - ctx.gamma
        stretched = s * stretch + ctx.gamma  # the clamp's input
        return s, stretch, (stretched >= 0.0).logical_and_(stretched <= 1.0).detach()

    @staticmethod
    def backward(ctx, grad: Tensor):
        """Reverse order: the clamp's mask, the stretch, the sigmoid's derivative (autograd's)."""
        (t,) = ctx.saved_tensors
        s, stretch, inside = _StretchedSigmoid._terms(ctx, t)
        grad = torch.where(inside, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
        return torch.ops.aten.sigmoid_backward(grad * stretch, s), None, None


class Gate(nn.Module):
    """Base class: maps mask logits to gate values. Holds no trainable parameter."""

    name = "gate"

    def __init__(self, temperature: float, straight_through: bool = False):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature: expected a positive float, got {temperature}")
        self.register_buffer("temperature", torch.tensor(float(temperature)))
        self.straight_through = bool(straight_through)

    def set_temperature(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"temperature: expected a positive float, got {value}")
        self.temperature.fill_(float(value))

    def hard(self, logits: Tensor) -> Tensor:
        """The deterministic 0/1 decision ``1[theta > 0]`` (float32, float64 for float64 logits)."""
        return (logits > 0).to(_full(logits).dtype)

    def sample(self, logits: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def expected_keep(self, logits: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, logits: Tensor) -> Tensor:
        """Gate values (float32; float64 for float64) for ``logits`` of any float dtype."""
        logits = _full(logits)
        if not self.training:
            return self.hard(logits)
        z = self.sample(logits)
        return _straight_through(z, (z > 0.5).to(z.dtype)) if self.straight_through else z

    def extra_repr(self) -> str:
        return f"temperature={self.temperature.item():.4g}, straight_through={self.straight_through}"


class HardConcreteGate(Gate):
    """Hard-concrete gate (L0 regularisation); see the module docstring."""

    name = "hard_concrete"

    def __init__(self, temperature: float = 2.0 / 3.0, gamma: float = -0.1, zeta: float = 1.1,
                 straight_through: bool = False):
        super().__init__(temperature, straight_through)
        if not (gamma < 0.0 and zeta > 1.0):
            raise ValueError(f"gamma, zeta: expected gamma < 0 < 1 < zeta, got gamma={gamma}, zeta={zeta}")
        self.gamma = float(gamma)
        self.zeta = float(zeta)

    def sample(self, logits: Tensor) -> Tensor:
        return _StretchedSigmoid.apply((_logistic_noise(logits) + logits) / self.temperature, self.gamma, self.zeta)

    def expected_keep(self, logits: Tensor) -> Tensor:
        """``P(z > 1/2) = sigmoid(theta)``: the sample is on the side of the eval/hardening decision."""
        return torch.sigmoid(_full(logits))

    def prob_nonzero(self, logits: Tensor) -> Tensor:
        """``P(z != 0)``, the L0 norm's expectation (Louizos et al.)."""
        shift = self.temperature * math.log(-self.gamma / self.zeta)
        return torch.sigmoid(_full(logits) - shift)


class GumbelSigmoidGate(Gate):
    """Gumbel-sigmoid (binary concrete) gate; see the module docstring."""

    name = "gumbel_sigmoid"

    def __init__(self, temperature: float = 0.5, straight_through: bool = False):
        super().__init__(temperature, straight_through)

    def sample(self, logits: Tensor) -> Tensor:
        return torch.sigmoid((logits + _logistic_noise(logits)) / self.temperature)

    def expected_keep(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(_full(logits))


class SigmoidSTEGate(Gate):
    """Noise-free straight-through threshold: forward 1[theta>0], backward sigmoid(theta/tau)."""

    name = "sigmoid_ste"

    def __init__(self, temperature: float = 1.0):
        super().__init__(temperature, straight_through=True)

    def sample(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits / self.temperature)

    def forward(self, logits: Tensor) -> Tensor:
        """Forward exactly the eval decision ``1[theta > 0]`` (not ``sigmoid > 1/2``, which rounds)."""
        logits = _full(logits)
        if not self.training:
            return self.hard(logits)
        return _straight_through(self.sample(logits), self.hard(logits))

    def expected_keep(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(_full(logits) / self.temperature)


GATES = {cls.name: cls for cls in (HardConcreteGate, GumbelSigmoidGate, SigmoidSTEGate)}


def make_gate(gate: Union[str, Gate, None] = "hard_concrete") -> Gate:
    """A gate from its name (``hard_concrete``, ``gumbel_sigmoid``, ``sigmoid_ste``) or as given."""
    if isinstance(gate, Gate):
        return gate
    if gate is None:
        gate = "hard_concrete"
    if isinstance(gate, str) and gate in GATES:
        return GATES[gate]()
    raise ValueError(f"gate: expected one of {sorted(GATES)} or a Gate instance, got {gate!r}")

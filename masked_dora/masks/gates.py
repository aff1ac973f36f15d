r"""Gate parameterisations: mask logits theta -> gate values z in [0, 1].

Every gate has three behaviours:

* **training** (``module.training``): a stochastic, differentiable relaxation of
  a Bernoulli keep/drop decision, sampled fresh each call;
* **eval** (``not module.training``): the deterministic hard decision
  ``z = 1[theta > 0]``, exactly 0 or 1 (for every gate below, ``theta > 0`` is
  the point where the deterministic relaxation crosses 1/2);
* ``expected_keep(theta)``: the probability that a channel is kept (non-zero
  for hard-concrete, above 1/2 for the sigmoid gates), differentiable, which is
  what a sparsity controller penalises.

``straight_through=True`` makes the training forward value hard (0/1 at 1/2)
while gradients flow through the soft value (straight-through estimator).

The temperature is a buffer, so it is saved with the model; schedules set it
(see :mod:`masked_dora.masks.schedules`).

Hard-concrete (Louizos, Welling and Kingma, 2018)::

    u ~ U(0, 1);  s = sigmoid((log u - log(1 - u) + theta) / beta)
    z = clamp(s (zeta - gamma) + gamma, 0, 1)
    P(z != 0) = sigmoid(theta - beta log(-gamma / zeta))

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
    u = torch.rand_like(like).clamp_(eps, 1.0 - eps)
    return torch.log(u) - torch.log1p(-u)


def _straight_through(soft: Tensor) -> Tensor:
    hard = (soft > 0.5).to(soft.dtype)
    return hard + (soft - soft.detach())


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
        """The deterministic 0/1 decision ``1[theta > 0]`` in ``logits``' dtype."""
        return (logits > 0).to(logits.dtype)

    def sample(self, logits: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def expected_keep(self, logits: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, logits: Tensor) -> Tensor:
        if not self.training:
            return self.hard(logits)
        z = self.sample(logits)
        return _straight_through(z) if self.straight_through else z

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
        s = torch.sigmoid((_logistic_noise(logits) + logits) / self.temperature)
        return (s * (self.zeta - self.gamma) + self.gamma).clamp(0.0, 1.0)

    def expected_keep(self, logits: Tensor) -> Tensor:
        shift = self.temperature * math.log(-self.gamma / self.zeta)
        return torch.sigmoid(logits - shift)


class GumbelSigmoidGate(Gate):
    """Gumbel-sigmoid (binary concrete) gate; see the module docstring."""

    name = "gumbel_sigmoid"

    def __init__(self, temperature: float = 0.5, straight_through: bool = False):
        super().__init__(temperature, straight_through)

    def sample(self, logits: Tensor) -> Tensor:
        return torch.sigmoid((logits + _logistic_noise(logits)) / self.temperature)

    def expected_keep(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits)


class SigmoidSTEGate(Gate):
    """Noise-free straight-through threshold: forward 1[theta>0], backward sigmoid(theta/tau)."""

    name = "sigmoid_ste"

    def __init__(self, temperature: float = 1.0):
        super().__init__(temperature, straight_through=True)

    def sample(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits / self.temperature)

    def expected_keep(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(logits / self.temperature)


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

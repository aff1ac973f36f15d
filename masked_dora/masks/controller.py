r"""Reaching a target sparsity: a Lagrangian controller and exact top-k hardening.

Lagrangian controller (CoFi, Sheared-LLaMA): with ``k_hat`` the expected kept
fraction under the gates and ``k*`` the target kept fraction (ramped from 1 to
its final value over ``warmup_steps``)::

    penalty = lambda_1 (k_hat - k*) + lambda_2 (k_hat - k*)^2

The model minimises ``loss + penalty``; ``lambda_1`` and ``lambda_2`` are
trained to *maximise* it (pass ``controller.parameters()`` to an optimiser with
``maximize=True``, as :meth:`LagrangianController.make_optimizer` does), so the
multipliers grow until the constraint holds. ``lambda_1`` integrates the gap
(it starts at 0); ``lambda_2`` is the proportional gain: started above 0
(``lambda_2_init``), it damps the loop, which otherwise overshoots. (Mask logits
trained with Adam move about one learning rate per step whatever the force, so
a pure integral term keeps pushing past the target until ``lambda_1`` has
unwound: in the README's 120-step Trainer example (tiny Llama, 50% of MLP
channels), ``lambda_2_init=0`` left the expected kept fraction at 0.25,
``lambda_2_init=30`` at 0.47.) Penalties alone land near the
target; :func:`topk_keep` then hardens exactly: it keeps the ``round(N * keep)``
channels with the largest logits, rounded to ``alignment``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name}: expected a sparsity in [0, 1), got {value}")


class LagrangianController(nn.Module):
    """Penalty that drives the expected kept fraction to ``1 - target_sparsity``."""

    def __init__(self, target_sparsity: float, warmup_steps: int = 0, lambda_2_init: float = 0.0):
        super().__init__()
        _check_fraction("target_sparsity", target_sparsity)
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps: expected a non-negative int, got {warmup_steps}")
        if not lambda_2_init >= 0:
            raise ValueError(f"lambda_2_init: expected a non-negative float, got {lambda_2_init}")
        self.target_sparsity = float(target_sparsity)
        self.warmup_steps = int(warmup_steps)
        self.lambda_1 = nn.Parameter(torch.zeros(()))
        self.lambda_2 = nn.Parameter(torch.full((), float(lambda_2_init)))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def target_keep(self, step: int) -> float:
        """The kept fraction asked for at ``step`` (linear ramp from 1 over the warm-up)."""
        final = 1.0 - self.target_sparsity
        if self.warmup_steps == 0 or step >= self.warmup_steps:
            return final
        return 1.0 - (1.0 - final) * step / self.warmup_steps

    def forward(self, expected_keep: Tensor) -> Tensor:
        """The penalty for the expected kept fraction ``expected_keep`` (a scalar tensor)."""
        gap = expected_keep.float() - self.target_keep(int(self.step))
        return self.lambda_1 * gap + self.lambda_2 * gap * gap

    def advance(self) -> None:
        """Move the target ramp one step on (call once per optimiser step)."""
        self.step += 1

    def make_optimizer(self, lr: float = 0.01) -> torch.optim.Optimizer:
        """An optimiser that trains the multipliers by gradient ascent."""
        return torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=0.0, maximize=True)


def kept_count(total: int, sparsity: float, alignment: int = 1) -> int:
    """``round(total * (1 - sparsity))`` rounded to a multiple of ``alignment``; at least ``alignment``."""
    _check_fraction("sparsity", sparsity)
    if alignment < 1:
        raise ValueError(f"alignment: expected a positive int, got {alignment}")
    if total < 1:
        raise ValueError(f"total: expected a positive int, got {total}")
    keep = round(total * (1.0 - sparsity) / alignment) * alignment
    return int(min(total, max(alignment, keep)))


def topk_keep(scores: Tensor, keep: int) -> Tensor:
    """Boolean mask with ``True`` at the ``keep`` largest ``scores`` (ties: lowest index first)."""
    if scores.dim() != 1:
        raise ValueError(f"scores: expected a 1-D tensor, got shape {tuple(scores.shape)}")
    if not 1 <= keep <= scores.numel():
        raise ValueError(f"keep: expected an int in [1, {scores.numel()}], got {keep}")
    order = torch.sort(scores.detach().float(), descending=True, stable=True).indices
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    mask[order[:keep]] = True
    return mask

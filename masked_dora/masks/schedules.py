"""Schedules for gate temperatures and sparsity targets (a value per training step)."""

from __future__ import annotations

import math

_KINDS = ("linear", "exponential", "cosine", "constant")


class Schedule:
    """``value(step)`` goes from ``start`` at step 0 to ``end`` at ``steps`` and stays there.

    ``kind``: ``linear``, ``exponential`` (geometric: constant ratio per step;
    needs ``start`` and ``end`` of one sign and non-zero), ``cosine`` or
    ``constant`` (``start`` throughout).
    """

    def __init__(self, start: float, end: float, steps: int, kind: str = "exponential"):
        if kind not in _KINDS:
            raise ValueError(f"kind: expected one of {_KINDS}, got {kind!r}")
        if steps < 0:
            raise ValueError(f"steps: expected a non-negative int, got {steps}")
        if kind == "exponential" and (start * end <= 0):
            raise ValueError(f"start, end: an exponential schedule needs non-zero values of one sign, got {start}, {end}")
        self.start, self.end, self.steps, self.kind = float(start), float(end), int(steps), kind

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return self.start
        if self.steps == 0 or step >= self.steps:
            return self.end
        t = max(step, 0) / self.steps
        if self.kind == "linear":
            return self.start + (self.end - self.start) * t
        if self.kind == "cosine":
            return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * t))
        return self.start * (self.end / self.start) ** t

    def __repr__(self) -> str:
        return f"Schedule(start={self.start}, end={self.end}, steps={self.steps}, kind={self.kind!r})"

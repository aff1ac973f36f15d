"""Training with masked DoRA: a ``transformers.TrainerCallback`` and a plain training loop.

Both do the same four things per optimiser step: set the gate temperature
from its schedule, add the Lagrangian sparsity penalty to the loss, take a
gradient-*ascent* step on the multipliers (their own optimiser, never the
model's), and log the sparsity (expected, hard, target kept fraction per kind).
"""

from __future__ import annotations

import itertools
import time
from typing import Callable, Dict, Iterable, List, Optional

import torch
from torch import nn

from ..masks.schedules import Schedule
from .prepare import get_state
from .sparsity import SparsityController

try:  # transformers is a hard dependency of masked_dora.models, but keep the import local to this module
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover
    TrainerCallback = object


class MaskTrainer:
    """Controller, multiplier optimiser and temperature schedule of one training run."""

    def __init__(self, model: nn.Module, controller: Optional[SparsityController] = None,
                 lambda_lr: Optional[float] = None):
        state = get_state(model)
        cfg = state.config
        self.model = model
        self.controller = controller if controller is not None else SparsityController(model)
        device = next(model.parameters()).device
        self.controller.to(device)
        self.optimizer = self.controller.make_optimizer(lr=lambda_lr or cfg.lambda_lr)
        start = cfg.temperature
        if start is None:
            start = float(next(iter(state.groups.values())).gate.temperature)
        end = cfg.final_temperature if cfg.final_temperature is not None else start
        self.temperature = Schedule(start, end, cfg.temperature_steps, "exponential")

    def begin_step(self, step: int) -> float:
        t = self.temperature(step)
        get_state(self.model).set_temperature(t)
        return t

    def penalty(self) -> torch.Tensor:
        return self.controller.penalty(self.model)

    def end_step(self) -> None:
        """After the model's optimiser step: ascend the multipliers, move the target ramp on."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.controller.advance()

    def stats(self) -> Dict[str, float]:
        out = self.controller.stats(self.model)
        out["sparsity/temperature"] = float(next(iter(get_state(self.model).groups.values())).gate.temperature)
        return out


class _AddPenalty:
    """Model forward hook: ``outputs.loss += penalty`` while training."""

    def __init__(self, trainer: MaskTrainer):
        self.trainer = trainer

    def __call__(self, module, args, output):
        loss = getattr(output, "loss", None)
        if module.training and loss is not None:
            output.loss = loss + self.trainer.penalty().to(loss.dtype)
        return output


class MaskedDoRACallback(TrainerCallback):
    """Plug masked DoRA into a ``transformers.Trainer``: temperature schedule, penalty, logging.

    The penalty is added to ``outputs.loss`` by a forward hook, so it needs the
    model to return its loss (inputs with labels; a ``compute_loss_func`` or
    label smoothing computes the loss outside the model: add
    ``callback.mask_trainer.penalty()`` to it there). Sparsity statistics go
    into every log entry (``state.log_history``) and into :attr:`history`.
    """

    def __init__(self, model: nn.Module, controller: Optional[SparsityController] = None,
                 lambda_lr: Optional[float] = None):
        get_state(model)
        self.mask_trainer = MaskTrainer(model, controller, lambda_lr)
        self.history: List[Dict[str, float]] = []
        self._handle = None

    def on_train_begin(self, args, state, control, **kwargs):
        if self._handle is None:
            self._handle = self.mask_trainer.model.register_forward_hook(_AddPenalty(self.mask_trainer))

    def on_step_begin(self, args, state, control, **kwargs):
        self.mask_trainer.begin_step(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.mask_trainer.end_step()

    def on_log(self, args, state, control, logs=None, **kwargs):
        stats = dict(self.mask_trainer.stats(), step=state.global_step)
        self.history.append(stats)
        if logs is not None:
            logs.update(stats)
        if state.log_history:
            state.log_history[-1].update(stats)

    def on_train_end(self, args, state, control, **kwargs):
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def train_masked(model: nn.Module, batches: Iterable, loss_fn: Callable, steps: int, lr: float = 1e-3,
                 mask_lr: float = 0.05, controller: Optional[SparsityController] = None, log_every: int = 10,
                 progress: bool = False, grad_clip: Optional[float] = 1.0, sparsity_penalty: bool = True,
                 desc: str = "masked DoRA") -> List[Dict[str, float]]:
    """Train ``model`` (prepared) for ``steps`` steps on ``loss_fn(model, batch) + penalty``.

    ``batches`` is cycled. Adapters use ``lr``, mask logits ``mask_lr``. Returns
    the log: one dict per ``log_every`` steps (loss, penalty, sparsity stats).
    ``sparsity_penalty=False`` trains without the controller (e.g. recovery
    fine-tuning after :func:`~masked_dora.models.harden`, when the masks are fixed).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    batches = list(batches)
    if not batches:
        raise ValueError("batches: expected at least one batch, got none")
    state = get_state(model)
    mask_params = [g.mask_logits for g in state.groups.values()]
    mask_ids = {id(p) for p in mask_params}
    adapter_params = [p for p in model.parameters() if p.requires_grad and id(p) not in mask_ids]
    optimizer = torch.optim.AdamW([{"params": adapter_params, "lr": lr, "weight_decay": 0.0},
                                   {"params": mask_params, "lr": mask_lr, "weight_decay": 0.0}])
    helper = MaskTrainer(model, controller)
    model.train()
    log: List[Dict[str, float]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, unit="step")
    start = time.perf_counter()
    for step, batch in zip(range(steps), itertools.cycle(batches)):
        helper.begin_step(step)
        loss = loss_fn(model, batch)
        penalty = helper.penalty() if sparsity_penalty else loss.new_zeros(())
        (loss + penalty).backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(adapter_params + mask_params, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if sparsity_penalty:
            helper.end_step()
        if step % log_every == 0 or step == steps - 1:
            entry = dict(helper.stats(), step=step, loss=float(loss.detach()), penalty=float(penalty.detach()),
                         seconds=time.perf_counter() - start)
            log.append(entry)
            if bar is not None:
                bar.set_postfix(loss=f"{entry['loss']:.4f}",
                                keep=" ".join(f"{k.split('/')[1].split('_')[0]}={v:.2f}" for k, v in entry.items()
                                              if k.endswith("_expected_keep")))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    model.eval()
    return log

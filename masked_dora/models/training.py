"""Training with masked DoRA: a ``transformers.TrainerCallback`` and a plain training loop.

Both give the mask logits their own optimizer group (:func:`param_groups`: a
mask learning rate orders of magnitude above the adapters', no weight decay)
and do the same four things per optimiser step: set the gate temperature
from its schedule, add the Lagrangian sparsity penalty to the loss, take a
gradient-*ascent* step on the multipliers (their own optimiser, never the
model's), and log the sparsity (expected, hard, target kept fraction per kind).
"""

from __future__ import annotations

import inspect
import itertools
import time
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch
from torch import nn

from ..masks.schedules import Schedule
from .json_state import from_json, to_json
from .prepare import get_state
from .sparsity import SparsityController, cubic_progress
from .sharded import attach_to_zero3, gathered_mask_logits, refuse_sharded_quantized_base, zero3_partitioned
from .trl_sft import PenaltyThroughLogProbs, trl_penalty_route

try:  # transformers is a hard dependency of masked_dora.models, but keep the import local to this module
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover
    TrainerCallback = object


MASK_GROUP = "masked_dora.mask_logits"
# the callback's entry in the Trainer's saved state (TrainerState.stateful_callbacks, in trainer_state.json); not the
# class name: with restore_callback_states_from_checkpoint the Trainer rebuilds a callback of that name from JSON
TRAINER_STATE_KEY = "masked_dora"


def mask_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The trainable mask logits of a prepared model (one tensor per coupled group)."""
    return [g.mask_logits for g in get_state(model).groups.values() if g.mask_logits.requires_grad]


def param_groups(model: nn.Module, lr: float, mask_lr: Optional[float] = None,
                 weight_decay: float = 0.0) -> List[Dict]:
    """Optimizer parameter groups for a prepared model: pass them to any ``torch.optim`` optimizer.

    * ``masked_dora.adapters``: ``lora_A``, ``lora_B`` (and any other trainable parameter) at ``lr``
      with ``weight_decay``;
    * ``masked_dora.magnitudes``: the DoRA magnitudes at ``lr``, no weight decay (decay would shrink
      the function, not regularise it);
    * ``masked_dora.mask_logits``: the mask logits at ``mask_lr`` (default: the config's ``mask_lr``),
      no weight decay (decay pulls every logit to the decision boundary 0).

    The sparsity controller's multipliers are not model parameters: they have their own
    (gradient-ascent) optimizer (:class:`MaskTrainer`).
    """
    state = get_state(model)
    if not lr > 0:
        raise ValueError(f"lr: expected a positive float, got {lr}")
    mask_lr = state.config.mask_lr if mask_lr is None else mask_lr
    if not mask_lr > 0:
        raise ValueError(f"mask_lr: expected a positive float, got {mask_lr}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay: expected a non-negative float, got {weight_decay}")
    masks = mask_parameters(model)
    mask_ids = {id(p) for p in masks}
    magnitudes, adapters = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in mask_ids:
            continue
        (magnitudes if name.endswith("magnitude") else adapters).append(p)
    return [{"params": adapters, "lr": lr, "weight_decay": weight_decay, "name": "masked_dora.adapters"},
            {"params": magnitudes, "lr": lr, "weight_decay": 0.0, "name": "masked_dora.magnitudes"},
            {"params": masks, "lr": mask_lr, "weight_decay": 0.0, "name": MASK_GROUP}]


def use_mask_group(optimizer: torch.optim.Optimizer, model: nn.Module, mask_lr: Optional[float] = None,
                   scheduler=None) -> bool:
    """Give the mask logits their own group in an existing ``optimizer`` (in place); ``True`` if it changed.

    For an optimizer built without :func:`param_groups` (the HF Trainer's own: one learning rate,
    weight decay on every non-bias weight): the logits leave their groups (emptied groups stay, so an
    LR scheduler's per-group lists keep lining up) and join a new group at ``mask_lr`` with no weight
    decay. ``scheduler``, an LR scheduler already attached to ``optimizer``, gets the new group too,
    at a constant ``mask_lr`` (its per-group lists are extended; torch's schedulers refuse a group
    they do not know). An optimizer that already has the logits in a group of their own is left alone.
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
    masks = mask_parameters(model)
    ids = {id(p) for p in masks}
    for group in optimizer.param_groups:
        if group.get("name") == MASK_GROUP:  # built by param_groups (DeepSpeed keeps the key, not the tensors)
            return False
        if group["params"] and all(id(p) in ids for p in group["params"]) and len(group["params"]) == len(ids):
            return False
    if not hasattr(optimizer, "add_param_group"):
        raise TypeError(f"optimizer: a {type(optimizer).__name__} takes no parameter group after it is built, so "
                        f"the mask logits cannot get their own; build it with them: with the HF Trainer, "
                        f"Trainer(..., optimizer_cls_and_kwargs=(torch.optim.AdamW, "
                        f"{{'params': masked_dora.param_groups(model, lr=...)}}))")
    mask_lr = get_state(model).config.mask_lr if mask_lr is None else mask_lr
    if scheduler is not None:
        scheduler = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler
        if not hasattr(scheduler, "base_lrs"):
            raise TypeError(f"scheduler: cannot add the mask group to a {type(scheduler).__name__}; build the "
                            f"optimizer with masked_dora.param_groups(model, lr=...) instead")
    for group in optimizer.param_groups:
        group["params"] = [p for p in group["params"] if id(p) not in ids]
    optimizer.add_param_group({"params": masks, "lr": mask_lr, "initial_lr": mask_lr, "weight_decay": 0.0,
                               "name": MASK_GROUP})
    if scheduler is not None:
        scheduler.base_lrs.append(mask_lr)
        if hasattr(scheduler, "lr_lambdas"):  # LambdaLR (every HF schedule): a constant factor of 1
            scheduler.lr_lambdas.append(_constant_factor)
        if hasattr(scheduler, "_last_lr"):
            scheduler._last_lr.append(mask_lr)
    return True


def _save_strategy(args) -> str:
    """``args.save_strategy`` as its string (transformers keeps an enum there)."""
    strategy = getattr(args, "save_strategy", "no")
    return getattr(strategy, "value", strategy)


def _constant_factor(step: int) -> float:
    return 1.0


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
        """Set this step's gate temperature (returned) and, ``budget="exact"`` with ``warmup_steps``, the
        fraction of the target the per-forward plan applies (:func:`~masked_dora.models.sparsity.cubic_progress`)."""
        state = get_state(self.model)
        t = self.temperature(step)
        state.set_temperature(t)
        if state.config.budget == "exact":
            state.plan_progress = cubic_progress(step, state.config.warmup_steps)
        return t

    def penalty(self) -> torch.Tensor:
        return self.controller.penalty(self.model)

    def end_step(self) -> None:
        """After the model's optimiser step: ascend the multipliers, move the target ramp on."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.controller.advance()

    def state_dict(self) -> Dict[str, Any]:
        """The multipliers and target-ramp step of every kind, and their optimizer's state (the temperature
        follows the optimizer step, which the caller keeps)."""
        return {"controller": self.controller.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["optimizer"])

    def stats(self) -> Dict[str, float]:
        out = self.controller.stats(self.model)
        out["sparsity/temperature"] = float(next(iter(get_state(self.model).groups.values())).gate.temperature)
        return out


class _AddPenalty:
    """Model forward hook (registered ``with_kwargs=True``): ``outputs.loss += penalty`` while training.

    The penalty belongs once to each optimizer step. When the HF Trainer passes ``num_items_in_batch``
    (transformers 5 does for models that take loss kwargs), the model's loss is already a share of the
    whole step's token mean: summed over gradient-accumulation micro-batches without dividing by their
    count, and multiplied by the number of processes (``average_tokens_across_devices``) before DDP/FSDP
    average the gradients. The penalty then gets the same share, ``local label tokens / num_items_in_batch``,
    so the shares of every micro-batch on every process add up to one penalty (without it the penalty
    counted ``accumulation steps x processes`` times). Without ``num_items_in_batch`` the Trainer divides
    each micro-batch's loss by the accumulation steps itself and DDP averages: the full penalty is right.

    Some heads take ``**kwargs`` but compute their own mean loss and drop ``num_items_in_batch``
    (BERT's masked-LM head; transformers issue #47688): the Trainer still skips its division, so their
    loss weighs ``accumulation steps x processes`` times what it weighs on one process. The penalty then
    comes in full with every micro-batch, keeping its ratio to the task loss as on one process; setting
    ``model.accepts_loss_kwargs = False`` before building the Trainer makes the whole step (loss and
    penalty) the one-process step.
    """

    def __init__(self, trainer: MaskTrainer):
        self.trainer = trainer
        self._takes_items: Optional[bool] = None  # of the one model this hook is registered on, read once
        self.through_log_probs = False  # TRL's SFTTrainer: its fused LM head's log_probs carry the penalty too

    def __call__(self, module, args, kwargs, output):
        loss = getattr(output, "loss", None)
        if not (module.training and loss is not None):
            return output
        penalty = full = self.trainer.penalty().to(loss.dtype)
        items = kwargs.get("num_items_in_batch")
        labels = kwargs.get("shift_labels", kwargs.get("labels"))
        if self._takes_items is None:
            self._takes_items = loss_takes_num_items(module)
        if items is not None and isinstance(labels, torch.Tensor) and self._takes_items:
            if "shift_labels" not in kwargs and _loss_shifts_labels(module):
                labels = labels[..., 1:]  # counted as the Trainer counts num_items_in_batch
            share = labels.ne(-100).sum().to(loss.dtype) / torch.as_tensor(items).to(loss.device, loss.dtype)
            penalty = penalty * share
        output.loss = loss + penalty
        if self.through_log_probs and kwargs.get("fused_lm_head") and getattr(output, "log_probs", None) is not None:
            output.log_probs = PenaltyThroughLogProbs.apply(output.log_probs, output.label_mask,
                                                            full.to(output.log_probs.dtype))
        return output


def loss_takes_num_items(model: nn.Module) -> bool:
    """Whether the model's own loss divides by the Trainer's ``num_items_in_batch`` (transformers' token-count
    normalisation across accumulation steps and processes) rather than taking its own mean.

    Read off the model class as transformers builds its heads: a forward that names ``num_items_in_batch``, or
    one that calls ``self.loss_function`` whose function (by ``model.loss_type``, ``ForCausalLM`` when unset)
    takes it. A forward whose source cannot be read is taken to honour it, as the Trainer assumes."""
    forward = getattr(type(model), "forward", None)
    try:
        source = inspect.getsource(forward)
    except (OSError, TypeError):
        return True
    if "num_items_in_batch" in source:
        return True
    if "self.loss_function(" not in source:
        return False
    function = getattr(model, "loss_function", None)
    try:
        return "num_items_in_batch" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return True


def _loss_shifts_labels(model: nn.Module) -> bool:
    """Whether the model's loss shifts the labels (a causal-LM loss): the Trainer's own test, for counting tokens."""
    try:
        from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss
    except ImportError:  # pragma: no cover - older transformers
        return False
    return (LOSS_MAPPING.get(getattr(model, "loss_type", None)) is ForCausalLMLoss
            and not getattr(getattr(model, "config", None), "is_encoder_decoder", False))


class MaskedDoRACallback(TrainerCallback):
    """Plug masked DoRA into a ``transformers.Trainer``: mask learning rate, temperature schedule, penalty, logging.

    At the start of training it moves the mask logits into an optimizer group of their own
    (:func:`use_mask_group`: ``mask_lr``, default the config's, constant, no weight decay),
    so the masks learn at a LoRA learning rate with the Trainer's default optimizer.

    Checkpoints: the controller's state (multipliers, target-ramp step, their optimizer) goes into
    every checkpoint the Trainer saves, as an entry of its ``trainer_state.json``, and comes back when
    training resumes from it (the temperature follows the restored step). The optimizer that
    resumes must have the mask group from the start, as the saved one had: build it with
    :func:`param_groups` (``Trainer(..., optimizer_cls_and_kwargs=(torch.optim.AdamW,
    {"params": masked_dora.param_groups(model, lr=...)}))``); the Trainer loads the saved optimizer
    state before any callback runs, so the group this callback adds to the Trainer's own optimizer
    is not there yet, and the load fails. A run that adds the group and saves checkpoints warns so.
    The penalty is added to ``outputs.loss`` by a forward hook, so it needs the
    model to return its loss (inputs with labels; a ``compute_loss_func`` or
    label smoothing computes the loss outside the model: add
    ``callback.mask_trainer.penalty()`` to it there). TRL's ``SFTTrainer`` reads its loss off its fused LM
    head's ``log_probs``, which then carry the penalty too (:mod:`~masked_dora.models.trl_sft`; its setups
    the penalty cannot reach are refused at the start of training). Sparsity statistics go
    into every log entry (``state.log_history``) and into :attr:`history`.
    """

    def __init__(self, model: nn.Module, controller: Optional[SparsityController] = None,
                 lambda_lr: Optional[float] = None, mask_lr: Optional[float] = None):
        get_state(model)
        self.mask_trainer = MaskTrainer(model, controller, lambda_lr)
        self.mask_lr = mask_lr
        self.history: List[Dict[str, float]] = []
        self._handle = None

    def on_init_end(self, args, state, control, **kwargs):
        refuse_sharded_quantized_base(args, self.mask_trainer.model)  # before train() lets an engine wrap it

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        model = self.mask_trainer.model
        refuse_sharded_quantized_base(args, model)  # (a callback added after the Trainer was built)
        through_log_probs = trl_penalty_route(args)  # raises, before anything changes, where TRL drops the penalty
        if optimizer is not None and use_mask_group(optimizer, model, self.mask_lr, scheduler=lr_scheduler):
            if _save_strategy(args) != "no" and not getattr(args, "save_only_model", False):
                warnings.warn("MaskedDoRACallback added the mask logits' group to the Trainer's optimizer: the "
                              "checkpoints of this run resume only into an optimizer that has that group from the "
                              "start; build it with Trainer(..., optimizer_cls_and_kwargs=(torch.optim.AdamW, "
                              "{'params': masked_dora.param_groups(model, lr=...)}))", stacklevel=2)
        if optimizer is not None and get_state(model).compacted_for_training:
            _require_current_parameters(model, optimizer)
        saved = (getattr(state, "stateful_callbacks", None) or {}).get(TRAINER_STATE_KEY)
        if saved is not None:  # resuming from a checkpoint this callback wrote into
            self.mask_trainer.load_state_dict(from_json(saved))
        elif state.global_step > 0:
            warnings.warn(f"resuming at step {state.global_step} from a checkpoint without masked_dora's controller "
                          f"state (saved by an older version?): the multipliers restart from their initial values",
                          stacklevel=2)
        zero3 = zero3_partitioned(model)
        if zero3:
            attach_to_zero3(model)
        if self._handle is None:  # under ZeRO-3 before DeepSpeed's post-forward hook releases the logits
            hook = _AddPenalty(self.mask_trainer)
            hook.through_log_probs = through_log_probs
            self._handle = model.register_forward_hook(hook, with_kwargs=True, prepend=zero3)

    def on_step_begin(self, args, state, control, **kwargs):
        self.mask_trainer.begin_step(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self.mask_trainer.end_step()
        self._export_if_saving(state, control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._export_if_saving(state, control)

    def on_evaluate(self, args, state, control, **kwargs):
        if _save_strategy(args) == "best":  # decided after this event, from the new metrics
            self._export_if_saving(state, control, always=True)

    def _export_if_saving(self, state, control, always: bool = False) -> None:
        """Before a checkpoint is written: put the controller's state where ``trainer_state.json`` takes it from.
        The Trainer decides to save in the step's or epoch's end events (``control.should_save``), which run
        before the save; with ``save_strategy="best"`` it decides after the evaluation, so then every
        evaluation exports. Not every step: reading the state back costs a device synchronisation."""
        if (always or control.should_save) and getattr(state, "stateful_callbacks", None) is not None:
            state.stateful_callbacks[TRAINER_STATE_KEY] = to_json(self.mask_trainer.state_dict())

    def on_log(self, args, state, control, logs=None, **kwargs):
        with gathered_mask_logits(self.mask_trainer.model):
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


def _require_current_parameters(model: nn.Module, optimizer) -> None:
    """Raise unless ``optimizer`` holds every trainable parameter ``model`` has now: compact_for_training gives
    the members new tensors, and an optimizer built before it would train the old ones, silently."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    stale = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in held]
    if stale:
        raise ValueError(f"optimizer: it does not hold {len(stale)} trainable parameters of the model (e.g. "
                         f"{stale[0]}): it was built before compact_for_training replaced them; build the optimizer "
                         f"(the Trainer, optimizer_cls_and_kwargs) after compacting")


def train_masked(model: nn.Module, batches: Iterable, loss_fn: Callable, steps: int, lr: float = 1e-3,
                 mask_lr: Optional[float] = None, controller: Optional[SparsityController] = None, log_every: int = 10,
                 progress: bool = False, grad_clip: Optional[float] = 1.0, sparsity_penalty: bool = True,
                 desc: str = "masked DoRA", compact: bool = True,
                 harden_after: Optional[int] = None) -> List[Dict[str, float]]:
    """Train ``model`` (prepared) for ``steps`` steps on ``loss_fn(model, batch) + penalty``.

    ``batches`` is cycled. Adapters use ``lr``, mask logits ``mask_lr`` (default: the config's),
    in the groups of :func:`param_groups`. Returns
    the log: one dict per ``log_every`` steps (loss, penalty, sparsity stats).
    ``sparsity_penalty=False`` trains without the controller (e.g. recovery
    fine-tuning after :func:`~masked_dora.models.harden`, when the masks are fixed); then, with
    ``compact=True`` (the default), the run trains at the kept size
    (:func:`~masked_dora.models.compact_for_training`, in place, where the family allows it).

    ``harden_after`` (an int in ``[1, steps)``): one continuous run instead of a learning run and a
    recovery run. The masks learn (with the penalty, if ``sparsity_penalty``) for ``harden_after`` steps,
    are then hardened (:func:`~masked_dora.models.harden`), and the remaining steps train the adapters
    at the fixed masks with the *same* optimizer (its moments kept) and the batches where the learning
    left off; no penalty after hardening. The run stays at full size (no ``compact_for_training``: the
    optimizer holds the full-size parameters).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive int, got {steps!r}")
    if harden_after is not None and (isinstance(harden_after, bool) or not isinstance(harden_after, int)
                                     or not 1 <= harden_after < steps):
        raise ValueError(f"harden_after: expected None or an int in [1, steps={steps}), got {harden_after!r}")
    batches = list(batches)
    if not batches:
        raise ValueError("batches: expected at least one batch, got none")
    if compact and not sparsity_penalty and harden_after is None:
        from .compact_training import compact_for_training, compact_training_refusal

        if compact_training_refusal(model) is None:
            compact_for_training(model)  # before the optimizer: the members' parameters become new tensors
    groups = param_groups(model, lr=lr, mask_lr=mask_lr)
    optimizer = torch.optim.AdamW(groups)
    trainable = [p for g in groups for p in g["params"]]
    mask_group = next(g["params"] for g in groups if g["name"] == MASK_GROUP)
    helper = MaskTrainer(model, controller)
    model.train()
    log: List[Dict[str, float]] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, unit="step")
    start = time.perf_counter()
    learning = sparsity_penalty
    for step, batch in zip(range(steps), itertools.cycle(batches)):
        if step == harden_after:
            from .sparsity import harden

            harden(model)
            learning = False
        helper.begin_step(step)
        loss = loss_fn(model, batch)
        penalty = helper.penalty() if learning else loss.new_zeros(())
        (loss + penalty).backward()
        if harden_after is not None and step >= harden_after:
            for p in mask_group:  # fixed masks: the gate reads no logit, but Adam's moments would move them
                p.grad = None
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(trainable, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if learning:
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

r"""Importance scores per group unit, and mask initialisation from them.

* ``magnitude``: for each member, the squared Frobenius norm of the unit's
  rows (producers) or columns (consumer), divided by the member's mean per unit
  (its total over the group's units), summed over members: scale-free across
  members and across layers of different widths. (Divided by the total, a unit
  of a layer twice as wide scored half as much on average, so
  ``allocation="global"`` cut the widest layers first whatever their weights:
  Swin's last stage to its minimum, the first stages kept whole.)
* ``taylor`` (first order): ``sum over calibration batches |dL/dz_unit|`` at
  ``z = 1``: the loss change from removing the unit, to first order. Needs
  ``calibration`` and ``loss_fn`` (default: ``model(**batch).loss``).
* ``activation`` (activation-aware, Wanda-style): at the consumer's input,
  ``||X_c||_2 * ||W_consumer[:, c]||_2`` per channel, summed per unit, with every unit kept
  (``z = 1``, as the Taylor probe) whatever the masks would do: under ``budget="exact"`` a forward
  otherwise keeps the top-k of the not yet initialised logits (all equal: the lowest indices), and a
  pruned channel's input is 0, so the score would only repeat that arbitrary cut.

The ``hidden`` group (one unit per residual channel) is scored the same ways over the residual stream's
members (:mod:`masked_dora.models.hidden`): ``magnitude`` over the embeddings' and readers' columns and the
writers' rows, ``activation`` at every reader's input (q/k/v, the MLP's producers, the LM head); with
``hidden_mode="per_block"``, each block's group over that block's readers and writers.

:func:`init_masks_from_importance` plans the target cut from the scores
(the same planner as hardening) and sets logits so that the planned-kept
units start kept (positive) and the rest pruned (negative), with magnitudes in
``(0, mask_init]`` growing with the score's rank among the kind's units.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional

import torch
from torch import Tensor, nn

from .blocks import block_modules, is_consumer_role
from .group_mask import ALWAYS_KEPT
from .hidden import HIDDEN_KEY, hidden_activation, hidden_magnitude, readers
from .hidden_per_block import block_activation, block_magnitude, block_readers
from .prepare import get_state
from .sparsity import plan_keep

METHODS = ("magnitude", "taylor", "activation")


def _members(model, group):
    state = get_state(model)
    block = next(b for b in state.blocks(model) if b.index == group.layer)
    return block_modules(block.module, block.spec, (group.kind,))[group.kind]


def _is_consumer(group, role: str) -> bool:
    return is_consumer_role(role) if group.kind == "mlp" else role == "output"


def _consumers(model, group):
    """``[(role, module)]``: the group's consumers (one per expert in an MoE block)."""
    return [(role, m) for role, m in _members(model, group).items() if _is_consumer(group, role)]


def _weight(m: nn.Module) -> Tensor:
    """A member's ``W0`` values: a quantized base's dequantized (``base_weight``), else its weight."""
    return m.base_weight() if callable(getattr(m, "base_weight", None)) else m.weight


def _scatter(values: Tensor, index: Tensor, num_units: int) -> Tensor:
    return torch.zeros(num_units, dtype=torch.float64).index_add_(0, index.cpu(), values.double().cpu())


@torch.no_grad()
def magnitude_scores(model: nn.Module) -> Dict[str, Tensor]:
    out = {}
    for key, group in get_state(model).groups.items():
        if group.kind == "hidden":  # one group over the residual stream, or one per block (hidden_mode)
            out[key] = (hidden_magnitude(model, get_state(model)) if key == HIDDEN_KEY
                        else block_magnitude(model, get_state(model), group))
            continue
        score = torch.zeros(group.num_units, dtype=torch.float64)
        for role, m in _members(model, group).items():
            w = _weight(m).detach().double()
            if _is_consumer(group, role):
                per, index = w.pow(2).sum(0), group.index(role)
            elif role in group.roles:
                per, index = w.pow(2).sum(1), group.index(role)
            else:
                continue
            gated = (index != ALWAYS_KEPT).to(per.device)  # a fused projection's K/V rows may follow no unit
            kept = _scatter(per[gated], index[gated.to(index.device)], group.num_units)
            score += kept * group.num_units / per.sum().clamp_min(1e-30)  # (its units average 1: see the docstring)
        out[key] = score
    return out


def _default_loss(model, batch):
    out = model(**batch) if isinstance(batch, dict) else model(batch)
    loss = getattr(out, "loss", None)
    if loss is None:
        raise ValueError("loss_fn: the model returned no loss for a calibration batch; pass "
                         "loss_fn(model, batch) -> scalar tensor (or batches with labels)")
    return loss


def _check_calibration(calibration, method):
    if calibration is None:
        raise ValueError(f"calibration: importance={method!r} needs an iterable of calibration batches "
                         f"(dicts of model inputs); got None")


def taylor_scores(model: nn.Module, calibration: Iterable, loss_fn: Optional[Callable] = None) -> Dict[str, Tensor]:
    _check_calibration(calibration, "taylor")
    loss_fn = loss_fn or _default_loss
    state = get_state(model)
    was_training = model.training
    model.eval()
    scores = {k: torch.zeros(g.num_units, dtype=torch.float64) for k, g in state.groups.items()}
    n, reached = 0, set()
    try:
        for batch in calibration:
            probes = {}
            for k, g in state.groups.items():
                probes[k] = torch.ones(g.num_units, device=g.mask_logits.device, requires_grad=True)
                g._probe = probes[k]
            with torch.enable_grad():
                loss = loss_fn(model, batch)
                grads = torch.autograd.grad(loss, list(probes.values()), allow_unused=True)
            for k, grad in zip(probes, grads):
                if grad is not None:
                    scores[k] += grad.detach().double().abs().cpu()
                    reached.add(k)
            n += 1
    finally:
        for g in state.groups.values():
            g._probe = None
        model.train(was_training)
    if n == 0:
        raise ValueError("calibration: expected at least one batch, got an empty iterable")
    _require_reached(state, reached, "taylor")
    return scores


@torch.no_grad()
def activation_scores(model: nn.Module, calibration: Iterable) -> Dict[str, Tensor]:
    _check_calibration(calibration, "activation")
    state = get_state(model)
    sq: Dict[str, Tensor] = {}
    handles = []

    def hook_for(key):
        def hook(module, args):
            x = args[0].detach().double()
            s = x.pow(2).reshape(-1, x.shape[-1]).sum(0).cpu()
            sq[key] = sq.get(key, 0) + s
        return hook

    consumers = {}
    for key, group in state.groups.items():
        if group.kind == "hidden":  # the residual stream's readers (of the group's block, per block)
            consumers[key] = readers(model, state) if key == HIDDEN_KEY else block_readers(model, state, group)
        else:
            consumers[key] = _consumers(model, group)
        for role, m in consumers[key]:
            handles.append(m.register_forward_pre_hook(hook_for((key, role))))
    was_training = model.training
    model.eval()
    for g in state.groups.values():  # the dense model's activations, whatever the masks (budget="exact": top-k)
        g._probe = torch.ones(g.num_units, device=g.mask_logits.device)
    n = 0
    try:
        for batch in calibration:
            model(**batch) if isinstance(batch, dict) else model(batch)
            n += 1
    finally:
        for h in handles:
            h.remove()
        for g in state.groups.values():
            g._probe = None
        model.train(was_training)
    if n == 0:
        raise ValueError("calibration: expected at least one batch, got an empty iterable")
    _require_reached(state, {key for key, _role in sq}, "activation")
    out = {}
    for key, group in state.groups.items():
        if group.kind == "hidden":
            out[key] = (hidden_activation(model, state, sq) if key == HIDDEN_KEY
                        else block_activation(model, state, key, group, sq))
            continue
        out[key] = torch.zeros(group.num_units, dtype=torch.float64)
        for role, m in consumers[key]:
            col = _weight(m).detach().double().pow(2).sum(0).sqrt().cpu()
            seen = sq.get((key, role))  # an expert no calibration token was routed to scores 0
            per = (seen.sqrt() if seen is not None else torch.zeros_like(col)) * col
            out[key] += _scatter(per, group.index(role), group.num_units)
    return out


def _require_reached(state, reached, method: str) -> None:
    """Raise unless the calibration reached every group (a decoder the batches never ran would score 0 and be
    cut blindly); within a reached MoE group, an expert no token was routed to may score 0."""
    missed = [key for key in state.groups if key not in reached]
    if missed:
        raise ValueError(f"calibration: importance={method!r} saw no activity in the groups {missed[:6]}"
                         f"{' ...' if len(missed) > 6 else ''}; the calibration batches must run every pruned block "
                         f"(an encoder-decoder's decoder too: give decoder inputs or labels), or prune fewer stacks "
                         f"(MaskedDoRAConfig(stacks=...))")


def importance_scores(model: nn.Module, method: str, calibration=None, loss_fn=None) -> Dict[str, Tensor]:
    """``{group key: per-unit score}`` by ``method`` (see the module docstring)."""
    if method == "magnitude":
        return magnitude_scores(model)
    if method == "taylor":
        return taylor_scores(model, calibration, loss_fn)
    if method == "activation":
        return activation_scores(model, calibration)
    raise ValueError(f"method: expected one of {METHODS}, got {method!r}")


@torch.no_grad()
def init_masks_from_importance(model: nn.Module, method: str, calibration=None, loss_fn=None) -> Dict[str, Tensor]:
    """Set every group's logits from importance scores (see the module docstring); returns the scores."""
    state = get_state(model)
    cfg = state.config
    scores = importance_scores(model, method, calibration, loss_fn)
    for kind in cfg.target_groups:
        keys = [k for k, g in state.groups.items() if g.kind == kind]
        groups = [state.groups[k] for k in keys]
        masks = plan_keep(groups, [scores[k] for k in keys], cfg.target_sparsity[kind], cfg.alignment[kind],
                          cfg.allocation)
        flat = torch.cat([scores[k] for k in keys])
        ranks = torch.empty_like(flat)
        ranks[torch.sort(flat, stable=True).indices] = torch.arange(flat.numel(), dtype=flat.dtype)
        q = (ranks + 1) / flat.numel()  # (0, 1]
        start = 0
        for g, keep in zip(groups, masks):
            qg = q[start:start + g.num_units].float()
            start += g.num_units
            logits = torch.where(keep, qg, qg - 1.0).clamp(-1.0, 1.0) * cfg.mask_init
            logits = torch.where(keep, logits.clamp_min(1e-3 * cfg.mask_init), logits.clamp_max(-1e-3 * cfg.mask_init))
            g.mask_logits.copy_(logits.to(g.mask_logits.device))
    return scores

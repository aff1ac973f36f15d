r"""Exact target sparsity per group kind: a Lagrangian controller and deterministic top-k hardening.

Units are ranked by score (the mask logits when hardening, an importance score
at initialisation) and kept in *blocks*: ``alignment`` channels of the MLP (of
an MoE block: the next ``alignment`` best channels of every expert together),
one KV group, or (query heads inside KV groups) the r-th best query head of
every KV group together. ``uniform`` allocation keeps the same number of units
in every layer, ``kept_count(units, sparsity, alignment)``; ``global`` ranks
blocks across layers (block score: the mean of its units' scores), keeps each
layer's best block, then the best remaining blocks until the kind's total
``kept_count(total, sparsity, alignment)`` is reached.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from torch import Tensor, nn

from ..masks.controller import LagrangianController, kept_count
from .group_mask import GroupMask
from .prepare import get_state


def _blocks(group: GroupMask, scores: Tensor, alignment: int) -> List[Tensor]:
    """Unit-index blocks of one group in keep-priority order (block scores non-increasing)."""
    scores = scores.detach().float().cpu()
    if group.partitions > 1:  # a block: the next `alignment` best units of every partition, together
        per = scores.view(group.partitions, -1)
        order = torch.sort(per, dim=1, descending=True, stable=True).indices
        offsets = torch.arange(group.partitions)[:, None] * per.shape[1]
        ranked = order + offsets  # ranked[p, r]: the r-th best unit of partition p
        return [ranked[:, r:r + alignment].flatten().sort().values for r in range(0, per.shape[1], alignment)]
    order = torch.sort(scores, descending=True, stable=True).indices
    return [order[s:s + alignment] for s in range(0, order.numel(), alignment)]


def _block_unit(group: GroupMask, kind_alignment: int) -> int:
    return group.partitions * kind_alignment


def partition_alignment(kind: str, partitions: int, kind_alignment: int) -> int:
    """The alignment inside each partition of a group: the kind's for a group of one partition and for the
    MLP (the experts of an MoE block each keep a multiple of it); 1 for query heads inside several KV groups
    (a head is already a whole block)."""
    return kind_alignment if partitions == 1 or kind == "mlp" else 1


def uniform_count(num_units: int, partitions: int, sparsity: float, alignment: int) -> int:
    """Units one layer keeps under ``allocation="uniform"``, whatever the logits: a multiple of ``alignment``
    in each of ``partitions`` equal parts (the same count in each; one part: the whole group)."""
    return partitions * kept_count(num_units // partitions, sparsity, alignment)


def plan_keep(groups: Sequence[GroupMask], scores: Sequence[Tensor], sparsity: float, alignment: int,
              allocation: str = "uniform") -> List[Tensor]:
    """Per-group bool keep masks hitting ``sparsity`` exactly (up to alignment rounding)."""
    if len(groups) != len(scores):
        raise ValueError(f"scores: expected one tensor per group ({len(groups)}), got {len(scores)}")
    for g, s in zip(groups, scores):
        if s.shape != (g.num_units,):
            raise ValueError(f"scores: expected shape ({g.num_units},) for {g.kind} layer {g.layer}, "
                             f"got {tuple(s.shape)}")
    align = partition_alignment(groups[0].kind, groups[0].partitions, alignment) if groups else alignment
    blocks = [_blocks(g, s, align) for g, s in zip(groups, scores)]
    if allocation == "uniform":
        counts = [uniform_count(g.num_units, g.partitions, sparsity, align) for g in groups]
    elif allocation == "global":
        counts = _global_counts(groups, scores, blocks, sparsity, align)
    else:
        raise ValueError(f"allocation: expected 'uniform' or 'global', got {allocation!r}")
    masks = []
    for g, bl, count in zip(groups, blocks, counts):
        keep = torch.zeros(g.num_units, dtype=torch.bool)
        taken = 0
        for b in bl:
            if taken >= count:
                break
            keep[b] = True
            taken += b.numel()
        masks.append(keep)
    return masks


def cubic_progress(step: int, steps: int) -> float:
    """Gradual pruning's schedule (Zhu and Gupta, 2017): the fraction of the final sparsity applied at ``step``,
    ``1 - (1 - step / steps)^3``: 0 at step 0, fast early, 1 from ``steps`` on (``steps=0``: 1 throughout)."""
    if steps < 0:
        raise ValueError(f"steps: expected a non-negative int, got {steps}")
    if steps == 0 or step >= steps:
        return 1.0
    return 1.0 - (1.0 - max(step, 0) / steps) ** 3


@torch.no_grad()
def plan_current(state, progress: float = 1.0) -> Dict[str, Tensor]:
    """``{group key: keep}``: the masks :func:`harden` would take from the current logits (``budget="exact"``);
    ``progress`` in ``[0, 1]``: at that fraction of each kind's target sparsity (the gradual warm-up's plan)."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress: expected a fraction in [0, 1], got {progress}")
    cfg = state.config
    plans = {}
    for kind in cfg.target_groups:
        keys = [k for k, g in state.groups.items() if g.kind == kind]
        groups = [state.groups[k] for k in keys]
        masks = plan_keep(groups, [g.mask_logits.detach().float().cpu() for g in groups],
                          cfg.target_sparsity[kind] * progress, cfg.alignment[kind], cfg.allocation)
        plans.update(zip(keys, masks))
    return plans


def _global_counts(groups, scores, blocks, sparsity, align) -> List[int]:
    unit = max(_block_unit(g, align) for g in groups)
    total = sum(g.num_units for g in groups)
    target = kept_count(total, sparsity, unit)
    counts = [blocks[i][0].numel() for i in range(len(groups))]  # every layer keeps its best block
    candidates = []
    for i, (bl, s) in enumerate(zip(blocks, scores)):
        s = s.detach().float().cpu()
        for j in range(1, len(bl)):
            candidates.append((-s[bl[j]].mean().item(), i, j))
    candidates.sort()  # by score, then layer, then block index: prefixes within each layer
    taken = sum(counts)
    next_block = [1] * len(groups)
    for _, i, j in candidates:
        size = blocks[i][j].numel()
        if taken + size > target or j != next_block[i]:
            continue
        counts[i] += size
        next_block[i] += 1
        taken += size
    return counts


@torch.no_grad()
def harden(model: nn.Module) -> Dict[str, Dict[str, float]]:
    """Fix every group's mask to the exact top-k of its logits; returns kept counts per kind."""
    state = get_state(model)
    if state.compacted_for_training:
        raise ValueError("model: compact_for_training already removed the pruned units and fixed the rest; "
                         "hardening again would prune the kept ones (compact_model writes the pruned model)")
    plans = plan_current(state)
    summary = {}
    for kind in state.config.target_groups:
        keys = [k for k, g in state.groups.items() if g.kind == kind]
        for k in keys:
            state.groups[k].set_mask(plans[k].to(state.groups[k].fixed_keep.device))
        kept = sum(int(plans[k].sum()) for k in keys)
        total = sum(state.groups[k].num_units for k in keys)
        summary[kind] = {"kept": kept, "total": total, "sparsity": 1.0 - kept / total}
    return summary


def _all_units(groups) -> int:
    """The units of ``groups`` as prepared (those compact_for_training removed included)."""
    return sum(g.num_units + g.pruned_units for g in groups)


def kept_fraction(model: nn.Module, kind: str) -> float:
    """Fraction of ``kind``'s units the current hard masks keep (unit-weighted over layers)."""
    groups = get_state(model).groups_of(kind)
    return sum(int(g.hard().sum()) for g in groups) / _all_units(groups)


def expected_keep(model: nn.Module, kind: str) -> Tensor:
    """Differentiable expected kept fraction of ``kind``'s units."""
    groups = get_state(model).groups_of(kind)
    values, total = torch.cat([g.expected_keep() for g in groups]), _all_units(groups)
    return values.mean() if total == values.numel() else values.sum() / total


def planned_keep_fraction(model: nn.Module, kind: str) -> float:
    """The kept fraction :func:`harden` will produce (with alignment rounding) for ``kind``; after
    compact_for_training, the fraction kept (hardening is over)."""
    state = get_state(model)
    if state.compacted_for_training:
        return kept_fraction(model, kind)
    groups = state.groups_of(kind)
    masks = plan_keep(groups, [torch.arange(g.num_units, 0, -1).float() for g in groups],
                      state.config.target_sparsity[kind], state.config.alignment[kind], state.config.allocation)
    return sum(int(m.sum()) for m in masks) / sum(g.num_units for g in groups)


def warn_unreachable_targets(model: nn.Module, tolerance: float = 0.05) -> Dict[str, Dict[str, float]]:
    """Warn where rounding (alignment, whole units) turns a target into something else; the numbers per kind.

    Returns ``{kind: {"target": ..., "achieved": ...}}``; warns when a non-zero target removes nothing,
    or the sparsity hardening will reach is more than ``tolerance`` from the target.
    """
    import warnings

    state = get_state(model)
    cfg = state.config
    out = {}
    for kind in cfg.target_groups:
        target = cfg.target_sparsity[kind]
        achieved = 1.0 - planned_keep_fraction(model, kind)
        out[kind] = {"target": target, "achieved": achieved}
        if (target > 0 and achieved == 0.0) or abs(achieved - target) > tolerance:
            g = state.groups_of(kind)[0]
            if kind == "mlp" and g.partitions > 1:
                unit = (f"{g.num_units // g.partitions} MLP channels in each of {g.partitions} experts per layer, "
                        f"each expert keeping a multiple of alignment={cfg.alignment['mlp']}")
            elif kind == "hidden":
                unit = f"{g.num_units} residual channels, kept in blocks of alignment={cfg.alignment['hidden']}"
            elif kind == "mlp":
                unit = f"{g.num_units} MLP channels per layer, kept in blocks of alignment={cfg.alignment['mlp']}"
            elif g.unit_size > 1:
                unit = (f"{g.num_units} KV groups of {g.unit_size} query heads per layer (gqa='kv_groups' removes "
                        f"whole KV groups; gqa='query_heads' removes query heads inside every group)")
            else:
                parts = "qkv chunks" if state.spec.heads.qkv_chunks else "KV groups"  # each keeping the same count
                unit = f"{g.num_units} heads per layer" + (f" in {g.partitions} {parts}" if g.partitions > 1 else "")
            warnings.warn(
                f"target_sparsity[{kind!r}]={target:g} becomes {achieved:.4g} after rounding: {unit}; "
                f"kept_count rounds {g.num_units} x {1 - target:g} = {g.num_units * (1 - target):g} to "
                f"{round(g.num_units * (1 - achieved))} kept ({cfg.allocation} allocation). Hardening will remove "
                f"{achieved:.1%} of the {kind} units, "
                f"not {target:.1%}.", UserWarning, stacklevel=3)
    return out


class SparsityController(nn.Module):
    """One :class:`LagrangianController` per targeted kind, on the expected kept fraction.

    Its target is the fraction hardening will keep, so training and hardening
    agree. Keep its parameters out of the model's optimiser: use
    :meth:`make_optimizer` (gradient *ascent* on the multipliers).
    """

    def __init__(self, model: nn.Module, warmup_steps: int = None):
        super().__init__()
        state = get_state(model)
        warmup = state.config.warmup_steps if warmup_steps is None else warmup_steps
        self.controllers = nn.ModuleDict({
            kind: LagrangianController(1.0 - planned_keep_fraction(model, kind), warmup,
                                       lambda_2_init=state.config.lambda_2_init)
            for kind in state.config.target_groups})

    def penalty(self, model: nn.Module) -> Tensor:
        """The Lagrangian term; zero with ``budget="exact"`` (every forward already keeps the target)."""
        state = get_state(model)
        if state.config.budget == "exact":
            return next(iter(state.groups.values())).mask_logits.new_zeros(())
        terms = [c(expected_keep(model, kind)) for kind, c in self.controllers.items()]
        return torch.stack(terms).sum()

    def make_optimizer(self, lr: float = 0.05) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=0.0, maximize=True)

    def advance(self) -> None:
        for c in self.controllers.values():
            c.advance()

    @torch.no_grad()
    def stats(self, model: nn.Module) -> Dict[str, float]:
        out = {}
        for kind, c in self.controllers.items():
            out[f"sparsity/{kind}_expected_keep"] = float(expected_keep(model, kind))
            out[f"sparsity/{kind}_hard_keep"] = kept_fraction(model, kind)
            out[f"sparsity/{kind}_target_keep"] = c.target_keep(int(c.step))
            out[f"sparsity/{kind}_lambda1"] = float(c.lambda_1)
        return out

r"""One set of mask logits per coupled group, shared by every member layer.

A :class:`GroupMask` owns the logits of one group (one logit per *unit*: an MLP
channel, a KV group, or a query head) and the gate that turns them into ``z``.
Member layers (:class:`~masked_dora.nn.MaskedDoRALinear`) read their
per-channel ``z`` through a :class:`MaskView` (``z_unit[index]``, e.g. a head's
``z`` repeated ``head_dim`` times); a consumer whose *input* must be gated (the
output projection when query heads are pruned inside KV groups) gets an
:class:`InputGate` forward pre-hook. A channel that no unit gates has the index
:data:`ALWAYS_KEPT` and reads ``z = 1``: the K/V rows of a fused q/k/v projection
whose units are query heads (``gqa="query_heads"``), which share the layer with
gated q rows and so cannot be a separate, fully kept member. In training the
gate is sampled once per model forward, by the model's pre-hook
(:meth:`GroupMask.draw_sample`) before any block runs: q, k and v of one head
see the same sample, and activation checkpointing recomputes a block with that
same sample.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..masks.gates import make_gate
from ..nn import MaskedDoRALinear
from ..nn.norm_cache import is_regathered

ALWAYS_KEPT = -1  # the unit index of a member channel that no unit gates (z = 1, kept at compaction)


class _IntoGraph:
    """Tensor hook: each gradient of a detached copy of ``source`` goes on through ``source``'s graph."""

    def __init__(self, source: Tensor):
        self.source = source

    def __call__(self, grad: Tensor) -> None:
        torch.autograd.backward(self.source, grad, retain_graph=True)


def _read_in_backward(sample: Tensor) -> Tensor:
    """A group every block reads (``shared_by_blocks``: the global hidden group), read while a backward runs: a
    reentrant checkpoint recomputing a block. It backpropagates that block down to the logits on its own, which
    would free the sample's graph after the first block (the second raised "backward through the graph a second
    time"): the block reads a detached copy whose gradient goes on into the sample's graph, kept. A plain forward
    reads the sample itself (one backward through it: DDP sees the logits' gradient once), and so does a
    non-reentrant checkpoint's recomputation in effect (its gradient flows through the first forward's graph)."""
    copy = sample.detach().requires_grad_()
    copy.register_hook(_IntoGraph(sample))
    return copy


class GroupMask(nn.Module):
    """Mask logits and gate of one coupled group.

    ``num_units`` logits; ``partitions`` equal, contiguous partitions of the
    units inside which hardening keeps the same count (``> 1`` for query
    heads inside KV groups, and for the experts of an MoE block). ``indices`` maps a member role to the unit
    index of each of its channels (a non-persistent buffer per role), or :data:`ALWAYS_KEPT`.
    ``tied`` (``MaskedDoRAConfig(mask_learning="layer")``): the gate reads the logits' values, but every
    unit's gradient is the group's mean gradient, so an optimizer that treats elements alike (Adam, SGD, no
    weight decay) moves the group's logits by one shared offset: the order of the units inside the group stays
    the initial one and only the group's standing against the other groups (its budget under
    ``allocation="global"``) is learned.
    """

    def __init__(self, kind: str, layer: int, num_units: int, indices: Dict[str, Tensor], gate: str = "hard_concrete",
                 mask_init: float = 3.0, partitions: int = 1, unit_size: int = 1, tied: bool = False):
        super().__init__()
        if not isinstance(tied, bool):
            raise ValueError(f"tied: expected a bool, got {tied!r}")
        self.tied = tied
        if num_units < 1 or num_units % partitions:
            raise ValueError(f"num_units: expected a positive multiple of partitions={partitions}, got {num_units}")
        self.kind, self.layer, self.num_units = kind, int(layer), int(num_units)
        self.partitions, self.unit_size = int(partitions), int(unit_size)
        self.pruned_units = 0  # units compact_for_training removed before this group was built of the rest
        self.gate = make_gate(gate)
        self.mask_logits = nn.Parameter(torch.full((num_units,), float(mask_init)))
        self.register_buffer("fixed_keep", torch.ones(num_units, dtype=torch.bool))
        self.register_buffer("mask_fixed", torch.zeros((), dtype=torch.bool))
        self.roles = tuple(indices)
        for role, index in indices.items():
            if (index.dtype != torch.long or index.dim() != 1 or index.min() < ALWAYS_KEPT or index.max() >= num_units
                    or bool((index == ALWAYS_KEPT).all())):
                raise ValueError(f"indices[{role!r}]: expected a 1-D int64 tensor of unit indices in [0, {num_units}) "
                                 f"or ALWAYS_KEPT ({ALWAYS_KEPT}), at least one gated")
            self.register_buffer(f"index_{role}", index.clone(), persistent=False)
        # roles with channels no unit gates: their per-channel reads append a kept pseudo-unit (index -1)
        self._partly_gated = frozenset(role for role, index in indices.items() if bool((index == ALWAYS_KEPT).any()))
        self._sample: Optional[Tensor] = None
        # read by every block (the global hidden group), not by one: see _read_in_backward
        self.shared_by_blocks = False
        self._probe: Optional[Tensor] = None
        self._planned: Optional[Tensor] = None   # budget="exact": this forward's top-k plan (bool)

    def index(self, role: str) -> Tensor:
        if role not in self.roles:
            raise KeyError(f"role: expected one of {self.roles}, got {role!r}")
        return getattr(self, f"index_{role}")

    def per_channel(self, role: str, per_unit: Tensor) -> Tensor:
        """``per_unit`` (``z``, a hard decision, ...: one entry per unit) read at each channel of ``role``; an
        :data:`ALWAYS_KEPT` channel reads 1 (``True``)."""
        index = self.index(role)
        if role in self._partly_gated:  # index -1 picks the appended pseudo-unit
            per_unit = torch.cat([per_unit, per_unit.new_ones(1)])
        return per_unit[index]

    # ---------------------------------------------------------------- values

    def logits(self) -> Tensor:
        """The logits the gate reads: ``mask_logits``; ``tied``: the same values, with every unit's gradient the
        mean of the group's (``d logits_j / d mask_logits_i = 1 / num_units``)."""
        theta = self.mask_logits
        if not self.tied or not theta.requires_grad:
            return theta
        return theta.detach() + (theta - theta.detach()).mean()

    def values(self) -> Tensor:
        """Per-unit ``z``: probe (importance), fixed mask, one training sample per forward, or the hard mask."""
        if self._probe is not None:
            return self._probe
        if self._planned is not None:  # budget="exact": the plan, with a straight-through gradient while training
            free = self._planned.to(self.mask_logits.device).float()
            if self.training:
                soft = self.gate.expected_keep(self.logits().float())
                free = free + (soft - soft.detach())
            return torch.where(self.mask_fixed, self.fixed_keep.to(free.dtype), free)
        if not self.training:
            free = self.gate.hard(self.mask_logits)
        else:
            if self._sample is None:
                self._sample = self.gate(self.logits())
            free = self._sample
            if self.shared_by_blocks and free.requires_grad and torch.is_grad_enabled() \
                    and torch._C._current_graph_task_id() != -1 and not torch.compiler.is_compiling():
                free = _read_in_backward(free)
        # torch.where, not `if bool(mask_fixed)`: no host sync and no data-dependent branch for torch.compile
        return torch.where(self.mask_fixed, self.fixed_keep.to(free.dtype), free)

    def zero_gate_grad(self) -> Union[bool, Tensor]:
        """Whether a unit's ``z`` of exactly 0 in :meth:`values` can carry a gradient to its logit: only under
        a straight-through value (``budget="exact"``'s plan, a straight-through gate) and where the mask is not
        fixed. (A probe is all ones.)"""
        if self._probe is not None:
            return True
        if not self.training:  # the hard decision: no gradient
            return False
        if self._planned is not None or self.gate.straight_through:
            return ~self.mask_fixed
        return False

    def hard(self) -> Tensor:
        """The per-unit hard decision (bool)."""
        if self._planned is not None:  # budget="exact": the plan of the last forward (see MaskedDoRAState.exact_plan)
            free = self._planned.to(self.fixed_keep.device)
        else:
            free = self.gate.hard(self.mask_logits.detach()).bool()
        return torch.where(self.mask_fixed, self.fixed_keep, free)

    def set_planned(self, keep: Optional[Tensor]) -> None:
        """``budget="exact"``: the exact top-k plan this forward uses (``None``: back to the gate)."""
        self._planned = None if keep is None else keep.to(self.mask_logits.device)

    def expected_keep(self) -> Tensor:
        """Per-unit probability of being kept (differentiable in the logits)."""
        return torch.where(self.mask_fixed, self.fixed_keep.float(),
                           self.gate.expected_keep(self.logits().float()))

    def clear_sample(self) -> None:
        self._sample = None

    def draw_sample(self) -> None:
        """Sample this forward's gate values now (training), so every later read in the forward reuses them.

        Called by the model's forward pre-hook, i.e. outside any activation-checkpointed block: a
        checkpoint's recomputation then reads the very same tensor (the same noise, the same saved
        tensors) and the gradient reaches the logits through it, reentrant or not. (Sampled lazily inside
        the first block instead, the recomputation found the cache filled and skipped the gate: a
        non-reentrant checkpoint raised CheckpointError, a reentrant one sampled under no_grad and the
        logits got no gradient.)
        """
        self._sample = self.gate(self.logits()) if self.training and self._probe is None else None

    @torch.no_grad()
    def set_mask(self, keep: Tensor) -> None:
        """Fix the hard per-unit mask ``keep`` (bool, ``num_units``) until :meth:`clear_mask`."""
        if not isinstance(keep, Tensor) or keep.dtype != torch.bool or keep.shape != (self.num_units,):
            raise ValueError(f"keep: expected a bool tensor of shape ({self.num_units},), got "
                             f"{getattr(keep, 'dtype', type(keep).__name__)} {tuple(getattr(keep, 'shape', ()))}")
        if not keep.any():
            raise ValueError(f"keep: group {self.kind} of layer {self.layer} would lose every unit")
        counts = self.uneven_partition_counts(keep)
        if counts is not None:
            units, partitions = self.unit_words()
            raise ValueError(f"keep: expected the same number of kept {units} in each of the {self.partitions} "
                             f"{partitions}, got {counts}")
        self.fixed_keep.copy_(keep.to(self.fixed_keep.device))
        self.mask_fixed.fill_(True)

    def uneven_partition_counts(self, keep: Tensor) -> Optional[List[int]]:
        """The kept count of each partition of the bool mask ``keep`` when they differ, else ``None``: the
        compacted modules split their units evenly (query heads into KV groups under ``gqa="query_heads"``, heads
        into the chunks of a "chunked" qkv, channels into MoE experts), so ``harden`` keeps one count in each."""
        if self.partitions == 1:
            return None
        counts = keep.view(self.partitions, -1).sum(1).tolist()
        return counts if len(set(counts)) > 1 else None

    def unit_words(self) -> Tuple[str, str]:
        """What a unit and a partition of this group are, for messages."""
        return (("channels", "experts") if self.kind == "mlp" else
                ("query heads", "KV groups (or chunks of a chunked qkv)"))

    @torch.no_grad()
    def clear_mask(self) -> None:
        self.fixed_keep.fill_(True)
        self.mask_fixed.fill_(False)

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, layer={self.layer}, units={self.num_units}, unit_size={self.unit_size}, "
                f"partitions={self.partitions}, gate={self.gate.name}" + (", tied" if self.tied else ""))


class MaskView:
    """A member layer's window on a :class:`GroupMask`: ``z_channel = z_unit[index(role)]`` (1 where
    :data:`ALWAYS_KEPT`)."""

    def __init__(self, group: GroupMask, role: str):
        group.index(role)  # validates the role
        self.group, self.role = group, role

    def gate_values(self) -> Tensor:
        return self.group.per_channel(self.role, self.group.values())

    def keep_mask(self) -> Tensor:
        return self.group.per_channel(self.role, self.group.hard())

    def zero_gate_grad(self):
        return self.group.zero_gate_grad()  # per group, not per unit: nothing to map


class InputGate:
    """Forward pre-hook multiplying a consumer's input channels by the group's ``z``."""

    def __init__(self, group: GroupMask, role: str):
        group.index(role)
        self.group, self.role = group, role

    def __call__(self, module: nn.Module, args):
        x = args[0]
        z = self.group.per_channel(self.role, self.group.values()).to(x.dtype)
        return (x * z,) + tuple(args[1:])


class ForwardMasks:
    """Model forward pre-hook: fix this forward's masks once, before any block runs (and, when a sharding
    engine re-gathers the parameters, make every layer recompute its row norm).

    ``budget="lagrangian"``: draw every group's gate sample. ``budget="exact"``: set every group's
    exact top-k plan (``state.exact_plan()``, recomputed only when a logit changed). Read from the
    state's config at every call (a training state loaded later may change it). Either way the masks
    are fixed outside any checkpointed block, so a recomputation reads the same.

    A checkpointed block's recomputation (in the backward) reads the sample the groups hold then, so a forward
    between a forward and its backward must not leave its own sample there (:meth:`after`, the model's forward
    hook):

    * a forward without gradients in training mode (metrics or an entropy term in a Trainer's
      ``compute_loss_func``, TRL's) draws its own sample and puts the previous one back after it: the pending
      backward recomputes with the sample its forward used (before, a non-reentrant checkpoint raised
      ``CheckpointError`` there);
    * a second forward with gradients before the first one's backward, under activation checkpointing (a
      two-column contrastive loss that runs the model once per column, as sentence-transformers' losses do),
      would recompute the first forward's blocks with the second forward's sample: every gradient of the first
      would be computed at activations it never had, silently. It raises instead, naming the ways out.
    """

    def __init__(self, state: nn.Module):
        self.state = state
        self._layers = None
        self._restore: Optional[Dict[str, Optional[Tensor]]] = None  # the samples a no-grad forward set aside
        self._awaiting_backward = False  # the last forward with gradients drew samples its backward has not used
        self._checkpointing_modules = None

    def _checkpointing(self, module: nn.Module) -> bool:
        """Whether activation checkpointing is on (transformers' ``gradient_checkpointing`` flags)."""
        if self._checkpointing_modules is None:
            self._checkpointing_modules = [m for m in module.modules() if hasattr(m, "gradient_checkpointing")]
        return any(m.gradient_checkpointing is True for m in self._checkpointing_modules)

    def __call__(self, module: nn.Module, args, kwargs=None):
        if self._layers is None:
            self._layers = [m for m in module.modules() if isinstance(m, MaskedDoRALinear)]
        if self._layers and is_regathered(self._layers[0].weight):
            # FSDP2 / ZeRO-3 gather this forward's parameters where the last step's were, keeping the key the
            # row-norm cache checks (RowNormCache): forget the norms (not ||W0||^2, W0 is frozen). Within this
            # forward and its backward (checkpoint recomputation included) the parameters do not change.
            for layer in self._layers:
                layer.invalidate_norm_cache(weight_sq=False)
        groups = self.state.groups
        if self.state.config.budget == "exact" and not self.state.compacted_for_training:
            plans = self.state.exact_plan()
            for key, group in groups.items():
                group.set_planned(plans[key])
            return None
        self._restore = None
        if module.training and groups:
            if not torch.is_grad_enabled():
                self._restore = {key: group._sample for key, group in groups.items()}
            elif self._awaiting_backward and self._checkpointing(module):
                raise RuntimeError(
                    "masked_dora: a second training forward with gradients started before the backward of the "
                    "previous one, under activation checkpointing: each forward draws its own mask sample, and the "
                    "previous forward's blocks would be recomputed with this one's in the backward, which gives "
                    "wrong gradients. Run each forward's backward first (or concatenate the inputs into one "
                    "forward), disable gradient checkpointing, use MaskedDoRAConfig(budget='exact') (the same "
                    "masks in every forward), or run forwards whose outputs you do not backpropagate under "
                    "torch.no_grad()")
        for group in groups.values():
            group.set_planned(None)
            group.draw_sample()
        return None

    def after(self, module: nn.Module, args, output):
        """Model forward hook: put back the samples a no-grad forward set aside; after a forward with gradients,
        note that its backward is pending until a gradient reaches one of its output tensors (a forward that
        raises inside never gets here, so it leaves nothing pending)."""
        if self._restore is not None:
            for key, sample in self._restore.items():
                self.state.groups[key]._sample = sample
            self._restore = None
            return None
        if not (module.training and torch.is_grad_enabled()) or self.state.config.budget == "exact" \
                or torch.compiler.is_compiling():  # (a tensor hook would break the graph: compiled, not watched)
            return None
        values = output.values() if isinstance(output, dict) else output if isinstance(output, (tuple, list)) \
            else (output,)
        tensors = [t for t in values if isinstance(t, Tensor) and t.requires_grad]
        if tensors:
            self._awaiting_backward = True
            for t in tensors:
                t.register_hook(self._backward_reached)
        return None

    def _backward_reached(self, grad: Tensor) -> None:
        self._awaiting_backward = False

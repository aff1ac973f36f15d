"""``MaskedDoRAConfig``: what :func:`~masked_dora.models.prepare_model` builds (reads like PEFT's LoraConfig)."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

from ..masks.gates import GATES
from ..nn.functional import DROPOUT_MODES
from .specs import GROUP_KINDS

IMPORTANCE = ("none", "magnitude", "taylor", "activation")
GQA_MODES = ("kv_groups", "query_heads")
ALLOCATIONS = ("uniform", "global")
BUDGETS = ("lagrangian", "exact")
HIDDEN_MODES = ("global", "per_block")
DEFAULT_ALIGNMENT = {"mlp": 64, "heads": 1, "hidden": 8}
SAVE_FORMS = ("auto", "plain", "per_layer")
MASK_LEARNING = ("units", "layer")


@dataclass
class MaskedDoRAConfig:
    """Adapter, mask and sparsity settings.

    * ``rank``, ``alpha``, ``use_rslora``: the DoRA adapter (scaling ``alpha/rank``
      or ``alpha/sqrt(rank)``); every member of a targeted group gets one.
    * ``lora_dropout`` (default 0), ``dropout_mode``: dropout on the adapter's input in training.
      ``"peft"`` is PEFT's DoRA dropout exactly (a second base GEMM on the dropped part of the
      input); ``"adapter"`` drops the input of the adapter branch only (cheaper). See
      :func:`masked_dora.nn.functional.masked_dora_linear`.
    * ``target_groups``: group kinds to prune, from ``("mlp", "heads", "hidden")``.
    * ``target_sparsity``: fraction of units removed per kind (a float applies
      to every targeted kind): MLP channels, query heads for ``heads``, residual-stream channels for ``hidden``.
    * ``alignment``: kept counts are multiples of this (MLP channels per layer,
      default 64; heads: whole heads, default 1; hidden channels, default 8) so compact GEMMs keep fast tiles.
    * ``hidden_mode``: how ``"hidden"`` prunes the residual stream. ``"global"``: one mask over the
      residual stream shared by every block (embeddings, every norm, every projection and the LM head
      shrink; exact for RMSNorm decoders, see :mod:`masked_dora.models.hidden`). ``"per_block"``: the
      residual stream stays full width and each block has its own mask over the channels it reads and writes
      (compacted: one gather per consumer set, ``CompactLinear`` writers; exact for RMSNorm and LayerNorm
      families, saved in the per-layer form, see :mod:`masked_dora.models.hidden_per_block`).
    * ``gqa``: ``"kv_groups"`` removes whole KV groups (a KV head with its query
      heads); ``"query_heads"`` removes the same number of query heads in every
      KV group. Identical for models without GQA.
    * ``allocation``: ``"uniform"`` keeps the same count in every layer (a plain
      transformers checkpoint after compaction); ``"global"`` ranks units across
      layers (each layer keeps at least one aligned block).
    * ``gate``, ``temperature`` (``None``: the gate's default) and
      ``final_temperature``/``temperature_steps``: the gate and its schedule.
    * ``importance``: mask initialisation score (``none``: every unit starts
      kept at ``mask_init``; ``magnitude``, ``taylor`` or ``activation``: the
      top units by score start kept, the rest start pruned).
    * ``warmup_steps``, ``lambda_lr``, ``lambda_2_init``: the Lagrangian
      controller (target ramp, multiplier learning rate, starting weight of the
      quadratic term: a proportional gain that damps the loop; 0 is CoFi's
      undamped start, which overshoots in short runs). With ``budget="exact"``,
      ``warmup_steps`` is gradual pruning instead: the per-forward plan removes the fraction
      ``1 - (1 - step / warmup_steps)^3`` of the target (Zhu and Gupta's cubic schedule, from
      dense to the target; :func:`~masked_dora.models.sparsity.cubic_progress`), so the adapters
      absorb the units as they go; hardening always removes the whole target.
    * ``mask_lr``: the mask logits' learning rate, in their own optimizer group
      with no weight decay (:func:`~masked_dora.models.param_groups`; the HF
      Trainer callback sets this group up). Logits are decisions, not weights:
      with Adam a logit moves about ``mask_lr`` per step, so it must be orders of
      magnitude above a LoRA learning rate to reach a decision within a run.
    * ``budget``: how training holds the sparsity target. ``"lagrangian"``: stochastic
      gates whose expected kept fraction a Lagrangian controller steers to the
      target (CoFi, "Learning to Prune"); the model trains at whatever the samples
      keep, and hardening then takes the top-k of the logits. ``"exact"``: every
      forward (training and eval) uses exactly the mask hardening would take from
      the current logits (the top-k per layer, or across layers with
      ``allocation="global"``), and the logits learn through a straight-through
      gradient (``d z / d theta`` of ``sigmoid(theta)``); no penalty, no
      controller, and the model always trains at the target sparsity. Units swap
      when their accumulated gradient evidence moves their logits past each other.
    * ``mask_learning``: what the mask logits learn. ``"units"`` (default): every unit's logit moves on its own
      gradient. ``"layer"``: the logits of one group (one layer's MLP channels, or its heads) move together by
      one shared offset (every unit's gradient is the group's mean: :attr:`GroupMask.tied`), so the order inside
      the layer stays the initial importance ranking and only the layer's standing against the others is
      learned: with ``allocation="global"``, the layer budgets. (With ``"uniform"`` allocation the hard cut
      cannot change.)
    * ``stacks``: an encoder-decoder's block stacks to prune, by name (``("encoder",)``, ``("decoder",)``;
      ``None``, the default: every stack the model has). Families with one stack have one, named ``""``.
    * ``save_form``: how the compacted model will be saved, decided by :func:`prepare_model` before any
      training (``MaskedDoRAState.save_form``). ``"auto"``: a plain transformers checkpoint where the
      config class can express the pruned sizes (uniform allocation; pruned heads only with an explicit
      ``head_dim`` the config accepts), else the per-layer form that :func:`load_compact` reads, with a
      warning at ``prepare_model`` saying why. ``"plain"``: the plain checkpoint or an error at
      ``prepare_model``. ``"per_layer"``: always the per-layer form.
    """

    rank: int = 8
    alpha: float = 16.0
    use_rslora: bool = False
    lora_dropout: float = 0.0
    dropout_mode: str = "peft"
    target_groups: Tuple[str, ...] = ("mlp", "heads")
    target_sparsity: Union[float, Dict[str, float]] = 0.25
    alignment: Dict[str, int] = field(default_factory=lambda: dict(DEFAULT_ALIGNMENT))
    gqa: str = "kv_groups"
    allocation: str = "uniform"
    gate: str = "hard_concrete"
    temperature: Optional[float] = None
    final_temperature: Optional[float] = None
    temperature_steps: int = 0
    importance: str = "magnitude"
    mask_init: float = 3.0
    warmup_steps: int = 0
    lambda_lr: float = 0.05
    mask_lr: float = 0.05
    lambda_2_init: float = 30.0
    budget: str = "lagrangian"
    save_form: str = "auto"
    mask_learning: str = "units"
    stacks: Optional[Tuple[str, ...]] = None
    hidden_mode: str = "global"

    def __post_init__(self):
        if self.stacks is not None:
            if isinstance(self.stacks, str):
                self.stacks = (self.stacks,)
            self.stacks = tuple(self.stacks)
            if not self.stacks or not all(isinstance(n, str) for n in self.stacks):
                raise ValueError(f"stacks: expected None or a non-empty tuple of stack names (e.g. ('encoder',)), "
                                 f"got {self.stacks!r}")
        if isinstance(self.target_groups, str):
            self.target_groups = (self.target_groups,)
        self.target_groups = tuple(self.target_groups)
        if not self.target_groups or any(k not in GROUP_KINDS for k in self.target_groups):
            raise ValueError(f"target_groups: expected a non-empty subset of {GROUP_KINDS}, got {self.target_groups}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank: expected a positive int, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha: expected a positive float, got {self.alpha}")
        if isinstance(self.target_sparsity, (int, float)):
            self.target_sparsity = {k: float(self.target_sparsity) for k in self.target_groups}
        self.target_sparsity = {k: float(v) for k, v in dict(self.target_sparsity).items()}
        unknown = sorted(set(self.target_sparsity) - set(GROUP_KINDS))
        if unknown:
            raise ValueError(f"target_sparsity: expected keys among the group kinds {GROUP_KINDS}, got {unknown}")
        untargeted = sorted(set(self.target_sparsity) - set(self.target_groups))
        if untargeted:  # a warning, not an error: a state saved with such a config must still load
            warnings.warn(f"target_sparsity: {untargeted} are not in target_groups={self.target_groups}, so those "
                          f"kinds are not pruned; add them to target_groups to prune them", stacklevel=3)
        for kind in self.target_groups:
            value = self.target_sparsity.get(kind)
            if value is None or not 0.0 <= value < 1.0:
                raise ValueError(f"target_sparsity[{kind!r}]: expected a fraction in [0, 1), got {value}")
        self.alignment = {**DEFAULT_ALIGNMENT, **dict(self.alignment)}
        for kind, value in self.alignment.items():
            if kind not in GROUP_KINDS or isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"alignment[{kind!r}]: expected a positive int for a kind in {GROUP_KINDS}, "
                                 f"got {value!r}")
        for name, value, allowed in (("gqa", self.gqa, GQA_MODES), ("allocation", self.allocation, ALLOCATIONS),
                                     ("gate", self.gate, tuple(GATES)), ("importance", self.importance, IMPORTANCE),
                                     ("budget", self.budget, BUDGETS),
                                     ("dropout_mode", self.dropout_mode, DROPOUT_MODES),
                                     ("save_form", self.save_form, SAVE_FORMS),
                                     ("hidden_mode", self.hidden_mode, HIDDEN_MODES),
                                     ("mask_learning", self.mask_learning, MASK_LEARNING)):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
        for name in ("temperature", "final_temperature"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name}: expected a positive float or None, got {value}")
        for name in ("temperature_steps", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected a non-negative int, got {getattr(self, name)}")
        for name in ("lambda_lr", "mask_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: expected a positive float, got {getattr(self, name)}")
        if isinstance(self.lora_dropout, bool) or not isinstance(self.lora_dropout, (int, float)) \
                or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout: expected a probability in [0, 1), got {self.lora_dropout!r}")
        if not self.lambda_2_init >= 0:
            raise ValueError(f"lambda_2_init: expected a non-negative float, got {self.lambda_2_init}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["target_groups"] = list(self.target_groups)
        if self.stacks is not None:
            d["stacks"] = list(self.stacks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MaskedDoRAConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"config: unknown MaskedDoRAConfig keys {sorted(unknown)}")
        return cls(**d)

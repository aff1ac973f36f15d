r"""Hidden-dimension pruning, ``hidden_mode="global"``: one mask over the residual stream (PAT, Sheared-LLaMA).

One :class:`~masked_dora.models.group_mask.GroupMask` (kind ``"hidden"``, key ``"hidden"``) holds a logit per
residual channel (``d = hidden_size`` units) and is shared by every block. It gates everything that writes
the residual stream: the input embeddings' output (:class:`OutputGate`, a forward hook) and the output rows of
every block's attention output and MLP output projections (their :class:`~masked_dora.nn.MaskedDoRALinear`
reads its ``z`` from the group: ``MaskView(group, "writer")``; as consumers of the heads/MLP groups they keep
their input gating). With hard masks a pruned residual channel is then exactly 0 everywhere: the residual is
a sum of gated writes, and an RMSNorm maps 0 to 0 (``w_c * 0 / rms``). Nothing else is gated: the readers
(q/k/v, the MLP's producers, the LM head) see zeros in the pruned channels, so their columns there are dead.

Compaction keeps the ``d'`` kept channels: the embeddings' columns (and a tied LM head with them), the writers'
rows, the readers' columns, and every norm's weight. An RMSNorm over the full width with zeros in the pruned
channels is, with ``m' = mean over the kept channels of x_c^2``,

.. math::

    \mathrm{rms}_{full}^2 = \tfrac{d'}{d} m' + \epsilon = \tfrac{d'}{d}\,(m' + \epsilon \tfrac{d}{d'}),\qquad
    y_c = \frac{w_c x_c}{\mathrm{rms}_{full}} = \frac{(w_c \sqrt{d/d'})\, x_c}{\sqrt{m' + \epsilon d / d'}},

so the compacted norm over ``d'`` channels is exact with its weight scaled by ``sqrt(d/d')`` **and** the config's
``rms_norm_eps`` scaled by ``d/d'``. The compacted config also states ``head_dim`` (``hidden_size`` is then no
longer ``heads * head_dim``): a plain transformers checkpoint.

Not exact, so refused: LayerNorm families (a zero channel changes the mean they subtract), families that scale
the embeddings by ``sqrt(hidden_size)`` (Gemma: the compacted config would scale by ``sqrt(d')``), and every
family not checked with the chain prepare -> train -> harden -> compact -> plain reload (see
:class:`~masked_dora.models.specs.HiddenSpec`).
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .blocks import Block, block_modules, find_layers, head_layout, is_consumer_role, model_blocks, role_paths
from .group_mask import GroupMask, MaskView

HIDDEN_KEY = "hidden"


class OutputGate:
    """Forward hook multiplying a module's output channels (the input embeddings) by the hidden group's ``z``."""

    def __init__(self, group: GroupMask, role: str = "embed"):
        group.index(role)
        self.group, self.role = group, role

    def __call__(self, module: nn.Module, args, output):
        z = self.group.per_channel(self.role, self.group.values()).to(output.dtype)
        return output * z


def _module_name(model: nn.Module, module: Optional[nn.Module]) -> Optional[str]:
    if module is None:
        return None
    return next((name for name, m in model.named_modules() if m is module), None)


def _has_layer_norm(model: nn.Module) -> bool:
    """Whether ``model`` holds a LayerNorm (torch's, or a family's own class named ``...LayerNorm``)."""
    return any(isinstance(m, nn.LayerNorm) or type(m).__name__.endswith("LayerNorm") for m in model.modules())


def hidden_refusal(model: nn.Module, spec, config) -> Optional[str]:
    """Why ``config`` cannot prune ``model``'s hidden dimension in ``hidden_mode="global"`` (``None``: it can);
    nothing is changed."""
    model_type = getattr(model.config, "model_type", "")
    listed = spec.listed_refusal("hidden", model.config)  # before the LayerNorm test: a VLM's vision tower has some
    if listed is not None:
        return f"config.target_groups: 'hidden' cannot be pruned in a {model_type!r} model: {listed}"
    if _has_layer_norm(model):
        return (f"config.target_groups: 'hidden' cannot be pruned in a {model_type!r} model: its LayerNorms subtract "
                f"the mean over the hidden width, which a zero (pruned) channel changes, so the compacted model "
                f"would not equal the masked one (hidden_mode='global' is exact for RMSNorm families only; "
                f"hidden_mode='per_block' keeps the residual stream full width and is exact here)")
    reason = spec.refusal("hidden", model.config)
    if reason is not None or spec.stacks:
        return (f"config.target_groups: 'hidden' cannot be pruned in a {model_type!r} model: "
                f"{reason or 'it has several block stacks'}")
    if config.allocation != "uniform":
        return ("config.allocation: 'hidden' needs allocation='uniform': allocation='global' gives the MLP/heads "
                "per-layer sizes, saved in the per-layer form, which cannot hold a pruned hidden size (the hidden "
                "group is one group for the whole model, so it needs no global allocation of its own)")
    if config.save_form == "per_layer":
        return "config.save_form: 'hidden' compacts to a plain checkpoint only; use save_form='auto' or 'plain'"
    try:
        embed = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        embed = None
    if not isinstance(embed, nn.Embedding):
        return f"model: 'hidden' needs the input embeddings as an nn.Embedding, got {type(embed).__name__}"
    return None


def planned_hidden_size(model: nn.Module, spec, config) -> int:
    """``d'``: the residual channels hardening keeps (``kept_count`` aligned to ``alignment["hidden"]``)."""
    from ..masks.controller import kept_count

    d = int(getattr(model.config, spec.hidden_key))
    return kept_count(d, config.target_sparsity["hidden"], config.alignment["hidden"])


def check_hidden(model: nn.Module, spec, config) -> None:
    """Raise ``ValueError`` if ``config``'s hidden pruning cannot compact ``model`` (``"global"``: to a plain
    checkpoint; ``"per_block"``: :func:`~masked_dora.models.hidden_per_block.per_block_refusal`)."""
    if "hidden" not in config.target_groups:
        return
    if config.hidden_mode == "per_block":  # no plain config to check: the per-layer form, see hidden_per_block
        from .hidden_per_block import per_block_refusal

        reason = per_block_refusal(model, spec, config, model_blocks(model, spec, config.stacks))
        if reason is not None:
            raise ValueError(reason)
        return
    reason = hidden_refusal(model, spec, config)
    if reason is not None:
        raise ValueError(reason)
    from .compact import config_block_sizes
    from .plain_config import plain_config_or_reason
    from .save_form import planned_sizes

    blocks_specs = [b.spec for b in model_blocks(model, spec)]
    plain, reason = plain_config_or_reason(model.config, blocks_specs, config_block_sizes(model, spec),
                                           planned_sizes(model, spec, config), planned_hidden_size(model, spec, config))
    if plain is not None:
        reason = _validate_hidden(plain, spec, planned_hidden_size(model, spec, config))
    if reason is not None:
        raise ValueError(f"config: hidden pruning compacts to a plain checkpoint, which these sizes cannot be "
                         f"({reason}); change target_sparsity/alignment")


def _validate_hidden(plain, spec, kept: int) -> Optional[str]:
    setattr(plain, spec.hidden_key, kept)
    validate = getattr(plain, "validate", None)
    if callable(validate):
        try:
            validate()
        except Exception as exc:  # noqa: BLE001  (the config class's own validation error)
            return f"{type(plain).__name__} refuses hidden_size={kept}: {str(exc).strip().splitlines()[-1]}"
    return None


def build_hidden_group(model: nn.Module, blocks: List[Block], config, wrap) -> GroupMask:
    """The hidden group: gates the input embeddings (forward hook) and every block's writers' output rows.

    ``wrap(block, path, module, config, where)``: prepare's wrapper (a writer the heads/MLP groups already
    wrapped is returned as it is, keeping its input gating).
    """
    d = int(getattr(model.config, blocks[0].spec.hidden_key))
    channels = torch.arange(d)
    group = GroupMask("hidden", 0, d, {"embed": channels, "writer": channels, "reader": channels},
                      gate=config.gate, mask_init=config.mask_init, tied=config.mask_learning == "layer")
    group.shared_by_blocks = True
    for b in blocks:
        for role, module in block_modules(b.module, b.spec, ("hidden",))["hidden"].items():
            layer = wrap(b.module, role_paths(b.spec, "hidden")[role], module, config, b.path)
            layer.set_mask_source(MaskView(group, "writer"))
    model.get_input_embeddings().register_forward_hook(OutputGate(group, "embed"))
    return group


def readers(model: nn.Module, state) -> List[Tuple[str, nn.Module]]:
    """``[(qualified name, module)]``: every layer reading the residual stream (q/k/v or qkv, the MLP's
    producers, and the LM head if the model has one)."""
    out = []
    for b in state.blocks(model):
        mods = block_modules(b.module, b.spec, ("mlp", "heads"))
        paths = {**role_paths(b.spec, "heads"), **role_paths(b.spec, "mlp")}
        for kind, roles in mods.items():
            for role, m in roles.items():
                if role != "output" and not is_consumer_role(role):
                    out.append((f"{b.path}.{paths[role]}", m))
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        out.append((_module_name(model, head), head))
    # a task head on the final hidden state (sequence/token classification's score, QA's qa_outputs): a
    # reader too, which get_output_embeddings() does not name
    width = state.groups[HIDDEN_KEY].num_units if HIDDEN_KEY in state.groups else None
    for name, child in model.named_children():
        if child is not head and isinstance(child, nn.Linear) and child.in_features == width:
            out.append((name, child))
    return out


def writers(model: nn.Module, state) -> List[Tuple[str, nn.Module]]:
    out = []
    for b in state.blocks(model):
        for role, m in block_modules(b.module, b.spec, ("hidden",))["hidden"].items():
            out.append((f"{b.path}.{role_paths(b.spec, 'hidden')[role]}", m))
    return out


@torch.no_grad()
def hidden_magnitude(model: nn.Module, state) -> Tensor:
    """Per channel: the scale-free squared norm of the embeddings' column, of every writer's row and every
    reader's column (each divided by its layer's total), summed."""
    score = torch.zeros(state.groups[HIDDEN_KEY].num_units, dtype=torch.float64)
    columns = [model.get_input_embeddings().weight] + [m.weight for _, m in readers(model, state)]
    for w in columns:
        per = w.detach().double().pow(2).sum(0).cpu()
        score += per / per.sum().clamp_min(1e-30)
    for _, m in writers(model, state):
        per = m.weight.detach().double().pow(2).sum(1).cpu()
        score += per / per.sum().clamp_min(1e-30)
    return score


@torch.no_grad()
def hidden_activation(model: nn.Module, state, sq: Dict[Tuple[str, str], Tensor]) -> Tensor:
    """Per channel (Wanda-style, as for the other kinds): ``sum over readers of ||X_c||_2 * ||W[:, c]||_2`` with
    ``X`` the reader's input on the calibration batches (``sq[(HIDDEN_KEY, reader name)]``: ``sum X_c^2``)."""
    score = torch.zeros(state.groups[HIDDEN_KEY].num_units, dtype=torch.float64)
    for name, m in readers(model, state):
        seen = sq.get((HIDDEN_KEY, name))
        if seen is not None:
            score += seen.sqrt() * m.weight.detach().double().pow(2).sum(0).sqrt().cpu()
    return score


def hidden_keep(state) -> Optional[Tensor]:
    """The kept residual channels (ascending indices), or ``None`` when the hidden dimension is not pruned."""
    if HIDDEN_KEY not in state.groups:
        return None
    return torch.nonzero(state.groups[HIDDEN_KEY].hard().cpu()).flatten()


def norm_scale(d: int, d_kept: int) -> float:
    """The factor on a compacted RMSNorm's weight: ``sqrt(d / d')`` (see the module docstring)."""
    return math.sqrt(d / d_kept)


def hidden_config(config, spec, d: int, kept: Tensor, head_dim: int):
    """``config`` (a plain compacted config, changed in place) with ``hidden_size = d'``, an explicit
    ``head_dim`` and the norms' epsilon scaled by ``d / d'`` (see the module docstring)."""
    d_kept = int(kept.numel())
    setattr(config, spec.hidden_key, d_kept)
    setattr(config, spec.heads.head_dim_key, head_dim)
    eps_key = spec.hidden.eps_key
    setattr(config, eps_key, float(getattr(config, eps_key)) * d / d_kept)
    return config


@torch.no_grad()
def cut_hidden(model: nn.Module, state, tensors: Dict[str, Tensor], kept: Tensor) -> Dict[str, Tensor]:
    """``tensors`` (the compacted state dict at full residual width) cut to the kept residual channels: the
    embeddings' and readers' columns, the writers' rows (and biases), every norm's weight scaled by
    ``sqrt(d/d')``."""
    d = state.groups[HIDDEN_KEY].num_units
    scale = norm_scale(d, kept.numel())
    out = dict(tensors)

    def cut(key, dim, factor=None):
        if key not in out:
            return
        t = out[key]
        if t.shape[dim] != d:
            raise RuntimeError(f"compact_model: {key} has {t.shape[dim]} channels on dim {dim}, expected {d}")
        t = t.index_select(dim, kept.to(t.device))
        if factor is not None:
            t = (t.double() * factor).to(t.dtype)
        out[key] = t.contiguous()

    cut(_module_name(model, model.get_input_embeddings()) + ".weight", 1)
    for name, _ in readers(model, state):
        cut(name + ".weight", 1)
    for name, _ in writers(model, state):
        cut(name + ".weight", 0)
        cut(name + ".bias", 0)
    for name in norm_names(model, state):
        if name + ".weight" not in out:
            raise RuntimeError(f"compact_model: no norm weight {name}.weight to scale (HiddenSpec.norms)")
        cut(name + ".weight", 0, scale)
    return out


def norm_names(model: nn.Module, state) -> List[str]:
    """Qualified names of the RMSNorms over the residual stream: the final one and each block's."""
    spec = state.spec
    layers_path, _ = find_layers(model, spec)
    parent = layers_path.rpartition(".")[0]
    norms = [f"{parent}.{spec.hidden.final_norm}" if parent else spec.hidden.final_norm]
    return norms + [f"{b.path}.{n}" for b in state.blocks(model) for n in spec.hidden.norms]


@torch.no_grad()
def narrow_residual_stream(model: nn.Module, state, kept: Tensor) -> None:
    """Narrow the prepared ``model``'s residual stream to the ``kept`` channels (ascending indices) in place, for
    training at the kept width (:func:`~masked_dora.models.compact_for_training`), as :func:`cut_hidden` and
    :func:`hidden_config` narrow the compacted model: the input embeddings' columns (a tied LM head shares them),
    every reader's columns (a masked-DoRA reader keeps its row norms over the whole row:
    :meth:`~masked_dora.nn.MaskedDoRALinear.keep_input_columns`), every RMSNorm's weight scaled by ``sqrt(d/d')``
    and its epsilon by ``d/d'``, and the config (``hidden_size``, ``head_dim``, epsilon). The embeddings' gate goes
    (every kept channel passes it). The writers' rows are the caller's to cut."""
    from ..nn import MaskedDoRALinear

    spec, group = state.spec, state.groups[HIDDEN_KEY]
    d, d_kept = group.num_units, int(kept.numel())
    head_dim = head_layout(model.config, spec).head_dim
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = head is not None and head.weight is embed.weight
    keep = torch.zeros(d, dtype=torch.bool)
    keep[kept] = True

    def narrowed(weight: Tensor, dim: int, factor: float = 1.0) -> nn.Parameter:
        w = weight.index_select(dim, kept.to(weight.device))
        if factor != 1.0:
            w = (w.double() * factor).to(weight.dtype)
        return nn.Parameter(w.contiguous(), requires_grad=weight.requires_grad)

    embed.weight, embed.embedding_dim = narrowed(embed.weight, 1), d_kept
    for handle_id, hook in list(embed._forward_hooks.items()):
        if isinstance(hook, OutputGate) and hook.group is group:
            del embed._forward_hooks[handle_id]
    for _, m in readers(model, state):
        if isinstance(m, MaskedDoRALinear):
            m.keep_input_columns(keep)
            continue
        m.weight = embed.weight if (tied and m is head) else narrowed(m.weight, 1)
        m.in_features = d_kept
    scale = norm_scale(d, d_kept)
    for name in norm_names(model, state):
        norm = model.get_submodule(name)
        norm.weight = narrowed(norm.weight, 0, scale)
        setattr(norm, spec.hidden.eps_attr, float(getattr(norm, spec.hidden.eps_attr)) * d / d_kept)
    hidden_config(model.config, spec, d, kept, head_dim)

r"""Training at the kept size: once the masks are fixed, the pruned channels leave the prepared model.

After :func:`~masked_dora.models.harden` the recovery phase still runs full-width GEMMs whose pruned rows
and columns compute exact zeros. :func:`compact_for_training` removes them in place while every adapter
stays a trainable masked-DoRA layer:

* a group's gated members (producers: ``gate_proj``/``up_proj`` rows, q/k/v head blocks, a fused
  projection's rows) keep their kept rows of ``W0``, the bias, ``B``, the magnitude
  (:meth:`~masked_dora.nn.MaskedDoRALinear.keep_output_rows`): each row's norm is its own, so nothing changes;
* a group's consumers (``down_proj``, ``o_proj``) keep the kept columns of ``W0`` and ``A``
  (:meth:`~masked_dora.nn.MaskedDoRALinear.keep_input_columns`); their input is exactly zero in the dropped
  columns, and the row norm still counts the dropped part (``n^2 = n_kept^2 + n_dropped^2``);
* attention modules get their new head counts (``HeadSpec.attrs``), per-head norms their kept heads, MLP
  modules their new width (``MLPSpec.size_attrs``), an MLP's depthwise convolutions their kept channels
  (``MLPSpec.depthwise``), MoE experts each their kept channels;
* every group becomes one of its kept units, all kept (fixed), so a query head's ``InputGate`` goes;
* a pruned residual stream (``hidden_mode="global"``) narrows as :func:`~masked_dora.models.compact_model` narrows
  it (:func:`~masked_dora.models.hidden.narrow_residual_stream`; the writers keep their kept rows). With
  ``"per_block"`` the stream stays full width, so the blocks' reads and writes would need gathers and scatters
  while training: refused (the model trains at full width).

So a step computes what the full-width step computed, on the kept size; with an optimizer that leaves
parameters with a zero gradient alone (a fresh optimizer without weight decay on ``A``: the defaults of
:func:`~masked_dora.models.train_masked` and the HF Trainer), training on and compacting
(:func:`~masked_dora.models.compact_model`) gives the model the full-width run gives, up to rounding
(the GEMMs have other shapes). With dropout (``lora_dropout``, or the model's own) the runs draw other random
masks (the fixed gates still draw their noise, over fewer units), so they agree in distribution only.
"""

from __future__ import annotations

import copy
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from ..nn import MaskedDoRALinear, QuantizedBaseDoRALinear
from ..nn.norm_cache import is_regathered
from .blocks import Block, block_modules, built_head_layout, holds_group
from .resize import keep_depthwise_channels, keep_per_head, set_head_attrs, set_mlp_size_attrs
from .group_mask import ALWAYS_KEPT, GroupMask, InputGate, MaskView
from .hidden import HIDDEN_KEY, narrow_residual_stream, writers
from .prepare import get_state


def is_compacted_for_training(model: nn.Module) -> bool:
    return get_state(model).compacted_for_training


def compact_training_refusal(model: nn.Module) -> Optional[str]:
    """Why ``model`` cannot be compacted for training now (``None``: it can)."""
    state = get_state(model)
    loose = [key for key, g in state.groups.items() if not bool(g.mask_fixed)]
    if loose:
        return f"the groups {loose[:4]} still learn their masks: call masked_dora.harden(model) first"
    if "hidden" in state.config.target_groups and state.config.hidden_mode == "per_block":
        return ("with hidden_mode='per_block' the blocks' kept residual channels cannot leave the prepared model while "
                "it trains (compact_model can; hidden_mode='global' trains at the kept width)")
    if "heads" in state.config.target_groups and state.spec.heads_need_plain_config:
        return (f"a {model.config.model_type!r} attention reads its head counts from the model config, so its heads "
                f"cannot leave the prepared model while it trains")
    if any(isinstance(m, QuantizedBaseDoRALinear) for m in model.modules()):
        return ("its base is quantized (QLoRA-style), and cutting the layers would copy rows of their quantized "
                "weights out; compact_model dequantizes them at the end")
    if any(is_regathered(m.weight) for m in model.modules() if isinstance(m, MaskedDoRALinear)):
        return ("its parameters are sharded (FSDP2 or DeepSpeed ZeRO-3), and the sharded copies would keep the old "
                "shapes: compact before wrapping the model")
    return None


@torch.no_grad()
def compact_for_training(model: nn.Module) -> nn.Module:
    """Drop every pruned channel and head from the prepared ``model`` in place (see the module docstring) and
    return it. Needs fixed masks (:func:`~masked_dora.models.harden`). The members' parameters become new
    tensors: compact before building the optimizer, the Trainer, DDP/FSDP or ``torch.compile``. A second call
    does nothing."""
    state = get_state(model)
    if is_compacted_for_training(model):
        return model
    reason = compact_training_refusal(model)
    if reason is not None:
        raise ValueError(f"model: compact_for_training cannot run: {reason}; train at full width "
                         f"(train_masked(..., compact=False))")
    masks = {key: g.hard().cpu().clone() for key, g in state.groups.items()}
    for b in state.blocks(model):
        if "mlp" in state.config.target_groups and holds_group(b.module, b.spec, "mlp"):
            _compact_mlp_group(state, b)
        if "heads" in state.config.target_groups and holds_group(b.module, b.spec, "heads"):
            _compact_head_group(state, b, model.config)
    if HIDDEN_KEY in state.groups:
        _compact_hidden_group(state, model)
    state.compaction_masks = masks  # what save_training_state records, and load_training_state compacts by
    state.compacted_for_training = True
    return model


def _compact_mlp_group(state, b: Block) -> None:
    group = state.group("mlp", b.index)
    members = block_modules(b.module, b.spec, ("mlp",))["mlp"]
    keep = _slice_members(group, members)
    state.groups[f"mlp_{b.index}"] = _kept_group(group, keep, members)
    if b.spec.mlp.depthwise:  # (a dense MLP: its consumer's kept columns are the kept channels)
        keep_depthwise_channels(b.module, b.spec, torch.nonzero(keep["consumer"]).flatten())
    width = int(group.hard().sum()) // group.partitions
    set_mlp_size_attrs(b.module, b.spec, width, wrapped=True)
    if b.spec.mlp.experts:  # the MaskedDoRAExperts' own width (size_attrs name the original module's attributes)
        b.module.get_submodule(b.spec.mlp.experts).intermediate_dim = width


def _compact_head_group(state, b: Block, model_config) -> None:
    group = state.group("heads", b.index)
    mods = block_modules(b.module, b.spec, ("heads",))["heads"]
    hd = built_head_layout(model_config, b.spec, b.index).head_dim
    kept_heads = _kept_heads(group, mods, hd)
    state.groups[f"heads_{b.index}"] = _kept_group(group, _slice_members(group, mods), mods)
    heads = mods["output"].in_features // hd
    if "qkv" in mods:  # [q | k | v] rows in some order: the rest of the rows are 2 x the KV heads'
        kv = (mods["qkv"].out_features - heads * hd) // (2 * hd)
    else:
        kv = mods["key"].out_features // hd
    set_head_attrs(b.module, b.spec, heads, kv, hd)
    keep_per_head(b.module, b.spec, model_config, kept_heads, hd)


def _compact_hidden_group(state, model: nn.Module) -> None:
    """``hidden_mode="global"``: the whole residual stream narrows to its kept channels, as
    :func:`~masked_dora.models.compact_model` narrows it (:func:`~masked_dora.models.hidden.narrow_residual_stream`:
    the embeddings, the readers' columns, the norms and the config); the writers keep their kept rows."""
    group = state.groups[HIDDEN_KEY]
    members = dict(writers(model, state))
    keep = {role: group.per_channel(role, group.hard()).bool().cpu() for role in group.roles}
    for layer in members.values():
        layer.keep_output_rows(keep["writer"])
    narrow_residual_stream(model, state, torch.nonzero(keep["embed"]).flatten())
    state.groups[HIDDEN_KEY] = _kept_group(group, keep, members)


def _slice_members(group: GroupMask, members: Dict[str, nn.Module]) -> Dict[str, Tensor]:
    """Cut every member of ``group`` to its kept channels: gated members their rows, consumers (members
    whose input the group's units feed) their columns; drop the group's ``InputGate`` hooks. Returns the
    per-channel keep of each role the group indexes, taken before any cut."""
    hard = group.hard()
    keep = {role: group.per_channel(role, hard).bool().cpu() for role in group.roles}
    for role, layer in members.items():
        if not isinstance(layer, MaskedDoRALinear):
            raise TypeError(f"model: expected a masked-DoRA layer for {group.kind} role {role!r}, got "
                            f"{type(layer).__name__}")
        source = layer.mask_source
        if isinstance(source, MaskView) and source.group is group:  # gated: its rows follow the units
            layer.keep_output_rows(keep[role])
        elif role in keep and not bool(keep[role].all()):  # fed by the units: its input columns follow them
            layer.keep_input_columns(keep[role])
        for handle_id, hook in list(layer._forward_pre_hooks.items()):
            if isinstance(hook, InputGate) and hook.group is group:  # every kept head passes: the gate is 1
                del layer._forward_pre_hooks[handle_id]
    return keep


def _kept_group(group: GroupMask, keep: Dict[str, Tensor], members: Dict[str, nn.Module]) -> GroupMask:
    """The group of ``group``'s kept units, all kept and fixed, its ``members`` reading it instead."""
    units = group.hard().cpu()
    new_unit = torch.cumsum(units.long(), 0) - 1  # the kept unit's number among the kept ones
    indices = {}
    for role in group.roles:
        old = group.index(role).cpu()[keep[role]]
        indices[role] = torch.where(old == ALWAYS_KEPT, old, new_unit[old.clamp_min(0)])
    new = GroupMask(group.kind, group.layer, int(units.sum()), indices, partitions=group.partitions,
                    unit_size=group.unit_size, tied=group.tied)
    new.pruned_units = group.num_units - new.num_units + group.pruned_units
    new.shared_by_blocks = group.shared_by_blocks
    new.gate = copy.deepcopy(group.gate)  # the same gate (a custom one too), its temperature with it
    new.train(group.training)
    new.mask_logits.copy_(group.mask_logits.detach()[units.to(group.mask_logits.device)])
    new.set_mask(torch.ones(new.num_units, dtype=torch.bool))
    new = new.to(group.mask_logits.device)
    for layer in members.values():
        source = layer.mask_source
        if isinstance(source, MaskView) and source.group is group:
            layer.set_mask_source(MaskView(new, source.role))
    return new


def _kept_heads(group: GroupMask, mods: Dict[str, nn.Module], head_dim: int) -> Dict[str, Tensor]:
    """The kept query heads (the output's kept input columns) and KV heads (the key's kept rows; all of them
    where the key is kept whole), each ascending."""
    hard = group.hard()
    columns = torch.nonzero(group.per_channel("output", hard).bool().cpu()).flatten()
    heads = torch.unique(columns // head_dim)
    key = mods.get("key")
    if key is None:
        return {"heads": heads, "kv_heads": torch.empty(0, dtype=torch.long)}
    rows = torch.nonzero(key.keep_mask().cpu()).flatten()
    return {"heads": heads, "kv_heads": torch.unique(rows // head_dim)}

"""The masked groups of one block: each member layer wrapped in masked DoRA, one :class:`GroupMask` per group.

``prepare_model`` calls :func:`mlp_group` and :func:`head_group` for every block whose spec targets the group;
:func:`wrap_member` is the one place a model's linear layer (an ``nn.Linear``, GPT-2's transposed ``Conv1D``, or a
quantized linear layer kept as the base) becomes a :class:`~masked_dora.nn.MaskedDoRALinear`, and the hidden
dimension's groups (``hidden.py``, ``hidden_per_block.py``) wrap theirs with it too.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor, nn

from ..nn import ClampedGLU, ClampedSwiGLU, MaskedDoRAExperts, MaskedDoRALinear
from ..nn.quantized_base import QuantizedBaseDoRALinear, is_quantized_linear
from .blocks import (HeadLayout, block_modules, built_head_layout, dotted_attr, expert_biases, expert_index,
                     expert_matrices, features, is_consumer_role, is_conv1d, mlp_width, num_experts, packed_experts,
                     producer_index, role_paths, set_module)
from .config import MaskedDoRAConfig
from .group_mask import ALWAYS_KEPT, GroupMask, InputGate, MaskView
from .specs import QKV_LAYOUTS, HeadSpec


def _layer_kwargs(config: MaskedDoRAConfig, weight: Tensor) -> dict:
    """The masked-DoRA settings of a member layer with ``weight`` (out, in; or experts, out, in)."""
    return dict(rank=min(config.rank, *weight.shape[-2:]), alpha=config.alpha, use_rslora=config.use_rslora,
                gate=config.gate, mask_init=config.mask_init, lora_dropout=config.lora_dropout,
                dropout_mode=config.dropout_mode)


def wrap_member(block: nn.Module, path: str, module: nn.Module, config: MaskedDoRAConfig,
                where: str) -> MaskedDoRALinear:
    if isinstance(module, MaskedDoRALinear):
        return module
    conv1d = is_conv1d(module)
    if conv1d:  # GPT-2's transposed-weight linear layer: the same map as an nn.Linear
        linear = nn.Linear(module.nx, module.nf, device=module.weight.device, dtype=module.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(module.weight.t())
            linear.bias.copy_(module.bias)
        module = linear
    if is_quantized_linear(module):  # QLoRA-style: the quantized module stays the base, whole
        shape = torch.empty(module.out_features, module.in_features, device="meta")
        layer = QuantizedBaseDoRALinear.from_quantized(module, **_layer_kwargs(config, shape))
        layer.from_conv1d = False
        set_module(block, path, layer)
        return layer
    if not isinstance(module, nn.Linear):
        raise TypeError(f"model: expected an nn.Linear at {where}.{path}, got {type(module).__name__} "
                        f"(merge or unload other adapters first; for PEFT DoRA use masked_dora.from_peft)")
    layer = MaskedDoRALinear.from_linear(module, **_layer_kwargs(config, module.weight))
    layer.from_conv1d = conv1d  # the base model's layer stores its weight transposed (export_peft: fan_in_fan_out)
    set_module(block, path, layer)
    return layer


def _keep_all(layer: MaskedDoRALinear) -> None:
    """A member that is not gated (consumer, or K/V kept whole): plain DoRA, its own logits frozen."""
    layer.set_mask(torch.ones(layer.out_features, dtype=torch.bool))
    layer.mask_logits.requires_grad_(False)


def _wrap_experts(block, spec, config) -> None:
    """Replace an MoE block's experts module by a :class:`MaskedDoRAExperts` sharing its packed weights (copying
    them where they are stored transposed, or gate and up apart), in the layout ``spec.mlp.experts_layout`` says."""
    module, producers, consumer = packed_experts(block, spec)
    layout = spec.mlp.experts_layout
    gate_up, down = expert_matrices(module, spec, producers + (consumer,))
    gate_up_bias, down_bias = expert_biases(module, spec)
    experts = MaskedDoRAExperts.from_packed(gate_up, down, gate_up_bias=gate_up_bias, down_bias=down_bias,
                                            interleaved=layout.interleaved, **_expert_activation(module, layout),
                                            **_layer_kwargs(config, down))
    set_module(block, spec.mlp.experts, experts)


def _expert_activation(module, layout) -> dict:
    """How the experts ``module`` combines gate and up (``layout.glu``), as MaskedDoRAExperts' act_fn / glu."""
    if layout.glu == "act":
        return dict(act_fn=dotted_attr(module, layout.act_fn))
    if layout.glu == "act_pair":  # the module's act_fn(gate, up) combines them itself
        return dict(act_fn=None, glu=dotted_attr(module, layout.act_fn))
    if layout.glu == "clamped_swiglu":
        return dict(act_fn=None, glu=ClampedSwiGLU(getattr(module, layout.alpha_attr), module.limit))
    from transformers.activations import ACT2FN

    act_fn = ACT2FN[layout.act] if layout.act else dotted_attr(module, layout.act_fn)
    return dict(act_fn=None, glu=ClampedGLU(act_fn, getattr(module, layout.limit_attr),
                                            clamp_after_act=layout.glu == "act_clamped"))


def _channels_of_rows(width: int, rows: int, interleaved: bool) -> Tensor:
    """The channel of each of a member's ``rows`` (output rows of a producer, input columns of the consumer):
    ``rows // width`` segments of ``width`` stacked ([gate | up]), or interleaved (gate c, up c, ...)."""
    if interleaved:
        return torch.arange(width).repeat_interleave(rows // width)
    return torch.arange(width).repeat(rows // width)


def mlp_group(block, i, spec, config, where) -> GroupMask:
    """One group per block: the MLP's channels (units: channel c of expert e is unit e * width + c for an MoE
    block, whose experts are the group's partitions: each keeps the same count)."""
    if spec.mlp.experts and not isinstance(block.get_submodule(spec.mlp.experts), MaskedDoRAExperts):
        _wrap_experts(block, spec, config)
    mods = block_modules(block, spec, ("mlp",))["mlp"]
    experts = num_experts(block, spec)
    paths = role_paths(spec, "mlp", experts)
    width = mlp_width(block, spec)
    for role, m in mods.items():
        segments = 1 if is_consumer_role(role) else spec.mlp.segments_of(producer_index(role))
        size = features(m)[0 if is_consumer_role(role) else 1]
        if size != width * segments:
            raise ValueError(f"model: {where}.{paths[role]} has {size} channels, the MLP group expects "
                             f"{width * segments}")
    # a fused producer stacks segments: row r of it is channel r mod width (r // 2 where interleaved); expert e's
    # channels follow e's
    interleaved = spec.mlp.experts_layout.interleaved
    roles = {role: _channels_of_rows(width, features(m)[0 if is_consumer_role(role) else 1], interleaved)
             + width * expert_index(role) for role, m in mods.items()}
    group = GroupMask("mlp", i, width * max(1, experts), roles, gate=config.gate, mask_init=config.mask_init,
                      partitions=max(1, experts), tied=config.mask_learning == "layer")
    for role, m in mods.items():
        layer = wrap_member(block, paths[role], m, config, where)
        if is_consumer_role(role):
            _keep_all(layer)
            if spec.mlp.gate_consumer_input:  # the activation maps 0 elsewhere: cut a pruned channel here too
                layer.register_forward_pre_hook(InputGate(group, role))
        else:
            layer.set_mask_source(MaskView(group, role))
    return group


def _head_units(heads_spec: HeadSpec, hl: HeadLayout, by_kv: bool) -> Dict[str, Tensor]:
    """``{role: unit index of each channel}`` of the head group: the q/k/v rows and the output's input columns.

    Units are KV heads (``by_kv``: a KV head's query heads, key and value go with it) or query heads (the
    key and value rows stay, :data:`ALWAYS_KEPT` where they share a fused projection with gated q rows;
    separate k/v projections are no member of the group). A fused projection's rows are ordered by its
    ``qkv_layout``: ``"blocks"`` [q | k | v]; ``"grouped"``, per KV head [its query heads | k | v];
    ``"per_head"``, the grouped order with one query head per KV head ([q_h k_h v_h]); ``"chunked"``, per chunk
    of heads [its q | its k | its v] (whatever the order of the three: their rows are the same heads').
    """
    hd, gs = hl.head_dim, hl.group_size
    q_head = torch.arange(hl.heads * hd) // hd  # the query head of each q row, and of each output column
    q_unit = q_head // gs if by_kv else q_head
    kv_unit = torch.arange(hl.kv_heads * hd) // hd if by_kv else torch.full((hl.kv_heads * hd,), ALWAYS_KEPT)
    units = {"output": q_unit}
    if not heads_spec.qkv:
        units["query"] = q_unit
        if by_kv:
            units["key"] = units["value"] = kv_unit
        return units
    layout = heads_spec.qkv_layout
    if layout == "blocks":
        units["qkv"] = torch.cat([q_unit, kv_unit, kv_unit])
    elif layout in ("grouped", "per_head"):
        if layout == "per_head" and gs != 1:
            raise ValueError(f"spec: qkv_layout='per_head' has one query head per KV head, the config has {gs}; "
                             f"use qkv_layout='grouped'")
        kv = kv_unit.view(hl.kv_heads, hd)
        units["qkv"] = torch.cat([q_unit.view(hl.kv_heads, gs * hd), kv, kv], dim=1).flatten()
    elif layout == "chunked":
        chunks = heads_spec.qkv_chunks
        if gs != 1 or hl.heads % chunks:
            raise ValueError(f"spec: qkv_layout='chunked' needs no GQA and heads in {chunks} equal chunks, the config "
                             f"has {hl.heads} heads / {hl.kv_heads} KV heads")
        per_chunk = q_unit.view(chunks, -1)  # the unit of each row of one of the chunk's q, k or v
        units["qkv"] = torch.cat([per_chunk] * 3, dim=1).flatten()
    else:
        raise ValueError(f"spec: qkv_layout expected one of {QKV_LAYOUTS}, got {layout!r}")
    return units


def _check_head_shapes(mods, paths, units, hl, where) -> None:
    """Every member's channel count is the head layout's (rows of q/k/v, input columns of the output)."""
    for role, m in mods.items():
        side, attr = (0, "in_features") if role == "output" else (1, "out_features")
        expected = units[role].numel() if role in units else hl.kv_heads * hl.head_dim  # k/v kept whole
        if features(m)[side] != expected:
            raise ValueError(f"model: {where}.{paths[role]}.{attr} is {features(m)[side]}, expected {expected} "
                             f"({hl.heads} heads / {hl.kv_heads} KV heads x head_dim {hl.head_dim})")


def head_group(block, i, spec, config, model_config, where) -> Tuple[GroupMask, Optional[InputGate]]:
    """The head group of one block: one unit per KV head (``gqa="kv_groups"``, or no GQA), else one per query
    head with the same count kept in every KV group, the KV heads kept and the output's input gated."""
    hl = built_head_layout(model_config, spec, i)
    mods = block_modules(block, spec, ("heads",))["heads"]
    paths = role_paths(spec, "heads")
    by_kv = config.gqa == "kv_groups" or hl.group_size == 1
    units = _head_units(spec.heads, hl, by_kv)
    _check_head_shapes(mods, paths, units, hl, where)
    if by_kv:
        group = GroupMask("heads", i, hl.kv_heads, units, gate=config.gate, mask_init=config.mask_init,
                          unit_size=hl.group_size, partitions=spec.heads.partitions,
                          tied=config.mask_learning == "layer")
    else:
        group = GroupMask("heads", i, hl.heads, units, gate=config.gate, mask_init=config.mask_init,
                          partitions=hl.kv_heads, tied=config.mask_learning == "layer")
    for role, m in mods.items():
        layer = wrap_member(block, paths[role], m, config, where)
        if role in units and role != "output":
            layer.set_mask_source(MaskView(group, role))
        else:  # the output (its columns go at compaction) and separate k/v kept whole
            _keep_all(layer)
    input_gate = None
    if not by_kv:  # the KV heads stay, so a pruned query head must be cut at the output's input
        input_gate = InputGate(group, "output")
        block.get_submodule(paths["output"]).register_forward_pre_hook(input_gate)
    return group, input_gate

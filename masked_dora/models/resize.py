"""Sizes of a compacted model's blocks: build a model of the class with per-layer sizes, and cut modules in place.

:func:`build_compact_model` builds a fresh model of a config whose :data:`~masked_dora.models.blocks.LAYER_SIZES_KEY`
lists each block's sizes, and gives each block those sizes (:func:`resize_block`: its linear layers, packed experts,
per-head modules, depthwise convolutions and size attributes; random values, which a checkpoint's weights replace).
``compact_model`` builds its result with it, ``load_compact`` loads a per-layer checkpoint into it, and
``compact_for_training`` cuts a prepared model's modules in place with the ``keep_*`` / ``set_*`` functions here.
"""

from __future__ import annotations

import copy
from typing import Dict, Optional

import torch
from torch import nn

from .blocks import (LAYER_SIZES_KEY, block_modules, depthwise_modules, features, has_experts, head_layout,
                     holds_spec_mlp, is_consumer_role, is_conv1d, model_blocks, owner_of, packed_experts, per_expert,
                     per_head_modules, producer_index, role_paths, set_module)
from .hidden_per_block import resize_block_hidden
from .specs import ModelSpec, spec_for
from .spec_types import PerHeadSpec


def head_entries(entry: PerHeadSpec, heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The indices along ``entry.dim`` of the heads ``heads``: the heads themselves, or with ``entry.head_rows``
    each head's ``head_dim`` consecutive rows."""
    if not entry.head_rows:
        return heads
    return (heads[:, None] * head_dim + torch.arange(head_dim, device=heads.device)).flatten()


def new_linear(block: nn.Module, path: str, in_features: int, out_features: int) -> None:
    """Replace the layer at ``path`` by one of the new shape, of the same kind (nn.Linear or Conv1D)."""
    old = block.get_submodule(path)
    if features(old) == (in_features, out_features):
        return
    if is_conv1d(old):
        new = type(old)(out_features, in_features).to(device=old.weight.device, dtype=old.weight.dtype)
    else:  # an nn.Linear subclass with nn.Linear's constructor (Falcon's FalconLinear) keeps its class
        cls = type(old) if type(old).__init__ is nn.Linear.__init__ else nn.Linear
        new = cls(in_features, out_features, bias=old.bias is not None, device=old.weight.device,
                  dtype=old.weight.dtype)
    set_module(block, path, new)


def _resize_packed_experts(block: nn.Module, spec: ModelSpec, inter: int) -> None:
    """Give a fresh MoE block's packed expert parameters (and their biases) the width ``inter`` (random
    values), in the stored layout (``MLPSpec.experts_layout``)."""
    module, producers, consumer = packed_experts(block, spec)
    layout = spec.mlp.experts_layout
    experts, hidden = per_expert(module, spec, consumer, consumer=True).shape[:2]

    def stored(out, fan_in, flip):
        shape = (experts, fan_in, out) if flip else (experts, out, fan_in)
        return (experts * shape[1], shape[2]) if layout.flat else shape

    rows = inter * spec.mlp.segments_of(0) // (2 if layout.up else 1)  # (gate and up apart: each inter rows)
    shapes = {name: stored(rows, hidden, layout.transposed) for name in spec.mlp.producers + (
        (layout.up,) if layout.up else ())}
    if layout.bias:
        shapes.update({f"{name}_bias": (experts, inter * spec.mlp.segments_of(i))
                       for i, name in enumerate(spec.mlp.producers)})
    shapes[spec.mlp.consumer] = stored(hidden, inter, layout.transposed or layout.down_transposed)
    for name, shape in shapes.items():
        owner, attr = owner_of(module, name)
        old = getattr(owner, attr)
        if tuple(old.shape) != shape:
            setattr(owner, attr, nn.Parameter(old.new_empty(shape), requires_grad=old.requires_grad))


@torch.no_grad()
def keep_per_head(block: nn.Module, spec: ModelSpec, config, kept: Dict[str, torch.Tensor], head_dim: int) -> None:
    """Cut the block's per-head modules (``HeadSpec.per_head``) in place to the heads ``kept`` names
    (``{"heads": query head indices, "kv_heads": KV head indices}``): a ModuleList to those entries (and its
    count attribute), a parameter to those rows (dim ``entry.dim``; ``head_dim`` rows a head with
    ``entry.head_rows``)."""
    for entry, module in per_head_modules(block, spec, config):
        heads = kept[entry.follows]
        if entry.modules:
            old = getattr(module, entry.modules)
            setattr(module, entry.modules, nn.ModuleList([old[i] for i in heads.tolist()]))
        else:
            rows = head_entries(entry, heads, head_dim)
            for name, p in list(module.named_parameters(recurse=False)):
                setattr(module, name, nn.Parameter(p.detach().index_select(entry.dim, rows.to(p.device)).clone(),
                                                   requires_grad=p.requires_grad))
            if isinstance(module, nn.Linear) and entry.dim == 0:  # (a projection's rows: its output width too)
                module.out_features = len(rows)
        if entry.count_attr:
            setattr(module, entry.count_attr, len(heads))


def _resize_per_head(block: nn.Module, spec: ModelSpec, config, counts: Dict[str, int], head_dim: int) -> None:
    """Cut a fresh block's per-head modules to their first ``counts`` heads (``{"heads": n, "kv_heads": n}``);
    the checkpoint's weights replace them."""
    keep_per_head(block, spec, config, {k: torch.arange(counts[k]) for k in ("heads", "kv_heads")}, head_dim)


def resize_block(block: nn.Module, spec: ModelSpec, size: Dict[str, int], config, layer: int) -> None:
    """Give block number ``layer`` of a freshly built model (of ``config``) the sizes ``size`` (Linear shapes,
    per-head modules and module attributes)."""
    head_paths = role_paths(spec, "heads")
    hl = head_layout(config, spec, layer)
    heads_kept_whole = (size["heads"], size["kv_heads"], size["head_dim"]) == (hl.heads, hl.kv_heads, hl.head_dim)
    # (a block without the MLP of an MLPSpec.in_some_blocks spec (a hybrid's mixer block): none to resize)
    mlp_here = not spec.mlp.in_some_blocks or holds_spec_mlp(block, spec)
    kinds = ("heads",) if spec.mlp.experts or not mlp_here else ("mlp", "heads")
    # (heads as the config has them: nothing to resize, and a family whose heads are refused (DeepSeek-V3's
    # MLA) may have no q/k/v modules the spec could name)
    mods = block_modules(block, spec, tuple(k for k in kinds if k != "heads" or not heads_kept_whole))
    inter = size["intermediate"]
    if has_experts(block, spec):
        _resize_packed_experts(block, spec, inter)
    for role in mods.get("mlp", {}):  # a dense MLP's layers (an MoE spec has none here)
        path = role_paths(spec, "mlp")[role]
        fan_in, fan_out = features(mods["mlp"][role])
        if is_consumer_role(role):
            new_linear(block, path, inter, fan_out)
        else:
            new_linear(block, path, fan_in, inter * spec.mlp.segments_of(producer_index(role)))
    if "mlp" in mods:
        keep_depthwise_channels(block, spec, torch.arange(inter))
    set_mlp_size_attrs(block, spec, inter)
    if heads_kept_whole:
        return
    hd, heads, kv = size["head_dim"], size["heads"], size["kv_heads"]
    if spec.heads.qkv:
        new_linear(block, head_paths["qkv"], features(mods["heads"]["qkv"])[0], (heads + 2 * kv) * hd)
    else:
        for role, n in (("query", heads), ("key", kv), ("value", kv)):
            new_linear(block, head_paths[role], features(mods["heads"][role])[0], n * hd)
    new_linear(block, head_paths["output"], heads * hd, features(mods["heads"]["output"])[1])
    _resize_per_head(block, spec, config, set_head_attrs(block, spec, heads, kv, hd), hd)


@torch.no_grad()
def keep_depthwise_channels(block: nn.Module, spec: ModelSpec, channels: torch.Tensor) -> None:
    """Cut the block's MLP depthwise convolutions (``MLPSpec.depthwise``) in place to the MLP channels ``channels``
    (ascending): their filters and biases, and their channel counts and groups (which their forward passes to the
    convolution)."""
    for conv in depthwise_modules(block, spec):
        for name, p in list(conv.named_parameters(recurse=False)):
            setattr(conv, name, nn.Parameter(p.detach().index_select(0, channels.to(p.device)).clone(),
                                             requires_grad=p.requires_grad))
        conv.in_channels = conv.out_channels = conv.groups = len(channels)


def set_mlp_size_attrs(block: nn.Module, spec: ModelSpec, width: int, wrapped: bool = False) -> None:
    """Set the MLP modules' width attributes (``MLPSpec.size_attrs``; none in a dense block of an MoE spec).
    ``wrapped``: a prepared block, whose experts module is a MaskedDoRAExperts: the attributes at or below the
    experts path belong to the module it replaced (DBRX's ``ffn.experts.mlp``, which it has no submodule for)."""
    experts = spec.mlp.experts
    for mpath, attr in spec.mlp.size_attrs if holds_spec_mlp(block, spec) else ():
        if not (wrapped and experts and (mpath + ".").startswith(experts + ".")):
            setattr(block.get_submodule(mpath), attr, width)


def set_head_attrs(block: nn.Module, spec: ModelSpec, heads: int, kv: int, head_dim: int) -> Dict[str, int]:
    """Set the attention module's head-count attributes (``HeadSpec.attrs``); returns the quantities.

    A dotted attribute ``owner.name`` is set on the attention's own shallow copy of ``owner`` (Moonshine's
    ``config``, which its forward reads the head counts from, is the model's config, shared by every attention:
    setting the count there would resize all of them, the cross-attention too)."""
    quantity = {"heads": heads, "kv_heads": kv, "groups": heads // kv, "width": heads * head_dim}
    attention = block.get_submodule(spec.heads.attention)
    owned = {}  # owner name -> the attention's copy (made once)
    for attr, what in spec.heads.attrs:
        owner_name, _, name = attr.rpartition(".")
        owner = attention
        if owner_name:
            if owner_name not in owned:
                owned[owner_name] = copy.copy(getattr(attention, owner_name))
                setattr(attention, owner_name, owned[owner_name])
            owner = owned[owner_name]
        setattr(owner, name, quantity[what])
    return quantity


def build_compact_model(model_class, config, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """A model of ``model_class`` with the sizes in ``config`` (per-layer ones included); random weights."""
    model = model_class(config)
    sizes = getattr(config, LAYER_SIZES_KEY, None)
    if sizes:
        blocks = model_blocks(model, spec_for(model))  # the model: a spec may follow its module names
        first = [b for b in blocks if b.spec.stack == blocks[0].spec.stack]
        if len(sizes) == len(first) < len(blocks):  # written when only the first stack (the encoder) was pruned
            blocks = first
        if len(sizes) != len(blocks):
            raise ValueError(f"config.{LAYER_SIZES_KEY}: expected {len(blocks)} entries, got {len(sizes)}")
        for b, size in zip(blocks, sizes):
            resize_block(b.module, b.spec, size, config, b.index)
            if "hidden" in size:  # hidden_mode="per_block": readers of the kept channels, CompactLinear writers
                resize_block_hidden(b.module, b.spec, size["hidden"],
                                    getattr(b.spec.sized_config(config), b.spec.hidden_key))
    if dtype is not None:  # the floating-point tensors only: Module.to would cast a complex buffer (Llama 4's vision
        # rotary freqs_ci) to a real one, dropping its imaginary part
        model._apply(lambda t: t.to(dtype) if t.is_floating_point() else t)
    return model.eval()

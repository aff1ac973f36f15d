r"""Compaction: merge every adapter, drop pruned channels and heads, return a plain transformers model.

:func:`compact_model` folds ``c * (W0 + s B A)`` into one weight per layer
(:meth:`MaskedDoRALinear.merged_weight`), keeps the rows of producers and the
columns of consumers that the group masks keep, and builds a fresh model of
the same class with ``nn.Linear`` layers of the new sizes. Its outputs equal
the masked model's in eval mode to the dtype's rounding.

Checkpoints:

* **uniform** pruning (the same sizes in every layer) whose sizes the family's
  config can express (Llama-style configs have ``head_dim``; BERT-style ones
  derive the head size from ``hidden_size // num_attention_heads``, so pruned
  heads are not expressible) saves with ``save_pretrained`` as a plain
  checkpoint: ``AutoModel.from_pretrained`` loads it without masked_dora;
* anything else stores the per-layer sizes in ``config.masked_dora_layer_sizes``
  and loads with :func:`~masked_dora.models.compact_load.load_compact`. (transformers 5.x ``per_layer_config``
  is honoured by a few model classes only, and for head counts only: Gemma 4's heterogeneous config is read per
  layer, and a plain checkpoint keeps those counts; :mod:`~masked_dora.models.plain_config`.) A
  plain ``from_pretrained`` of such a checkpoint fails with a size mismatch
  rather than loading wrong weights.
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional

import torch
from torch import nn

from ..nn import MaskedDoRALinear
from ..nn.base_weight import dequantize_weight, quantized_weight_reason
from ..nn.quantized_base import is_quantized_linear
from .blocks import (LAYER_SIZES_KEY, block_modules, built_head_layout, depthwise_modules, features, has_experts,
                     head_layout, holds_group, holds_spec_mlp, is_consumer_role, is_conv1d, mlp_width, model_blocks,
                     num_experts, packed_experts, per_expert, per_head_modules, producer_index, role_paths)
from .hidden import cut_hidden, hidden_config, hidden_keep, writers
from .hidden_per_block import compact_block_hidden, is_per_block, resize_block_hidden
from .prepare import STATE_ATTR, get_state
from .spec_types import PerHeadSpec
from .plain_config import plain_config
from .specs import ModelSpec, spec_for


def _idx(keep: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(keep.cpu()).flatten()


@torch.no_grad()
def _merged(module: nn.Module):
    if isinstance(module, MaskedDoRALinear):
        return module.merged_weight()
    return module.weight.detach().clone(), None if module.bias is None else module.bias.detach().clone()


def dequantized_rest(model: nn.Module, repl: dict, skip_prefix: str) -> dict:
    """``{name: (weight, bias)}``: the quantized linear layers that no group merged (outside the groups, or in a
    block whose other group kinds are not pruned), dequantized one at a time."""
    out, wrapped = {}, tuple(n + "." for n, m in model.named_modules() if isinstance(m, MaskedDoRALinear))
    for name, m in model.named_modules():
        if name in repl or name.startswith((skip_prefix,) + wrapped) or not is_quantized_linear(m):
            continue
        w = dequantize_weight(m)
        if w is None:
            raise RuntimeError(f"compact_model: the quantized weight of {name} ({type(m).__name__}) cannot be "
                               f"dequantized")
        out[name] = (w, None if m.bias is None else m.bias.detach().clone().to(w.dtype))
    return out


def block_sizes(model, spec) -> List[Dict[str, int]]:
    """Per block (every stack the model has, in :func:`model_blocks` order): MLP width and head counts. The head
    counts the block was built with (:func:`~masked_dora.models.blocks.built_head_layout`: the config's, or those
    the :data:`LAYER_SIZES_KEY` of a per-layer checkpoint's config lists)."""
    sizes = []
    for b in model_blocks(model, spec):
        hl = built_head_layout(model.config, b.spec, b.index)
        # a block without the MoE spec's experts under a spec without dense_mlp (its MLP is never pruned) keeps
        # the config's width; a block without the MLP of an MLPSpec.in_some_blocks spec (a hybrid's mixer block)
        # has none: 0
        if holds_spec_mlp(b.module, b.spec):
            width = mlp_width(b.module, b.spec)
        elif b.spec.mlp.in_some_blocks:
            width = 0
        else:
            width = getattr(b.spec.sized_config(model.config), b.spec.mlp.size_key)
        sizes.append(dict(intermediate=width, heads=hl.heads, kv_heads=hl.kv_heads, head_dim=hl.head_dim))
    return sizes


def config_block_sizes(model, spec) -> List[Dict[str, int]]:
    """Per block, the sizes ``model.config`` builds it with (:func:`block_sizes` of a fresh model of that config):
    what a plain config's keys are read against (a block the config builds twice as wide as its key, Gemma 4's
    KV-sharing ones, keeps twice the key's width). Those of ``model`` itself, unless it was loaded from a
    per-layer checkpoint (:func:`~masked_dora.models.load_compact`): its blocks were built at the sizes the config's
    :data:`LAYER_SIZES_KEY` lists, which say nothing of how its keys build them, so a model of the config without
    them is built on the meta device (no memory) and measured."""
    if not getattr(model.config, LAYER_SIZES_KEY, None):
        return block_sizes(model, spec)
    config = copy.deepcopy(model.config)
    delattr(config, LAYER_SIZES_KEY)
    with torch.device("meta"):
        fresh = type(model)(config)
    return block_sizes(fresh, spec)


@torch.no_grad()
def _compact_mlp(block: nn.Module, spec: ModelSpec, group, prefix: str, repl: dict, packed: dict) -> int:
    """The MLP's kept producer rows and consumer columns into ``repl`` (module name: (weight, bias)), or, for
    an MoE block, each projection's experts stacked into ``packed`` (parameter name: (experts, out, in), or
    (experts, in, out) where ``experts_layout.transposed``; with ``experts_layout.bias``, "<name>_bias" too), and
    the kept channels' filters of its depthwise convolutions into ``packed`` (``MLPSpec.depthwise``); returns the
    kept width (one expert's)."""
    experts = num_experts(block, spec)
    layout = spec.mlp.experts_layout
    paths = role_paths(spec, "mlp", experts)
    keep = group.hard()
    stacks: Dict[str, list] = {}
    for role, m in block_modules(block, spec, ("mlp",))["mlp"].items():
        w, b = _merged(m)
        if is_consumer_role(role):
            w = w[:, _idx(keep[group.index(role)]).to(w.device)]
        else:  # the producer's kept rows (every segment of a fused one)
            k = _idx(m.keep_mask()).to(w.device)
            w, b = w[k], None if b is None else b[k]
        if experts:  # expert e's layer of the producer (the consumer): the packed parameter's slice e
            name = spec.mlp.consumer if is_consumer_role(role) else spec.mlp.producers[producer_index(role)]
            # (gate and up rows in parameters of their own: the producer's, then the layout's up)
            parts = ((name, w),) if is_consumer_role(role) or not layout.up else zip((name, layout.up), w.chunk(2))
            for part_name, part in parts:
                flip = layout.transposed or (is_consumer_role(role) and layout.down_transposed)
                stacks.setdefault(f"{prefix}{spec.mlp.experts}.{part_name}", []).append(part.t() if flip else part)
            if layout.bias:  # (the consumer's bias is whole: z = 1 on its rows)
                stacks.setdefault(f"{prefix}{spec.mlp.experts}.{name}_bias", []).append(b)
        else:
            repl[prefix + paths[role]] = (w, b)
    join = torch.cat if layout.flat else torch.stack  # (flat: (experts * rows, cols))
    packed.update({name: join(ws).contiguous() for name, ws in stacks.items()})
    if spec.mlp.depthwise:  # the kept channels' filters (the consumer's kept columns are the kept channels)
        channels = _idx(group.per_channel("consumer", keep))
        for path, conv in zip(spec.mlp.depthwise, depthwise_modules(block, spec)):
            packed.update({f"{prefix}{path}.{name}": p.detach().index_select(0, channels.to(p.device)).clone()
                           for name, p in conv.named_parameters(recurse=False)})
    return int(keep.sum()) // max(1, experts)  # the same count in every expert (the group's partitions)


@torch.no_grad()
def _kept_per_head_params(block: nn.Module, spec: ModelSpec, config, prefix: str, kept: Dict[str, torch.Tensor],
                          head_dim: int) -> Dict[str, torch.Tensor]:
    """``{state-dict key: tensor}`` of the block's per-head modules (``HeadSpec.per_head``) cut to the kept heads.

    ``kept``: the kept query heads (``"heads"``) and KV heads (``"kv_heads"``), ascending. A ModuleList's
    kept modules are renumbered from 0 in that order; a parameter keeps its rows (``entry.dim``) of the kept heads
    (``head_dim`` rows each with ``entry.head_rows``).
    """
    out = {}
    for entry, module in per_head_modules(block, spec, config):
        heads = kept[entry.follows]
        if entry.modules:
            head_modules = getattr(module, entry.modules)
            for new, old in enumerate(heads.tolist()):
                for name, t in head_modules[old].state_dict().items():
                    out[f"{prefix}{entry.path}.{entry.modules}.{new}.{name}"] = t.clone()
        else:
            rows = head_entries(entry, heads, head_dim)
            for name, p in module.named_parameters(recurse=False):
                out[f"{prefix}{entry.path}.{name}"] = p.detach().index_select(entry.dim, rows.to(p.device)).clone()
    return out


def head_entries(entry: PerHeadSpec, heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The indices along ``entry.dim`` of the heads ``heads``: the heads themselves, or with ``entry.head_rows``
    each head's ``head_dim`` consecutive rows."""
    if not entry.head_rows:
        return heads
    return (heads[:, None] * head_dim + torch.arange(head_dim, device=heads.device)).flatten()


def _check_even_partitions(state) -> None:
    """Raise unless every group keeps the same count in each of its partitions (query heads per KV group under
    gqa="query_heads", heads per chunk of a "chunked" qkv, channels per MoE expert): the compacted modules split
    their units evenly, so uneven masks (the learned gates' decision before :func:`harden`) would compact to a
    model that computes something else."""
    for key, group in state.groups.items():
        counts = group.uneven_partition_counts(group.hard())
        if counts is not None:
            units, partitions = group.unit_words()
            raise RuntimeError(f"compact_model: {key} keeps {counts} {units} in its {group.partitions} {partitions}, "
                               f"which the compacted model must keep the same count of each: call "
                               f"masked_dora.harden(model) first (it keeps the same count in every partition)")


@torch.no_grad()
def _compact_weights(model: nn.Module):
    """``({qualified module name: (weight, bias)}, {state-dict key: tensor}, per-layer sizes)``: the compacted
    layers, the parameters compacted whole (an MoE block's packed experts, the kept heads' per-head parameters,
    :func:`_kept_per_head_params`) and the sizes."""
    state = get_state(model)
    _check_even_partitions(state)
    sizes = block_sizes(model, state.spec)
    repl, params = {}, {}
    for blk in state.blocks(model):
        i, block, spec, prefix = blk.index, blk.module, blk.spec, blk.path + "."
        if "mlp" in state.config.target_groups and holds_group(block, spec, "mlp"):
            sizes[i]["intermediate"] = _compact_mlp(block, spec, state.group("mlp", i), prefix, repl, params)
        # (another stack's groups prune it, or ModelSpec.block_refusals keep it whole)
        if "heads" not in state.config.target_groups or not holds_group(block, spec, "heads"):
            continue
        if spec.heads.qkv:
            paths = role_paths(spec, "heads")
            mods = block_modules(block, spec, ("heads",))["heads"]
            group = state.group("heads", i)
            w, b = _merged(mods["qkv"])
            rows = _idx(mods["qkv"].keep_mask()).to(w.device)
            repl[prefix + paths["qkv"]] = (w[rows], None if b is None else b[rows])
            cols = _idx(group.per_channel("output", group.hard()))
            w, b = _merged(mods["output"])
            repl[prefix + paths["output"]] = (w[:, cols.to(w.device)], b)
            # the kept rows are the kept query heads' and 2 x the kept KV heads' (whole KV groups, or all of them)
            hd = sizes[i]["head_dim"]
            sizes[i]["heads"], sizes[i]["kv_heads"] = cols.numel() // hd, (rows.numel() - cols.numel()) // (2 * hd)
        else:
            paths = role_paths(spec, "heads")
            mods = block_modules(block, spec, ("heads",))["heads"]
            hd = sizes[i]["head_dim"]
            rows = {role: _idx(mods[role].keep_mask()) for role in ("query", "key", "value")}
            for role, kept in rows.items():
                w, b = _merged(mods[role])
                k = kept.to(w.device)
                repl[prefix + paths[role]] = (w[k], None if b is None else b[k])
            w, b = _merged(mods["output"])
            repl[prefix + paths["output"]] = (w[:, rows["query"].to(w.device)], b)
            heads, kv = rows["query"].numel() // hd, rows["key"].numel() // hd
            if rows["query"].numel() % hd or rows["key"].numel() % hd or rows["value"].numel() != rows["key"].numel():
                raise RuntimeError(f"compact_model: layer {i} keeps a partial head; masks must keep whole heads")
            sizes[i]["heads"], sizes[i]["kv_heads"] = heads, kv
            kept = {"heads": rows["query"][::hd] // hd, "kv_heads": rows["key"][::hd] // hd}
            params.update(_kept_per_head_params(block, spec, model.config, prefix, kept, hd))
    _mirror_shared_attention(model, state.spec, sizes)
    return repl, params, sizes


def _mirror_shared_attention(model: nn.Module, spec: ModelSpec, sizes: List[Dict[str, int]]) -> None:
    """Give the blocks of a stack with ``attention_of`` (the conformer's ffn2) the head counts of the same blocks in
    the stack whose groups prune their attention, so that the per-layer sizes say what every block holds."""
    blocks = model_blocks(model, spec)
    owner = {(b.spec.stack, b.path): b.index for b in blocks}
    for b in blocks:
        if b.spec.attention_of:
            source = sizes[owner[(b.spec.attention_of, b.path)]]
            sizes[b.index].update({k: source[k] for k in ("heads", "kv_heads", "head_dim")})


def new_linear(block: nn.Module, path: str, in_features: int, out_features: int) -> None:
    """Replace the layer at ``path`` by one of the new shape, of the same kind (nn.Linear or Conv1D)."""
    old = block.get_submodule(path)
    if features(old) == (in_features, out_features):
        return
    parent_path, _, name = path.rpartition(".")
    parent = block.get_submodule(parent_path) if parent_path else block
    if is_conv1d(old):
        new = type(old)(out_features, in_features).to(device=old.weight.device, dtype=old.weight.dtype)
    else:  # an nn.Linear subclass with nn.Linear's constructor (Falcon's FalconLinear) keeps its class
        cls = type(old) if type(old).__init__ is nn.Linear.__init__ else nn.Linear
        new = cls(in_features, out_features, bias=old.bias is not None, device=old.weight.device,
                  dtype=old.weight.dtype)
    setattr(parent, name, new)


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
        owner, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner) if owner else module
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


@torch.no_grad()
def compact_model(model: nn.Module) -> nn.Module:
    """The compacted plain transformers model (``nn.Linear`` layers, smaller config); ``model`` is untouched."""
    state = get_state(model)
    stacks = [b.spec for b in model_blocks(model, state.spec)]
    # the sizes the model was built with, which the config describes (after compact_for_training the blocks hold
    # fewer: their widths no longer say how many of the config's each block was built with)
    original = state.built_sizes or block_sizes(model, state.spec)
    repl, params, sizes = _compact_weights(model)
    per_block = is_per_block(state.config)
    if per_block:  # CompactLinear writers: the per-layer form, which load_compact builds
        params.update(compact_block_hidden(model, state, repl, sizes, _merged))
    config = copy.deepcopy(model.config)
    kept_hidden = hidden_keep(state)
    plain = None if per_block else plain_config(config, stacks, original, sizes, getattr(state, "save_form", "auto"),
                                                 None if kept_hidden is None else int(kept_hidden.numel()))
    if kept_hidden is not None:  # a pruned residual stream: plain only (prepare_model refused anything else)
        if plain is None:
            raise RuntimeError("compact_model: hidden pruning compacts to a plain checkpoint only, and these sizes "
                               "cannot be one")
        hidden_config(plain, state.spec, getattr(model.config, state.spec.hidden_key), kept_hidden,
                      sizes[0]["head_dim"])
        for name, m in writers(model, state):  # merged (and their gated rows zero) where no group merged them
            repl.setdefault(name, _merged(m))
    if plain is not None:
        config = plain
        if hasattr(config, LAYER_SIZES_KEY):
            delattr(config, LAYER_SIZES_KEY)
    else:
        setattr(config, LAYER_SIZES_KEY, sizes)
    # a quantized base (QLoRA-style): the compacted model is a plain one, its layers dequantized, its config without
    # the quantization (from_pretrained would quantize again, or expect quantized tensors)
    repl.update(dequantized_rest(model, repl, STATE_ATTR))
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point() and quantized_weight_reason(p) is None)
    new = build_compact_model(type(model), config, dtype)
    old_sd = {k: v for k, v in model.state_dict().items() if not k.startswith(STATE_ATTR + ".")}
    new_sd = {}
    for key in new.state_dict():
        module_name, _, leaf = key.rpartition(".")
        if key in params:
            new_sd[key] = params[key]
        elif module_name in repl and leaf in ("weight", "bias"):
            w, b = repl[module_name]
            if leaf == "weight" and is_conv1d(new.get_submodule(module_name)):
                w = w.t().contiguous()  # Conv1D stores (in, out)
            new_sd[key] = w if leaf == "weight" else b
        elif key in old_sd:
            new_sd[key] = old_sd[key]
        else:
            raise RuntimeError(f"compact_model: no source for {key!r}")
    if kept_hidden is not None:
        new_sd = cut_hidden(model, state, new_sd, kept_hidden)
    new.load_state_dict(new_sd, strict=True)
    device = next(model.parameters()).device
    return new.to(device).eval()


def __getattr__(name: str):
    """``load_compact`` lived here until it moved to :mod:`masked_dora.models.compact_load` (2026-11-28): the old
    import path, ``from masked_dora.models.compact import load_compact``, keeps working (imported lazily: that
    module imports this one)."""
    if name == "load_compact":
        from .compact_load import load_compact
        return load_compact
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

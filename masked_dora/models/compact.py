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
from typing import Dict, List

import torch
from torch import nn

from ..nn import MaskedDoRALinear
from ..nn.base_weight import dequantize_weight, quantized_weight_reason
from ..nn.quantized_base import is_quantized_linear
from .blocks import (LAYER_SIZES_KEY, block_modules, built_head_layout, depthwise_modules, holds_group,
                     holds_spec_mlp, is_consumer_role, is_conv1d, mlp_width, model_blocks, num_experts,
                     per_head_modules, producer_index, role_paths)
from .hidden import cut_hidden, hidden_config, hidden_keep, writers
from .hidden_per_block import compact_block_hidden, is_per_block
from .plain_config import plain_config
from .prepare import STATE_ATTR, get_state
from .resize import build_compact_model, head_entries
from .specs import ModelSpec


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

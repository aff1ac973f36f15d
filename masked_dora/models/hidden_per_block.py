r"""Hidden-dimension pruning, ``hidden_mode="per_block"``: each block reads and writes a kept subset of the
residual stream, which itself stays full width.

Every targeted block ``b`` has one :class:`~masked_dora.models.group_mask.GroupMask` (kind ``"hidden"``, key
``hidden_<b>``, one unit per residual channel, ``d = hidden_size``), shared by its attention and MLP halves
(the DESIGN's "each block reads a kept subset of the residual stream and writes into a kept subset"; one mask
per half would be as exact, with twice the units). With ``m`` its hard mask and ``K = {c : m_c = 1}``:

* **reads**: the tensor ``r`` that only the block's q/k/v read (the input of ``PerBlockHiddenSpec.attention_input``:
  ``self_attn`` in a Llama block, ``attention.self`` in a BERT block), and the one only the MLP's producers read
  (``mlp``; ``intermediate``), is multiplied by ``m`` (:class:`ReadGate`, a forward pre-hook). Each reader
  computes ``W (m * r) = W[:, K] r[K]``.
* **writes**: the rows of the heads' ``output`` and the MLP's ``consumer`` (``o_proj``/``down_proj``;
  BERT's ``attention.output.dense``/``output.dense``) are gated by ``m`` (bias included), so the block adds
  ``y = scatter_K(W'[K] u + b'[K])``, zero outside ``K``, to the stream.

Compacted, each entry module's input is gathered once, ``r[K]`` (:class:`ReadGather`; shared by q/k/v, and by
gate/up, as the DESIGN's serving notes ask), the readers keep the columns ``W[:, K]``, and the writers become
:class:`~masked_dora.nn.CompactLinear` layers ``(W'[K], b'[K], out_idx=K)`` that scatter into a zero full-width
output. Both sides hand the family's code the same tensors (up to rounding: a smaller GEMM sums in another
order), whatever it does with them next: the residual add, RMSNorm or LayerNorm over the full width, before
(pre-LN) or after (BERT's post-LN ``LayerNorm(dense(u) + input)``) the add, multipliers or dropout. So it is
exact for RMSNorm and LayerNorm families alike, where ``hidden_mode="global"`` is not.

The writers' scatter is fused with the residual add without a forward per family (``models/`` has specs, not
code per model): the writers are built with ``defer_scatter=True``, so in inference (no autograd graph, not
compiled) they return a :class:`~masked_dora.nn.DeferredScatter`, and the family's own ``residual +
hidden_states`` (Llama, Mistral, Qwen2/3, Gemma; ``LayerNorm(dropout(h) + input_tensor)`` in BERT-likes, the
eval-mode dropout passing it through) runs as one ``compact_linear(..., residual=)``. Families that do
something else with the writer's output first (Gemma 2/3 normalise it, Granite scales it) get the plain
zero-filled output, as before; so do training and ``torch.compile``.

The gather reads its indices from the half's writer (``CompactLinear.out_idx``, the same ``K``): the compacted
model holds each block's ``K`` in its two writers' buffers, which ``save_pretrained`` writes and
:func:`~masked_dora.models.load_compact` restores (the config's ``masked_dora_layer_sizes`` gives each block's
``len(K)`` as ``"hidden"``; the gather hooks are installed when the model is built).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..nn import CompactLinear
from .blocks import Block, features, is_consumer_role, role_paths, set_module
from .group_mask import GroupMask, MaskView

HALVES = ("heads", "mlp")  # the attention half (its readers: q/k/v) and the MLP half (its producers)


def is_per_block(config) -> bool:
    """Whether a :class:`~masked_dora.models.MaskedDoRAConfig` prunes the hidden dimension per block."""
    return "hidden" in config.target_groups and config.hidden_mode == "per_block"


def group_key(layer: int) -> str:
    return f"hidden_{layer}"


def entry_paths(spec) -> Dict[str, str]:
    """``{half: path}`` of the module whose input the half's readers (and nothing else) read."""
    pb = spec.hidden_per_block
    return {"heads": pb.attention_input, "mlp": pb.mlp_input}


def writer_paths(spec) -> Dict[str, str]:
    """``{half: path}`` of the layer writing the half's result into the residual stream."""
    return {"heads": spec.heads.output, "mlp": spec.mlp.consumer}


def reader_paths(spec) -> Dict[str, Dict[str, str]]:
    """``{half: {role: path}}`` of the layers reading the residual stream (q/k/v; the MLP's producers)."""
    heads = {r: p for r, p in role_paths(spec, "heads").items() if r != "output"}
    mlp = {r: p for r, p in role_paths(spec, "mlp").items() if not is_consumer_role(r)}
    return {"heads": heads, "mlp": mlp}


def _replace_input(args: tuple, kwargs: dict, fn, where: str):
    """``(args, kwargs)`` with the hidden states (the first positional argument, else ``hidden_states=``)
    replaced by ``fn(hidden states)``."""
    if args:
        return (fn(args[0]),) + tuple(args[1:]), kwargs
    if "hidden_states" in kwargs:
        return args, {**kwargs, "hidden_states": fn(kwargs["hidden_states"])}
    raise TypeError(f"{where}: expected the hidden states as the first positional argument or hidden_states=")


class ReadGate:
    """Forward pre-hook (``with_kwargs``) of an entry module: its input's channels times the block's ``z``."""

    def __init__(self, group: GroupMask):
        group.index("reader")
        self.group = group

    def __call__(self, module: nn.Module, args, kwargs):
        z = self.group.per_channel("reader", self.group.values())
        return _replace_input(args, kwargs, lambda x: x * z.to(x.dtype), type(module).__name__)


class ReadGather:
    """Forward pre-hook (``with_kwargs``) of a compacted block's entry module: its input cut to the kept
    channels (``writer.out_idx``, read at every call: ``load_state_dict`` fills it in place)."""

    def __init__(self, writer: CompactLinear):
        if not isinstance(writer, CompactLinear) or writer.out_idx is None:
            raise TypeError(f"writer: expected a scattering CompactLinear, got {type(writer).__name__}")
        self.writer = writer

    def __call__(self, module: nn.Module, args, kwargs):
        idx = self.writer.out_idx
        return _replace_input(args, kwargs, lambda x: x.index_select(-1, idx), type(module).__name__)


def per_block_refusal(model: nn.Module, spec, config, blocks: List[Block]) -> Optional[str]:
    """Why ``config``'s per-block hidden pruning cannot prune ``model`` (``None``: it can); nothing changes."""
    model_type = getattr(model.config, "model_type", "")
    reason = spec.refusal("hidden", model.config, "per_block")
    if reason is None and spec.stacks:
        reason = "it has several block stacks"
    if reason is None and (spec.heads.qkv or spec.mlp.experts):
        reason = "its fused q/k/v or MoE experts are not covered"
    if reason is not None:
        return (f"config.target_groups: 'hidden' (hidden_mode='per_block') cannot be pruned in a {model_type!r} "
                f"model: {reason}")
    if config.save_form == "plain":
        return ("config.save_form: hidden_mode='per_block' compacts to CompactLinear writers, which only "
                "masked_dora.load_compact builds (the per-layer form); use save_form='auto' or 'per_layer'")
    for b in blocks:
        paths = [*entry_paths(b.spec).values(), *writer_paths(b.spec).values()]
        paths += [p for half in reader_paths(b.spec).values() for p in half.values()]
        for path in paths:
            try:
                module = b.module.get_submodule(path)
            except AttributeError:
                return f"model: hidden_mode='per_block' needs {b.path}.{path}, which {type(b.module).__name__} lacks"
            if path not in entry_paths(b.spec).values() and not isinstance(module, nn.Linear):
                return (f"model: hidden_mode='per_block' needs an nn.Linear at {b.path}.{path}, got "
                        f"{type(module).__name__}")
    return None


def build_block_groups(model: nn.Module, blocks: List[Block], config, wrap) -> Dict[str, GroupMask]:
    """One hidden group per block: gates its writers' output rows (``wrap``: prepare's wrapper, which returns a
    layer the heads/MLP groups already wrapped as it is) and its entry modules' inputs (:class:`ReadGate`)."""
    groups = {}
    for b in blocks:
        d = int(getattr(model.config, b.spec.hidden_key))
        channels = torch.arange(d)
        group = GroupMask("hidden", b.index, d, {"reader": channels, "writer": channels}, gate=config.gate,
                          mask_init=config.mask_init, tied=config.mask_learning == "layer")
        for path in writer_paths(b.spec).values():
            layer = wrap(b.module, path, b.module.get_submodule(path), config, b.path)
            layer.set_mask_source(MaskView(group, "writer"))
        for path in entry_paths(b.spec).values():
            b.module.get_submodule(path).register_forward_pre_hook(ReadGate(group), with_kwargs=True)
        groups[group_key(b.index)] = group
    return groups


def _block_of(model: nn.Module, state, group: GroupMask) -> Block:
    return next(b for b in state.blocks(model) if b.index == group.layer)


def block_readers(model: nn.Module, state, group: GroupMask) -> List[Tuple[str, nn.Module]]:
    """``[(qualified name, module)]``: the layers of ``group``'s block reading the residual stream."""
    b = _block_of(model, state, group)
    return [(f"{b.path}.{p}", b.module.get_submodule(p)) for half in reader_paths(b.spec).values()
            for p in half.values()]


@torch.no_grad()
def block_magnitude(model: nn.Module, state, group: GroupMask) -> Tensor:
    """Per channel: the scale-free squared norm of every reader's column and both writers' rows (each divided
    by its layer's total), summed, over ``group``'s block."""
    b = _block_of(model, state, group)
    score = torch.zeros(group.num_units, dtype=torch.float64)
    for _, m in block_readers(model, state, group):
        per = m.weight.detach().double().pow(2).sum(0).cpu()
        score += per / per.sum().clamp_min(1e-30)
    for path in writer_paths(b.spec).values():
        per = b.module.get_submodule(path).weight.detach().double().pow(2).sum(1).cpu()
        score += per / per.sum().clamp_min(1e-30)
    return score


@torch.no_grad()
def block_activation(model: nn.Module, state, key: str, group: GroupMask, sq: Dict) -> Tensor:
    """Per channel: ``sum over the block's readers of ||X_c||_2 * ||W[:, c]||_2`` (``sq[(key, reader name)]``:
    ``sum X_c^2`` of the reader's input on the calibration batches)."""
    score = torch.zeros(group.num_units, dtype=torch.float64)
    for name, m in block_readers(model, state, group):
        seen = sq.get((key, name))
        if seen is not None:
            score += seen.sqrt() * m.weight.detach().double().pow(2).sum(0).sqrt().cpu()
    return score


@torch.no_grad()
def compact_block_hidden(model: nn.Module, state, repl: dict, sizes: List[dict], merged) -> Dict[str, Tensor]:
    """Cut every targeted block to its kept residual channels ``K``: the readers' columns and the writers'
    rows (and biases) in ``repl`` (module name: (weight, bias), filled with ``merged(module)`` where no group
    compacted the layer); ``sizes[i]["hidden"] = len(K)``. Returns ``{state-dict key: K}`` of the writers'
    ``out_idx``."""
    indices = {}
    for b in state.blocks(model):
        keep = torch.nonzero(state.group("hidden", b.index).hard().cpu()).flatten()
        sizes[b.index]["hidden"] = int(keep.numel())
        for half in reader_paths(b.spec).values():
            for path in half.values():
                name = f"{b.path}.{path}"
                w, bias = repl[name] if name in repl else merged(b.module.get_submodule(path))
                repl[name] = (w.index_select(1, keep.to(w.device)).contiguous(), bias)
        for path in writer_paths(b.spec).values():
            name = f"{b.path}.{path}"
            w, bias = repl[name] if name in repl else merged(b.module.get_submodule(path))
            k = keep.to(w.device)
            repl[name] = (w.index_select(0, k).contiguous(), None if bias is None else bias.index_select(0, k))
            indices[f"{name}.out_idx"] = keep.clone()  # one tensor per writer (safetensors refuses shared memory)
    return indices


def resize_block_hidden(block: nn.Module, spec, kept: int, width: int) -> None:
    """Give a freshly built block (sizes already set by ``resize_block``) its per-block hidden form: readers
    with ``kept`` input features, writers as :class:`CompactLinear` scattering ``kept`` rows into ``width``
    (placeholder weights and indices: the checkpoint's replace them), and the gather hooks."""
    from .resize import new_linear

    for half in reader_paths(spec).values():
        for path in half.values():
            new_linear(block, path, kept, features(block.get_submodule(path))[1])
    writers = {}
    for half, path in writer_paths(spec).items():
        old = block.get_submodule(path)
        w = old.weight.new_zeros(kept, features(old)[0])
        bias = None if old.bias is None else old.bias.new_zeros(kept)
        new = CompactLinear(w, bias, features(old)[0], width, None, torch.arange(kept, device=w.device),
                            defer_scatter=True)
        set_module(block, path, new)
        writers[half] = new
    for half, path in entry_paths(spec).items():
        block.get_submodule(path).register_forward_pre_hook(ReadGather(writers[half]), with_kwargs=True)

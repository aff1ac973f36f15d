"""Loading a compacted checkpoint back (:func:`load_compact`): a plain one through ``from_pretrained``, a per-layer
one (``masked_dora_layer_sizes`` in its config) into a model built with those sizes
(:func:`~masked_dora.models.resize.build_compact_model`)."""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Dict, Optional

import torch
from torch import nn

from .blocks import LAYER_SIZES_KEY
from .resize import build_compact_model


def _read_safetensors(path: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = os.path.join(path, "model.safetensors")
    if os.path.exists(single):
        return load_file(single)
    index = os.path.join(path, "model.safetensors.index.json")
    if not os.path.exists(index):
        raise FileNotFoundError(f"path: expected model.safetensors or model.safetensors.index.json in {path!r}")
    with open(index) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for name in files:
        out.update(load_file(os.path.join(path, name)))
    return out


def _saved_layout(model: nn.Module, shapes: Dict[str, tuple]) -> Optional[Dict[str, torch.Tensor]]:
    """``{name save_pretrained writes: the indices of the elements it holds}`` for the parameters ``shapes``
    (name: shape), their elements numbered one after another (the first parameter's from 0), or ``None``.

    transformers 5 saves some parameters in their original hub layout: renamed (GPT-NeoX's ``embed_out``),
    split (an MoE block's packed ``gate_up_proj`` (experts, 2I, H) goes out as per-expert ``w1``/``w3``
    weights) or merged (DINOv2's SwiGLU ``gate_proj`` and ``up_proj`` go out as one ``weights_in``). Its own
    save-time conversion, applied to tensors holding each element's number (int32 where it fits), says where
    every saved element belongs. ``None`` where this transformers has no conversion or cannot follow this one.
    """
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # older transformers: keys are saved as they are
        return None
    total = sum(math.prod(shape) for shape in shapes.values())
    dtype = torch.int32 if total < 2 ** 31 else torch.int64
    numbered, start = {}, 0
    for key, shape in shapes.items():
        numbered[key] = torch.arange(start, start + math.prod(shape), dtype=dtype).view(shape)
        start += math.prod(shape)
    try:
        return revert_weight_conversion(model, numbered)
    except Exception:  # noqa: BLE001  (a converter this cannot follow: the keys stay missing, reported by the caller)
        return None


def _rebuild(model: nn.Module, saved: Dict[str, torch.Tensor], keys, wanted=None) -> set:
    """Rebuild the parameters ``keys`` (only those in ``wanted``, if given) in ``saved`` from the pieces
    transformers saved them as (removed from ``saved`` when every element they hold went to a rebuilt parameter);
    returns the keys rebuilt: those whose elements the saved pieces cover exactly. The layout is that of all of
    ``keys`` together: a group rename (Kimi-K2.5's vision blocks: norm0 -> norm1 and norm1 -> norm2 at load) is
    reverted right only with its whole group present."""
    state = model.state_dict()
    shapes = {key: tuple(state[key].shape) for key in keys}
    layout = _saved_layout(model, shapes)
    pieces = {name: index.reshape(-1).long() for name, index in (layout or {}).items()
              if name in saved and saved[name].numel() == index.numel()}
    if not pieces:
        return set()
    total = sum(math.prod(shape) for shape in shapes.values())
    counts = torch.zeros(total, dtype=torch.long)
    # one flat buffer per saved dtype, so that an int64 counter and float weights rebuilt together keep theirs
    flats: Dict[torch.dtype, torch.Tensor] = {}
    source = torch.full((total,), -1, dtype=torch.long)  # which of flats' dtypes each element came from
    for name, index in pieces.items():
        value = saved[name].reshape(-1)
        if value.dtype not in flats:
            flats[value.dtype] = value.new_empty(total)
        flats[value.dtype][index] = value
        source[index] = list(flats).index(value.dtype)
        counts.index_add_(0, index, torch.ones_like(index))
    dtypes = list(flats)
    done, start, owner = set(), 0, torch.full((total,), -1, dtype=torch.long)
    for i, (key, shape) in enumerate(shapes.items()):
        n = math.prod(shape)
        if (wanted is None or key in wanted) and bool(counts[start:start + n].eq(1).all()):  # each saved once
            sources = source[start:start + n]
            used = [dtypes[j] for j in sources.unique().tolist()]
            dtype = functools.reduce(torch.promote_types, used)  # one dtype unless one parameter mixes pieces
            value = torch.empty(n, dtype=dtype)
            for d in used:
                here = sources.eq(dtypes.index(d))
                value[here] = flats[d][start:start + n][here].to(dtype)
            saved[key] = value.view(shape)
            owner[start:start + n] = i
            done.add(key)
        start += n
    for name, index in pieces.items():
        if bool(owner[index].ge(0).all()):
            saved.pop(name)
    return done


def _from_saved_layout(model: nn.Module, saved: Dict[str, torch.Tensor], missing) -> Dict[str, torch.Tensor]:
    """``saved`` with the ``missing`` parameters rebuilt from the keys transformers saved them under: one
    parameter at a time (renamed or split ones), then the rest in the layout of all the missing ones together
    (merged ones need all their sources, a group rename its whole group), then what is still left together
    (where a converter of another parameter cannot be followed); a parameter whose saved pieces are absent or do
    not cover it exactly stays missing."""
    saved = dict(saved)
    left = [key for key in missing if not _rebuild(model, saved, [key])]
    if left:
        left = [key for key in left if key not in _rebuild(model, saved, list(missing), wanted=set(left))]
    if left:
        _rebuild(model, saved, left)
    return saved


def load_compact(path: str, model_class=None, dtype: Optional[torch.dtype] = None) -> nn.Module:
    """Load a compacted checkpoint: plain ones through ``from_pretrained``, per-layer ones through masked_dora.

    ``model_class``: the transformers class (default: the config's first
    ``architectures`` entry). Returns the model in eval mode.
    """
    import transformers

    if not os.path.isdir(path):
        raise FileNotFoundError(f"path: expected a directory written by save_pretrained, got {path!r}")
    config = transformers.AutoConfig.from_pretrained(path)
    if model_class is None:
        archs = getattr(config, "architectures", None) or []
        model_class = getattr(transformers, archs[0], None) if archs else None
        if model_class is None:
            raise ValueError(f"model_class: the config in {path!r} names no known architecture "
                             f"({archs}); pass the transformers model class")
    if not getattr(config, LAYER_SIZES_KEY, None):
        kwargs = {} if dtype is None else {"dtype": dtype}
        return model_class.from_pretrained(path, **kwargs).eval()
    saved = _read_safetensors(path)
    if dtype is None:
        # the first floating tensor's (hidden_mode="per_block" also saves int64 CompactLinear indices)
        dtype = next((t.dtype for t in saved.values() if t.is_floating_point()), None)
    model = build_compact_model(model_class, config, dtype)
    missing, unexpected = model.load_state_dict(saved, strict=False)
    if unexpected:  # saved in the hub layout (GPT-NeoX: embed_out, not lm_head; MoE experts: one tensor each)
        # every key the checkpoint lacks, not only those load_state_dict reports: it fills a BatchNorm's absent
        # num_batches_tracked in (Emu3's VQ-VAE, saved as vqmodel.*), which the saved one must replace
        absent = [key for key in model.state_dict() if key not in saved]
        saved = _from_saved_layout(model, saved, absent)
        missing, unexpected = model.load_state_dict(saved, strict=False)
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    loaded_ptrs = {t.data_ptr() for k, t in model.state_dict().items() if k in saved}
    # keys save_pretrained never writes, which the model's construction rebuilds (Marian's sinusoidal positions)
    never_saved = set(getattr(model, "_keys_to_ignore_on_save", None) or ())
    untied = [k for k in missing if k not in never_saved and model.state_dict()[k].data_ptr() not in loaded_ptrs]
    if untied or unexpected:
        raise ValueError(f"load_compact: checkpoint in {path!r} does not match the model "
                         f"(missing {untied[:5]}, unexpected {list(unexpected)[:5]})")
    return model.eval()

"""Loading a compacted checkpoint back (:func:`load_compact`): a plain one through ``from_pretrained``, a per-layer
one (``masked_dora_layer_sizes`` in its config) into a model built with those sizes
(:func:`~masked_dora.models.compact.build_compact_model`)."""

from __future__ import annotations

import json
import math
import os
from typing import Dict, Optional

import torch
from torch import nn

from .compact import LAYER_SIZES_KEY, build_compact_model


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


def _saved_layout(model: nn.Module, key: str, shape) -> Optional[Dict[str, torch.Tensor]]:
    """``{name save_pretrained writes: the flat indices of the elements of ``key`` it holds}``, or ``None``.

    transformers 5 saves some parameters in their original hub layout: renamed (GPT-NeoX's ``embed_out``),
    or split (an MoE block's packed ``gate_up_proj`` (experts, 2I, H) goes out as per-expert ``w1``/``w3``
    weights). Its own save-time conversion, applied to a tensor holding each element's flat index (int32
    where it fits), says where every saved element belongs. ``None`` where this transformers has no
    conversion or cannot follow this one.
    """
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # older transformers: keys are saved as they are
        return None
    numel = math.prod(shape)
    index = torch.arange(numel, dtype=torch.int32 if numel < 2 ** 31 else torch.int64).view(shape)
    try:
        return revert_weight_conversion(model, {key: index})
    except Exception:  # noqa: BLE001  (a converter this cannot follow: the key stays missing, reported by the caller)
        return None


def _from_saved_layout(model: nn.Module, saved: Dict[str, torch.Tensor], missing) -> Dict[str, torch.Tensor]:
    """``saved`` with the ``missing`` parameters rebuilt from the keys transformers saved them under, one
    parameter at a time; a parameter whose saved pieces are absent or do not cover it exactly stays missing."""
    state = model.state_dict()
    saved = dict(saved)
    for key in missing:
        layout = _saved_layout(model, key, state[key].shape)
        if not layout or not all(name in saved and saved[name].numel() == index.numel()
                                 for name, index in layout.items()):
            continue
        numel = state[key].numel()
        covered = torch.zeros(numel, dtype=torch.bool)
        for index in layout.values():
            covered[index.reshape(-1).long()] = True
        if not bool(covered.all()) or sum(index.numel() for index in layout.values()) != numel:
            continue
        flat = saved[next(iter(layout))].new_empty(numel)
        for name, index in layout.items():
            flat[index.reshape(-1).long()] = saved.pop(name).reshape(-1)
        saved[key] = flat.view(state[key].shape)
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
        saved = _from_saved_layout(model, saved, missing)
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

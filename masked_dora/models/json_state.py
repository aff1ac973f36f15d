"""A state dict as JSON, exactly: for the Trainer callback's entry in ``trainer_state.json``.

The HF Trainer writes ``trainer_state.json`` into every checkpoint and reads it back on resume, wherever the
checkpoint was moved; the sparsity controller's state (a few scalars per targeted kind, and their optimizer's
moments) rides there. Tensors become ``{"__tensor__": nested lists, "dtype": name}``: a float32, bfloat16 or
float16 value is exactly a Python float, and JSON writes floats with round-trip precision, so decoding gives
the same bits. Dicts whose keys are not all strings (an optimizer's per-parameter state, keyed by index) keep
their keys' types as ``{"__items__": [[key, value], ...]}``; tuples come back as lists, which torch's optimizers
accept.
"""

from __future__ import annotations

from typing import Any

import torch

_TENSOR, _ITEMS = "__tensor__", "__items__"


def to_json(value: Any) -> Any:
    """``value`` (nested dicts, lists, tuples, tensors, numbers, strings, ``None``) as JSON-ready data."""
    if isinstance(value, torch.Tensor):
        return {_TENSOR: value.detach().cpu().tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: to_json(v) for k, v in value.items()}
        return {_ITEMS: [[k, to_json(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"value: cannot write a {type(value).__name__} as JSON")


def from_json(value: Any) -> Any:
    """The inverse of :func:`to_json` (tuples come back as lists)."""
    if isinstance(value, dict):
        if set(value) == {_TENSOR, "dtype"}:
            return torch.tensor(value[_TENSOR], dtype=getattr(torch, value["dtype"]))
        if set(value) == {_ITEMS}:
            return {k: from_json(v) for k, v in value[_ITEMS]}
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value

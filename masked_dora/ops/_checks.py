"""Input validation shared by the ops: clear errors, raised before any kernel runs."""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def tensor_version(t: torch.Tensor) -> Optional[int]:
    """``t``'s version counter (bumped by every in-place write through it or a view), or None for an inference
    tensor, which has none: what the index check, ``DeferredScatter`` and the teacher cache compare to see that a
    tensor they remember was not changed."""
    return None if t.is_inference() else t._version


def check_floating(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor (float32/bfloat16/float16/float64), got dtype {t.dtype}")


def check_ndim(name: str, t: torch.Tensor, ndim: int) -> None:
    if t.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor, got shape {tuple(t.shape)}")


def check_shape(name: str, t: torch.Tensor, shape: Sequence[int]) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")


def check_same_device(named: Sequence[tuple]) -> None:
    """All tensors in ``[(name, tensor_or_None), ...]`` live on one device."""
    present = [(n, t) for n, t in named if t is not None]
    if not present:
        return
    first_name, first = present[0]
    for n, t in present[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{n}: expected device {first.device} (the device of {first_name}), got {t.device}"
            )


def check_same_dtype(named: Sequence[tuple]) -> None:
    present = [(n, t) for n, t in named if t is not None]
    if not present:
        return
    first_name, first = present[0]
    for n, t in present[1:]:
        if t.dtype != first.dtype:
            raise TypeError(f"{n}: expected dtype {first.dtype} (the dtype of {first_name}), got {t.dtype}")


def check_vector(name: str, t: Optional[torch.Tensor], length: int) -> None:
    if t is None:
        return
    check_floating(name, t)
    check_shape(name, t, (length,))

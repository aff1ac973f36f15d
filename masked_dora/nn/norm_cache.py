"""The detached DoRA row norm, kept while the tensors it comes from are unchanged."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..ops.row_norm import row_norm, weight_sq_norm


class RowNormCache:
    """``||W0_j||^2`` and the row norm ``n`` of ``W0 + s B A`` (see :mod:`masked_dora.ops.row_norm`), recomputed
    only when ``W0``, ``A``, ``B``, the scaling or ``eps`` changed, so gradient accumulation, activation
    checkpointing and inference do not pay for it again.

    Keyed on each tensor's storage, version counter, dtype and device: every in-place op (an optimizer step,
    ``with torch.no_grad(): p.add_(...)``) bumps the version; fused optimizer steps do not, so every
    ``torch.optim`` step bumps its parameters' versions afterwards (:func:`_bump_stepped_versions`, a global
    step post-hook installed at import); an edit through ``.data``
    (``lora_B.data.normal_()``) bumps nothing: call :meth:`clear` after one. Under ``torch.compile`` nothing
    is cached (the graph recomputes it).

    Sharding engines defeat that key: FSDP2 writes every forward's freshly gathered parameters into their
    buffers with the version counter preserved (on purpose), DeepSpeed ZeRO-3 into new buffers, and either
    can land where the last step's did. The key then matches while ``A`` and ``B`` hold the new step's
    values (CI saw a norm one step old, 5e-6 off, on a loaded machine). See :func:`is_regathered`; a model
    prepared by ``prepare_model`` forgets its norms at every forward when its parameters are re-gathered.
    ``||W0||^2`` stays valid: ``W0`` is frozen, so whatever sits at the key holds the same values.
    """

    def __init__(self):
        self._weight_sq: Optional[Tuple[tuple, Tensor]] = None
        self._norm: Optional[Tuple[tuple, Tensor]] = None

    @staticmethod
    def _key(*tensors: Tensor) -> tuple:
        return tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)

    def clear(self, weight_sq: bool = True) -> None:
        """Forget the row norm, and ``||W0||^2`` too unless ``weight_sq=False``."""
        if weight_sq:
            self._weight_sq = None
        self._norm = None

    def weight_sq(self, weight: Tensor) -> Optional[Tensor]:
        """``||W0_j||^2`` (float32; float64 for float64 weights); ``None`` under ``torch.compile``."""
        if torch.compiler.is_compiling():
            return None
        key = self._key(weight)
        if self._weight_sq is None or self._weight_sq[0] != key:
            with torch.no_grad():
                self._weight_sq = (key, weight_sq_norm(weight))
        return self._weight_sq[1]

    def norm(self, weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float, eps: Optional[float]) -> Tensor:
        """The detached row norm of ``W0 + s B A`` (``A`` and ``B`` taken in the weight's dtype)."""
        A, B = lora_A.to(weight.dtype), lora_B.to(weight.dtype)
        if torch.compiler.is_compiling():
            return row_norm(weight, A, B, scaling, None, eps)
        key = self._key(weight, lora_A, lora_B) + ((scaling, eps),)
        if self._norm is None or self._norm[0] != key:
            with torch.no_grad():
                self._norm = (key, row_norm(weight, A, B, scaling, self.weight_sq(weight), eps))
        return self._norm[1]


def is_regathered(param: Tensor) -> bool:
    """Whether a sharding engine gathers ``param`` afresh for every forward, outside of which it holds only a
    shard: an FSDP2 parameter (a ``DTensor`` between forwards) or a DeepSpeed ZeRO-3 one (``ds_id``)."""
    return hasattr(param, "ds_id") or is_dtensor(param)


def is_dtensor(tensor) -> bool:
    """Whether ``tensor`` is a ``torch.distributed.tensor.DTensor`` (FSDP2's sharded parameters are)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(tensor, DTensor)


def _bump_stepped_versions(optimizer, args, kwargs) -> None:
    """After any ``torch.optim`` optimizer's step: bump the version counters of the parameters it may have
    updated (those with a gradient), which :class:`RowNormCache` is keyed on, so the next forward recomputes the
    row norm of the updated ``A`` and ``B``. A fused step (``torch.optim.AdamW(fused=True)``: the HF Trainer's
    default ``adamw_torch_fused``) and optimizers with kernels of their own (bitsandbytes' 8-bit ones) update in
    place without bumping them (the cached norm stayed the first step's for the whole run); a ``foreach`` or
    for-loop step bumps them already, and one more bump costs nothing (no data is touched)."""
    params = [p for group in optimizer.param_groups for p in group["params"]
              if p.grad is not None and not is_regathered(p)]
    if params:
        torch.autograd.graph.increment_version(params)


from torch.optim.optimizer import register_optimizer_step_post_hook  # noqa: E402

register_optimizer_step_post_hook(_bump_stepped_versions)

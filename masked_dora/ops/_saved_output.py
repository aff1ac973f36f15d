"""Keeping a custom op's own output for its backward, though the caller may change it in place.

An op that keeps its output instead of an internal tensor (``dora_linear`` keeps ``y``, not the pre-scale
``P``: issue 16) does not own that tensor: the model does, and a drop-in ``nn.Linear`` replacement must allow
what ``nn.Linear`` allows, such as Falcon's ``mlp_output += attention_output`` on its MLP's output. Saved with
``save_for_backward``, such a change breaks in two ways: without saved-tensor hooks autograd refuses it (the
in-place error, where ``nn.Linear`` ran fine); with hooks (non-reentrant activation checkpointing) autograd does
not check at all, and the recomputation may hand back the changed tensor: silently wrong gradients. So:

* no saved-tensor hooks active: the op keeps a detached alias on ``ctx`` (same storage and version counter, no
  ``grad_fn``, so no reference cycle through the output) and drops it in the backward;
* hooks active (checkpointing, offloading): ``save_for_backward``, so that the hooks manage the memory;
* either way :func:`take` compares the tensor's version counter with the one recorded in the forward and
  returns ``None`` for a tensor changed since (or already released by an earlier backward of a retained
  graph): the caller recomputes what it needed from it;
* under ``torch.compile``: ``save_for_backward`` and no check (functionalisation keeps the forward's value).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def _hooks_active() -> bool:
    return torch._C._autograd._top_saved_tensors_default_hooks(False) is not None


def keep(ctx, out: Tensor) -> Optional[Tensor]:
    """Call in ``setup_context``; pass the result to ``save_for_backward`` (it may be ``None``)."""
    if torch.compiler.is_compiling():
        ctx.kept_output, ctx.kept_version = None, None
        return out
    ctx.kept_version = out._version
    if _hooks_active():
        ctx.kept_output = None
        return out
    ctx.kept_output = out.detach()
    return None


def take(ctx, saved: Optional[Tensor]) -> Optional[Tensor]:
    """In the backward: the output exactly as the forward returned it, or ``None`` (changed in place since, or
    released by an earlier backward)."""
    out = ctx.kept_output if ctx.kept_output is not None else saved
    ctx.kept_output = None  # released with the rest of the saved tensors
    if out is None or (ctx.kept_version is not None and out._version != ctx.kept_version):
        return None
    return out

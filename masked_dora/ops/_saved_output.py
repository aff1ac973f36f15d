"""Keeping a custom op's own output for its backward, though the caller may change it in place.

An op that keeps its output instead of an internal tensor (``dora_linear`` keeps ``y``, not the pre-scale
``P``: issue 16) does not own that tensor: the model does, and a drop-in ``nn.Linear`` replacement must allow
what ``nn.Linear`` allows, such as Falcon's ``mlp_output += attention_output`` on its MLP's output. Saved with
``save_for_backward``, such a change breaks in two ways: without saved-tensor hooks autograd refuses it (the
in-place error, where ``nn.Linear`` ran fine); with hooks (non-reentrant activation checkpointing) autograd does
not check at all, and the recomputation may hand back the changed tensor: silently wrong gradients. So:

* :func:`can_keep` says when the output may be kept at all: not under ``torch.compile`` (a graph break or a
  compiled region around the op hides the version counter from the check below), not while saved-tensor
  hooks are active (checkpointing, offloading: a hook that copies lazily at unpack would hand back a changed
  tensor with a fresh version counter). There the op keeps what it kept before (``P``), which is exact
  whatever happens to its output; under non-reentrant checkpointing or offloading that costs no more than
  keeping ``y`` would.
* :func:`keep` stores a detached alias on ``ctx`` (same storage and version counter, no ``grad_fn``, so no
  reference cycle through the output) and its version; :func:`take` returns it in the backward, or ``None``
  where it was changed in place since (or released by an earlier backward of a retained graph): the caller
  then recomputes what it needed from it. A change through ``.data`` bypasses every version counter and is
  not seen (``nn.Linear``, which keeps nothing of its output, tolerates it).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def tracing(t: Tensor) -> bool:
    """Whether ``t`` belongs to a trace (``torch.compile``): a fake or functional tensor, or dynamo compiling
    (torch 2.11's AOT tracing of a custom op's ``setup_context`` does not set ``is_compiling()``)."""
    return type(t) is not torch.Tensor or torch.compiler.is_compiling()


def can_keep(out: Tensor) -> bool:
    """Whether the op may keep ``out`` (see the module docstring)."""
    return not (tracing(out) or torch.is_inference(out)
                or torch._C._autograd._top_saved_tensors_default_hooks(False) is not None)


def keep(ctx, out: Tensor) -> None:
    """Call in ``setup_context`` where :func:`can_keep`."""
    ctx.kept_output, ctx.kept_version = out.detach(), out._version


def take(ctx) -> Optional[Tensor]:
    """In the backward: the output exactly as the forward returned it, or ``None`` (changed in place since, or
    released by an earlier backward)."""
    out = getattr(ctx, "kept_output", None)
    ctx.kept_output = None  # released with the rest of the saved tensors
    if out is None or out._version != ctx.kept_version:
        return None
    return out

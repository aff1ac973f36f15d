"""Sharded engines (DeepSpeed ZeRO-3, FSDP2): the full mask logits where they are read.

ZeRO-3 partitions every parameter and gathers a module's own parameters around that module's forward and
backward. The mask logits belong to the state's group modules, which never run a forward of their own: they
are read by the model's forward pre-hook that draws every group's gate sample (:class:`ForwardMasks`), by the
layers in eval mode (the hard mask), by the penalty the Trainer callback adds after the forward, and by the
logged statistics. So, once the model is partitioned:

* the logits are registered as external parameters of the model (gathered around its forward and backward)
  and of every layer they gate (``deepspeed.zero.register_external_parameter``);
* the gate-drawing pre-hook moves after DeepSpeed's own, so it reads the gathered logits;
* reads outside any forward go through :func:`gathered_mask_logits`.

FSDP2 (``fully_shard``) keeps the logits, parameters of the root module, as sharded ``DTensor`` outside the
root's forward and backward (the root keeps its parameters unsharded from its forward to its backward, so
the gates and the penalty read them whole). Reads outside go through :func:`gathered_mask_logits` too: it
all-gathers the logits alone (not the root's embeddings and head, as ``unshard()`` would) and lends their
full values to the groups for the block.

This module imports DeepSpeed only when a model is partitioned by it; nothing here runs otherwise.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, List

from torch import nn

from ..nn import MaskedDoRALinear
from ..nn.quantized_base import QuantizedBaseDoRALinear
from ..nn.norm_cache import is_dtensor
from .group_mask import ForwardMasks
from .prepare import get_state


def _mask_logits(model: nn.Module) -> List[nn.Parameter]:
    return [group.mask_logits for group in get_state(model).groups.values()]


def refuse_sharded_quantized_base(args, model: nn.Module) -> None:
    """Raise if the Trainer's ``args`` (or ``accelerate launch``'s config) shard a model whose layers keep a quantized
    base (QLoRA-style, :class:`~masked_dora.nn.quantized_base.QuantizedBaseDoRALinear`): neither FSDP nor DeepSpeed
    is supported there (the quantized codes and their scales would be sharded as plain parameters; untested).
    Called when the Trainer is built, before any engine wraps the model."""
    engine = ""
    if getattr(args, "deepspeed", None) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        engine = "DeepSpeed (args.deepspeed or accelerate's config)"
    elif getattr(args, "fsdp", None) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        engine = "FSDP (args.fsdp or accelerate's config)"
    if engine and any(isinstance(m, QuantizedBaseDoRALinear) for m in model.modules()):
        raise ValueError(f"args: {engine} shards the model, whose masked-DoRA layers keep a quantized base "
                         f"(QLoRA-style); sharding a quantized base is not supported: train it on one process or "
                         f"with DDP, or load the model unquantized (dtype=torch.bfloat16) to shard it")


def zero3_partitioned(model: nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 has partitioned the prepared model's mask logits."""
    return any(hasattr(p, "ds_id") for p in _mask_logits(model))


def attach_to_zero3(model: nn.Module) -> None:
    """Make a ZeRO-3-partitioned prepared model gather its mask logits where its forward reads them."""
    import deepspeed

    logits = _mask_logits(model)
    for p in logits:
        deepspeed.zero.register_external_parameter(model, p)
    for layer in model.modules():
        source = getattr(layer, "mask_source", None) if isinstance(layer, MaskedDoRALinear) else None
        group = getattr(source, "group", None)
        if group is not None:
            for p in group.parameters():
                deepspeed.zero.register_external_parameter(layer, p)
    hooks = model._forward_pre_hooks  # DeepSpeed's gathering pre-hook was registered after ours: run ours last
    for key, hook in list(hooks.items()):
        if isinstance(hook, ForwardMasks):
            hooks.move_to_end(key)


@contextlib.contextmanager
def gathered_mask_logits(model: nn.Module) -> Iterator[None]:
    """The full mask logits inside the block (a no-op unless ZeRO-3 or FSDP2 sharded them). Collective: every
    process of the group enters it."""
    if zero3_partitioned(model):
        import deepspeed

        with deepspeed.zero.GatheredParameters(_mask_logits(model)):
            yield
        return
    groups = [g for g in get_state(model).groups.values() if is_dtensor(g.mask_logits)]
    sharded = [g.mask_logits for g in groups]
    for group, logits in zip(groups, sharded):  # the values, read-only: no gradient, no optimizer sees them
        group._parameters["mask_logits"] = nn.Parameter(logits.detach().full_tensor(), requires_grad=False)
    try:
        yield
    finally:
        for group, logits in zip(groups, sharded):
            group._parameters["mask_logits"] = logits

"""How a prepared model will be saved once compacted: decided by ``prepare_model``, before any training.

A compacted model is a **plain** transformers checkpoint (``from_pretrained`` without masked_dora) where
the config class can express its sizes, else it carries per-layer sizes that
:func:`~masked_dora.models.load_compact` reads (**per-layer** form). Which one follows from the
configuration alone: the allocation (``"uniform"`` keeps equal counts in every layer; ``"global"`` does
not), the kept counts that hardening will take (fixed by the target and the alignment, whatever the
logits), and what the family's config accepts (an explicit ``head_dim`` for pruned heads; the config
class's own validation). So ``prepare_model`` decides it and says so (a warning for the per-layer form,
an error when ``save_form="plain"`` was asked for and cannot be), instead of ``save_pretrained`` failing
after training.
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Tuple

from torch import nn

from .blocks import built_head_layout, holds_group, model_blocks
from .specs import ModelSpec


def planned_sizes(model: nn.Module, spec: ModelSpec, config) -> List[Dict[str, int]]:
    """Per-layer sizes after :func:`~masked_dora.models.harden` with ``allocation="uniform"`` (the counts do
    not depend on the logits: :func:`~masked_dora.models.sparsity.uniform_count`, as ``harden`` plans them)."""
    from .compact import block_sizes
    from .sparsity import partition_alignment, uniform_count

    sizes = block_sizes(model, spec)
    for b in model_blocks(model, spec, config.stacks):  # the blocks prepare_model gives groups
        size, hl = sizes[b.index], built_head_layout(model.config, b.spec, b.index)
        by_kv = config.gqa == "kv_groups" or hl.group_size == 1
        # (an MoE block: per expert, each keeping the same count; no group: a block without the MLP,
        # MLPSpec.in_some_blocks, or one that keeps it whole, ModelSpec.block_refusals)
        if "mlp" in config.target_groups and holds_group(b.module, b.spec, "mlp"):
            size["intermediate"] = uniform_count(size["intermediate"], 1, config.target_sparsity["mlp"],
                                                 config.alignment["mlp"])
        if "heads" in config.target_groups and holds_group(b.module, b.spec, "heads"):
            if by_kv:  # one unit per KV head, its query heads with it (in equal chunks of a "chunked" qkv)
                parts = b.spec.heads.partitions
                kv = uniform_count(hl.kv_heads, parts, config.target_sparsity["heads"],
                                   partition_alignment("heads", parts, config.alignment["heads"]))
                size.update(kv_heads=kv, heads=kv * hl.group_size)
            else:  # one unit per query head, the same count in every KV group; the KV heads stay
                align = partition_alignment("heads", hl.kv_heads, config.alignment["heads"])
                size["heads"] = uniform_count(hl.heads, hl.kv_heads, config.target_sparsity["heads"], align)
    return sizes


def decide_save_form(model: nn.Module, spec: ModelSpec, config) -> Tuple[str, Optional[str]]:
    """``("plain", None)`` or ``("per_layer", why)``; raises for ``save_form="plain"`` that cannot be.

    Called by ``prepare_model`` before it changes anything.
    """
    from .compact import config_block_sizes
    from .plain_config import plain_config_or_reason

    if "hidden" in config.target_groups and config.hidden_mode == "per_block":  # no warning: the mode's form
        return "per_layer", "hidden_mode='per_block' compacts to CompactLinear writers, which load_compact builds"
    if config.save_form == "per_layer":
        reason = "save_form='per_layer' was asked for"
    elif config.allocation == "global" and not _widths_per_layer_alone(model, spec, config):
        reason = "allocation='global' gives every layer its own sizes"
    else:
        from .hidden import planned_hidden_size

        stacks = [b.spec for b in model_blocks(model, spec)]
        hidden = planned_hidden_size(model, spec, config) if "hidden" in config.target_groups else None
        _, reason = plain_config_or_reason(model.config, stacks, config_block_sizes(model, spec),
                                           planned_sizes(model, spec, config), hidden)
    if reason is None:
        return "plain", None
    if spec.heads_need_plain_config and "heads" in config.target_groups:
        raise ValueError(f"config: a {model.config.model_type!r} model reads its head counts from the model config, "
                         f"so pruned heads need a plain checkpoint, which this pruning cannot be ({reason}); use "
                         f"allocation='uniform' with kept head counts its config accepts, or "
                         f"target_groups=('mlp',)")
    if config.save_form == "plain":
        raise ValueError(f"config.save_form: a plain checkpoint cannot hold this pruning ({reason}); use "
                         f"save_form='auto' (the per-layer form, loaded with masked_dora.load_compact) or change "
                         f"the target")
    warnings.warn(f"prepare_model: the compacted model will save in the per-layer form ({reason}): load it with "
                  f"masked_dora.load_compact(path), not a plain from_pretrained (save_form='plain' makes this an "
                  f"error instead)", UserWarning, stacklevel=3)
    return "per_layer", reason


def _widths_per_layer_alone(model: nn.Module, spec: ModelSpec, config) -> bool:
    """Whether the pruning changes MLP widths alone, in stacks whose config key lists a width per layer
    (``MLPSpec.size_per_layer``: Gemma 3n's ``intermediate_size``): a plain config then says whatever width each
    layer keeps, so ``allocation="global"`` (widths differing per layer) can save plainly too."""
    return tuple(config.target_groups) == ("mlp",) and all(
        b.spec.mlp.size_per_layer for b in model_blocks(model, spec, config.stacks))

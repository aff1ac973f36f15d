"""Export to PEFT: a prepared model's adapters as a PEFT DoRA adapter that ``PeftModel.from_pretrained`` loads.

A masked-DoRA layer computes ``y = (x W0^T + s (x A^T) B^T) * (m z / n) + z b`` (``n`` the row norm of
``W0 + s B A``); PEFT's DoRA computes the same with ``z = 1``. So every layer exports exactly, pruned
channels included: the magnitude becomes ``m * z`` and, where a pruned channel has a bias, the bias
becomes ``z * b`` (saved with the adapter: PEFT's ``bias="lora_only"``). Not expressible, so refused:
query heads pruned inside KV groups (``gqa="query_heads"``), which are cut at the output projection's
*input* (:class:`~masked_dora.models.group_mask.InputGate`; their KV heads stay, so the head's attention
output is not zero by itself), and a DoRA adapter cannot zero a base weight's input columns; MLP channels
cut at the consumer's input likewise (``MLPSpec.gate_consumer_input``: Apertus's xIELU maps 0 elsewhere,
SegFormer's depthwise convolution adds its bias); and MoE
experts (PEFT's adapters on packed expert parameters are LoRA only). ``z`` is the layer's current
hard decision, what eval mode computes: the learned gates' decision before :func:`harden`, the exact
mask after it. The rank and scaling of each layer are kept (``rank_pattern``/``alpha_pattern`` where a
layer differs from the config's), and so is ``lora_dropout`` (PEFT's meaning).

Only the masked-DoRA layers are written: the adapter goes onto the base model the prepared model was made
from, unchanged. (A model made by :func:`from_peft` has PEFT layers outside the pruning groups merged into
its base weights: load the adapter onto that merged base.) Compacting is what removes the pruned channels;
an exported adapter keeps the full shapes.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Dict, List

import torch
from torch import nn

from ..nn import MaskedDoRAExperts, MaskedDoRALinear
from .group_mask import InputGate
from .prepare import get_state

PEFT_PREFIX = "base_model.model."


def _inputs_cut(model: nn.Module, kind: str) -> List[str]:
    """Names of the layers whose input an :class:`InputGate` of a ``kind`` group cuts now (some channel's hard
    decision is 0)."""
    names = []
    for name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if (isinstance(hook, InputGate) and hook.group.kind == kind
                    and not bool(hook.group.per_channel(hook.role, hook.group.hard()).all())):
                names.append(name)
    return names


def _first_of(names: List[str]) -> str:
    return names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "")


def _refuse_unexportable(model: nn.Module) -> None:
    """Raise for what a PEFT DoRA adapter cannot hold: MoE experts, query heads cut at an output's input,
    pruned residual channels (cut at the embeddings' output), and a model compacted for training (its layers no
    longer have the base model's shapes)."""
    if get_state(model).compacted_for_training:
        raise NotImplementedError("model: compact_for_training removed its pruned channels, so its layers no longer "
                                  "fit the base model a PEFT adapter attaches to; export before compacting, or save "
                                  "the pruned model with compact_model and save_pretrained")
    experts = [name for name, m in model.named_modules() if isinstance(m, MaskedDoRAExperts)]
    if experts:
        raise NotImplementedError(f"model: export_peft cannot write MoE experts ({experts[0]}): PEFT adapts packed "
                                  f"expert parameters only with plain LoRA (target_parameters; its ParamWrapper "
                                  f"refuses use_dora=True); keep them with save_training_state, or compact_model "
                                  f"and save_pretrained")
    hidden = [g for g in get_state(model).groups_of("hidden") if not bool(g.hard().all())]
    if hidden and get_state(model).config.hidden_mode == "per_block":
        raise NotImplementedError("model: residual channels pruned per block (hidden_mode='per_block') are cut at "
                                  "the input of each block's attention and MLP, which a PEFT adapter cannot "
                                  "express (it cannot zero input columns of a base weight): the loaded adapter "
                                  "would compute other outputs. Use compact_model for the pruned model")
    if hidden:
        raise NotImplementedError("model: the pruned residual channels (target_groups 'hidden') are cut at the input "
                                  "embeddings' output, which a PEFT adapter cannot express (the embeddings carry no "
                                  "DoRA layer): the loaded adapter would compute other outputs. Use compact_model "
                                  "for the pruned model")
    cut = _inputs_cut(model, "heads")
    if cut:
        raise NotImplementedError(f"model: query heads pruned inside KV groups (gqa='query_heads') are cut at the "
                                  f"input of {_first_of(cut)}, which a PEFT DoRA adapter cannot express (it cannot "
                                  "zero input columns of a base weight): the loaded adapter would compute other "
                                  "outputs. Use compact_model for the pruned model, or prune with gqa='kv_groups'")
    cut = _inputs_cut(model, "mlp")
    if cut:
        spec = get_state(model).spec
        depthwise = any(s.mlp.depthwise for s in (spec,) + tuple(spec.stacks))
        why = ("MLP runs a depthwise convolution between its layers, whose bias makes a gated channel non-zero"
               if depthwise else "MLP activation does not map 0 to 0")
        raise NotImplementedError(f"model: this family's {why}, so its pruned channels "
                                  f"are cut at the input of {_first_of(cut)} (MLPSpec.gate_consumer_input), which a "
                                  "PEFT DoRA adapter cannot express (it cannot zero input columns of a base weight): "
                                  "the loaded adapter would compute other outputs. Use compact_model for the pruned "
                                  "model")


def export_peft(model: nn.Module, save_directory: str) -> Dict[str, int]:
    """Write ``model``'s masked-DoRA layers as a PEFT DoRA adapter in ``save_directory``
    (``adapter_config.json``, ``adapter_model.safetensors``). Returns ``{"layers": ..., "pruned_channels": ...}``.

    Load it with ``PeftModel.from_pretrained(base_model, save_directory)``, ``base_model`` being the model
    :func:`prepare_model` was given (the same weights): in eval mode its outputs equal the prepared model's.
    """
    try:
        from peft import LoraConfig
    except ImportError as exc:  # pragma: no cover - peft is a test dependency
        raise ImportError("export_peft needs the peft package") from exc
    from safetensors.torch import save_file

    config = get_state(model).config
    if not isinstance(save_directory, (str, os.PathLike)):
        raise TypeError(f"save_directory: expected a path, got {type(save_directory).__name__}")
    _refuse_unexportable(model)  # before anything is written
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, MaskedDoRALinear)]
    # GPT-2's Conv1D layers (wrapped as linear maps by prepare_model): PEFT's fan_in_fan_out, same A, B, m
    conv1d = {bool(getattr(m, "from_conv1d", False)) for _, m in layers}
    if len(conv1d) > 1:
        raise NotImplementedError("model: export_peft writes one fan_in_fan_out setting; this model mixes "
                                  "nn.Linear and Conv1D layers")
    if config.lora_dropout > 0 and config.dropout_mode != "peft":
        warnings.warn(f"export_peft: PEFT knows only its own dropout meaning (dropout_mode='peft'); the adapter "
                      f"carries lora_dropout={config.lora_dropout:g} with that meaning, not dropout_mode="
                      f"{config.dropout_mode!r} (eval outputs are unaffected)", stacklevel=2)
    tensors, ranks, alphas, lora_bias = {}, {}, {}, False
    pruned = 0
    default_scaling = config.alpha / (math.sqrt(config.rank) if config.use_rslora else config.rank)
    with torch.no_grad():
        for name, layer in layers:
            keep = layer.keep_mask()
            pruned += int((~keep).sum())
            z = keep.to(layer.magnitude.dtype)
            key = PEFT_PREFIX + name
            tensors[f"{key}.lora_A.weight"] = layer.lora_A.detach().contiguous()
            tensors[f"{key}.lora_B.weight"] = layer.lora_B.detach().contiguous()
            tensors[f"{key}.lora_magnitude_vector"] = (layer.magnitude * z).detach().contiguous()
            if layer.bias is not None and not bool(keep.all()) and bool((layer.bias[~keep] != 0).any()):
                lora_bias = True
            rank = layer.lora_A.shape[0]
            if rank != config.rank:
                ranks[name] = rank
            if layer.scaling != default_scaling:  # PEFT's scaling: alpha / r (or / sqrt(r) with rsLoRA)
                alphas[name] = layer.scaling * (math.sqrt(rank) if config.use_rslora else rank)
        if lora_bias:  # every adapted layer's bias travels, gated, and replaces the base's on load
            for name, layer in layers:
                if layer.bias is not None:
                    tensors[f"{PEFT_PREFIX}{name}.base_layer.bias"] = \
                        (layer.bias * layer.keep_mask().to(layer.bias.dtype)).detach().contiguous()
    peft_config = LoraConfig(r=config.rank, lora_alpha=config.alpha, use_rslora=config.use_rslora, use_dora=True,
                             target_modules=[name for name, _ in layers], rank_pattern=ranks, alpha_pattern=alphas,
                             bias="lora_only" if lora_bias else "none", lora_dropout=config.lora_dropout,
                             fan_in_fan_out=conv1d == {True},
                             base_model_name_or_path=getattr(getattr(model, "config", None), "_name_or_path", None))
    os.makedirs(save_directory, exist_ok=True)
    peft_config.save_pretrained(save_directory)
    save_file({k: v.cpu() for k, v in tensors.items()}, os.path.join(save_directory, "adapter_model.safetensors"),
              metadata={"format": "pt"})
    return {"layers": len(layers), "pruned_channels": pruned}

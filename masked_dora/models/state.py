"""Training state on disk (safetensors) and import of a PEFT LoRA/DoRA adapter.

:func:`save_training_state` writes only what training created: every
adapter (``lora_A``, ``lora_B``, ``magnitude``, gate temperatures, fixed
masks), the group mask logits, the running statistics of BatchNorm layers
(which every train-mode forward updates, frozen weights or not: the
Wav2Vec2-Conformer's convolution modules, a BatchNorm vision tower), and
optionally the sparsity controller, plus a JSON file with the
:class:`MaskedDoRAConfig`. :func:`load_training_state`
prepares a fresh copy of the base model with that config and loads them back:
outputs are bit-identical.
"""

from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import torch
from torch import nn

from ..nn import MaskedDoRALinear
from .blocks import holds_group, model_blocks, set_module, stack_specs
from .config import MaskedDoRAConfig
from .prepare import STATE_ATTR, get_state, is_prepared, prepare_model, refuse_quantized_base
from .specs import BLOCK_KINDS, spec_for

FORMAT_VERSION = 1
CONFIG_FILE = "masked_dora_config.json"
ADAPTER_FILE = "masked_dora_adapter.safetensors"
CONTROLLER_FILE = "masked_dora_controller.safetensors"
COMPACTION_FILE = "masked_dora_compaction.safetensors"  # the hardened masks of a model compacted for training
_BASE_LEAVES = ("weight", "bias")


def _training_tensors(model: nn.Module) -> Dict[str, torch.Tensor]:
    get_state(model)
    masked = {name for name, m in model.named_modules() if isinstance(m, MaskedDoRALinear)}
    out = {}
    for key, value in model.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        in_layer = any(key.startswith(name + ".") for name in masked)
        if key.startswith(STATE_ATTR + ".") or (in_layer and not (owner in masked and leaf in _BASE_LEAVES)):
            out[key] = value.detach().contiguous().cpu()
    for key in _running_statistics(model):
        out[key] = model.get_buffer(key).detach().contiguous().cpu()
    return out


def _running_statistics(model: nn.Module) -> List[str]:
    """The names of the running-statistics buffers (``running_mean``, ``running_var``, ``num_batches_tracked``) of
    ``model``'s BatchNorm layers: not parameters, so ``prepare_model`` leaves them to train-mode forwards, which
    update them, and the trained model's eval outputs depend on them."""
    names = []
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            names += [f"{name}.{leaf}" if name else leaf for leaf, buffer in module.named_buffers(recurse=False)
                      if buffer is not None and leaf in ("running_mean", "running_var", "num_batches_tracked")]
    return names


def save_training_state(model: nn.Module, path: str, controller: Optional[nn.Module] = None) -> None:
    """Write the adapters, magnitudes, mask logits (and ``controller``'s state) of ``model`` under ``path``."""
    from safetensors.torch import save_file

    state = get_state(model)
    os.makedirs(path, exist_ok=True)
    save_file(_training_tensors(model), os.path.join(path, ADAPTER_FILE))
    compaction = state.compaction_masks
    if compaction is not None:  # compacted for training: the hardened masks it removed units by
        save_file({k: v.contiguous().cpu() for k, v in compaction.items()}, os.path.join(path, COMPACTION_FILE))
    if controller is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in controller.state_dict().items()},
                  os.path.join(path, CONTROLLER_FILE))
    meta = {"format_version": FORMAT_VERSION, "spec": state.spec.name, "model_type": model.config.model_type,
            "config": state.config.to_dict(), "base_model": getattr(model.config, "_name_or_path", ""),
            "compacted_for_training": compaction is not None}
    with open(os.path.join(path, CONFIG_FILE), "w") as f:
        json.dump(meta, f, indent=2)


def load_training_state(model: nn.Module, path: str, controller: Optional[nn.Module] = None) -> nn.Module:
    """Prepare ``model`` (the unmodified base model) as saved and load the training state into it."""
    from safetensors.torch import load_file

    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"path: expected {CONFIG_FILE} in {path!r} (written by save_training_state)")
    with open(config_path) as f:
        meta = json.load(f)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"path: unsupported training-state format {meta.get('format_version')!r}")
    if meta["model_type"] != model.config.model_type:
        raise ValueError(f"model: the state in {path!r} is for model_type {meta['model_type']!r}, "
                         f"got {model.config.model_type!r}")
    saved_config = dict(meta["config"])
    stacks = stack_specs(spec_for(model))
    if "stacks" not in saved_config and len(stacks) > 1:  # saved before decoders were pruned: the first stack only
        saved_config["stacks"] = [stacks[0].stack]
    if not is_prepared(model):
        config = MaskedDoRAConfig.from_dict({**saved_config, "importance": "none"})
        prepare_model(model, config)
    if meta.get("compacted_for_training"):  # remove the same units again, then the tensors fit
        from .compact_training import compact_for_training

        for key, keep in load_file(os.path.join(path, COMPACTION_FILE)).items():
            get_state(model).groups[key].set_mask(keep)
        compact_for_training(model)
    saved = load_file(os.path.join(path, ADAPTER_FILE))
    device = next(model.parameters()).device
    _load_adapter_tensors(model, saved, device)
    get_state(model).config = MaskedDoRAConfig.from_dict(saved_config)
    if controller is not None:
        ctrl_path = os.path.join(path, CONTROLLER_FILE)
        if not os.path.exists(ctrl_path):
            raise FileNotFoundError(f"controller: no {CONTROLLER_FILE} in {path!r}")
        controller.load_state_dict(load_file(ctrl_path))
    return model


def _load_adapter_tensors(model, saved, device):
    expected = _training_tensors(model)
    # a state saved before the running statistics were (they stay the base model's)
    missing = sorted(set(expected) - set(saved) - set(_running_statistics(model)))
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ValueError(f"training state does not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    with torch.no_grad():
        for key, value in saved.items():
            target = params[key]
            if target.shape != value.shape:
                raise ValueError(f"training state: {key} has shape {tuple(value.shape)}, "
                                 f"the model's is {tuple(target.shape)} (different rank or model size?)")
            target.copy_(value.to(device))


# ---------------------------------------------------------------- PEFT import

def _peft_layers(base: nn.Module):
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in base.named_modules() if isinstance(m, LoraLayer)]


def from_peft(peft_model: nn.Module, config: Optional[MaskedDoRAConfig] = None, adapter_name: Optional[str] = None):
    """A masked-DoRA model starting from a PEFT LoRA or DoRA adapter (``peft_model`` is consumed).

    Layers of the coupled groups that PEFT adapted keep its ``A``, ``B``,
    scaling and (DoRA) magnitude; for plain LoRA the magnitude is set to the
    row norm of ``W0 + s B A`` so the function is unchanged. PEFT-adapted
    layers outside the groups (e.g. ``lm_head``) are merged into their base
    weight. ``config`` defaults to the PEFT rank/alpha/rsLoRA/``lora_dropout`` (PEFT's dropout
    meaning, ``dropout_mode="peft"``) with every unit kept (``importance="none"``); with every mask
    open the result computes what the PEFT model computes, in training too.
    """
    try:
        from peft import PeftModel
    except ImportError as exc:  # pragma: no cover - peft is a test dependency
        raise ImportError("from_peft needs the peft package") from exc
    if not isinstance(peft_model, PeftModel):
        raise TypeError(f"peft_model: expected a peft.PeftModel, got {type(peft_model).__name__}")
    adapter = adapter_name or peft_model.active_adapter
    pcfg = peft_model.peft_config.get(adapter)
    if pcfg is None or type(pcfg).__name__ != "LoraConfig":
        raise ValueError(f"peft_model: expected a LoRA/DoRA adapter named {adapter!r}, got {type(pcfg).__name__}")
    if config is None:
        config = MaskedDoRAConfig(rank=pcfg.r, alpha=float(pcfg.lora_alpha), use_rslora=bool(pcfg.use_rslora),
                                  lora_dropout=float(pcfg.lora_dropout), importance="none")
    base = peft_model.get_base_model()
    refuse_quantized_base(base, model_blocks(base, spec_for(base), config.stacks))  # before any layer is merged
    imported = {}
    for name, layer in _peft_layers(base):
        if adapter not in layer.lora_A:
            continue
        A = layer.lora_A[adapter].weight.detach().clone()
        B = layer.lora_B[adapter].weight.detach().clone()
        mag = None
        if layer.use_dora.get(adapter, False):
            mag = layer.lora_magnitude_vector[adapter].weight.detach().clone()
        imported[name] = (A, B, float(layer.scaling[adapter]), mag, layer)
    members = set()  # the layers prepare_model wraps: not those of a kind a block keeps whole (block_refusals)
    for block in model_blocks(base, spec_for(base), config.stacks):
        for kind in config.target_groups:
            if kind in BLOCK_KINDS and not holds_group(block.module, block.spec, kind):
                continue
            for path in _role_paths(block.spec, kind):
                members.add(f"{block.path}.{path}")
    for name, (_, _, _, _, layer) in imported.items():
        if name not in members:
            layer.merge(adapter_names=[adapter])
        set_module(base, name, layer.get_base_layer())
    prepare_model(base, config)
    with torch.no_grad():
        for name, (A, B, scaling, mag, _) in imported.items():
            if name not in members:
                continue
            target = base.get_submodule(name)
            _load_lora(target, A, B, scaling, mag)
    return base


def _role_paths(spec, kind):
    from .blocks import role_paths

    return role_paths(spec, kind).values()


def _load_lora(layer: MaskedDoRALinear, A, B, scaling, mag) -> None:
    dev, dt = layer.weight.device, layer.lora_A.dtype
    if A.shape != layer.lora_A.shape:  # a per-module rank (rank_pattern)
        layer.lora_A = nn.Parameter(A.to(dev, dt))
        layer.lora_B = nn.Parameter(B.to(dev, dt))
        layer.rank = A.shape[0]
    else:
        layer.lora_A.copy_(A)
        layer.lora_B.copy_(B)
    layer.scaling = scaling
    if mag is None:  # plain LoRA: choose m so that DoRA with z = 1 is W0 + s B A
        mag = layer.weight_norm()
    layer.magnitude.copy_(mag.reshape(-1).to(layer.magnitude.dtype))

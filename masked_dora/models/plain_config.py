"""The config of a plain checkpoint: whether transformers' config class can say a compacted model's sizes, and
the smaller config that does (:func:`plain_config_or_reason`); where it cannot, the model saves in the per-layer
form (:data:`~masked_dora.models.compact.LAYER_SIZES_KEY`) that :func:`~masked_dora.models.load_compact` reads."""

from __future__ import annotations

import copy
import warnings
from fractions import Fraction
from typing import Dict, List, Optional, Tuple

from .specs import ModelSpec
from .stage_spec import StageConfig

_HEAD_SIZES = ("heads", "kv_heads", "head_dim")


def _in_config_terms(size: Dict[str, int], original: Dict[str, int], base: Optional[int]) -> Dict[str, object]:
    """One block's ``size`` as its stack's config keys would say it. The MLP width in units of the config's
    ``base`` width: a block built ``original / base`` times as wide (Gemma 4's double-wide MLPs in its KV-sharing
    blocks: twice) says ``size * base / original`` (a :class:`~fractions.Fraction` where that is not whole). The
    head counts are left out where the block keeps those its config gives it: the layers of a heterogeneous config
    (``per_layer_config``: Gemma 4's full-attention layers) differ there by design, and a plain checkpoint keeps
    them."""
    out: Dict[str, object] = dict(size)
    if not original["intermediate"]:  # no MLP in this block (MLPSpec.in_some_blocks): nothing to say of its width
        del out["intermediate"]
    elif base and original["intermediate"] != base:
        out["intermediate"] = Fraction(size["intermediate"] * base, original["intermediate"])
    if all(size[k] == original[k] for k in _HEAD_SIZES):
        return {k: v for k, v in out.items() if k not in _HEAD_SIZES}
    return out


def _plain_sizes(spec: ModelSpec, size: Dict[str, int], heads: bool = True, mlp: bool = True) -> Dict[str, int]:
    """``{config key: value}`` that say one stack's (uniform) sizes; ``heads=False`` / ``mlp=False``: without the
    head counts / the MLP width (the config's own are kept)."""
    out = {spec.mlp.size_key: size["intermediate"]} if spec.mlp.size_key and mlp else {}
    if not heads:
        return out
    out[spec.heads.heads_key] = size["heads"]
    if spec.heads.kv_heads_key:
        out[spec.heads.kv_heads_key] = size["kv_heads"]
    if spec.heads.head_dim_key:
        out[spec.heads.head_dim_key] = size["head_dim"]
    return out


def plain_config_or_reason(config, stacks: List[ModelSpec], original, sizes, hidden: Optional[int] = None):
    """``(the smaller config of a plain checkpoint, None)``, or ``(None, why the config class cannot express
    the sizes)``. ``stacks[i]``: the stack spec of block ``i`` (:func:`model_blocks`). ``hidden``: the kept
    residual width under ``hidden_mode="global"`` (the config is validated with it: 12 heads of 128 fit a
    pruned hidden size of 1536, not the original 2048).

    A config holds one size per stack (its keys): the blocks of a stack must keep the same sizes, and two
    stacks sharing a key (T5's ``d_ff``) the same MLP width. Besides non-uniform sizes and configs without
    ``head_dim``, the config's own validation decides: a Llama with 32 query / 8 KV heads pruned by 25%
    keeps 24 heads, and transformers 5.x refuses a ``hidden_size`` (4096) that is not a multiple of
    ``num_attention_heads`` (24) even with an explicit ``head_dim`` (``save_pretrained`` raised after
    training). Such a model saves in the per-layer form.
    """
    plain = copy.deepcopy(config)
    # (sub-config attribute, key) -> value: each stack's keys live in its own config (ModelSpec.sized_config: a
    # VLM's text config, a two-tower model's text_config and vision_config; else the model config)
    # (and a hierarchical encoder's stage: its own entry of the per-stage keys, ModelSpec.stages)
    values: Dict[Tuple[str, int, str], int] = {}
    owners: Dict[Tuple[str, int, str], str] = {}  # the stack that set each
    writers: Dict[Tuple[str, int, str], ModelSpec] = {}  # a stack whose sized_config holds each
    for stack in dict.fromkeys(stacks):
        text = stack.sized_config(config)
        heterogeneous = bool(getattr(text, "is_heterogeneous", False))
        mine = [i for i, s in enumerate(stacks) if s is stack]
        heads_changed = any((sizes[i]["heads"], sizes[i]["kv_heads"]) != (original[i]["heads"], original[i]["kv_heads"])
                            for i in mine)
        if heads_changed and heterogeneous:
            return None, (f"{_described(text)} gives layers their own head counts (per_layer_config), which "
                          f"one pruned count per key cannot say")
        width_key = stack.mlp.size_key
        if width_key and heterogeneous and width_key in (getattr(text, "per_layer_attributes", None) or ()):
            if any(sizes[i]["intermediate"] != original[i]["intermediate"] for i in mine):
                return None, (f"{_described(text)} gives layers their own {width_key!r} (per_layer_config), which "
                              f"one pruned width cannot say")
            width_key = ""
        per_layer = bool(width_key) and stack.mlp.size_per_layer  # a list in the config: a width per block
        base = getattr(text, width_key) if width_key and not per_layer else None
        terms = [_in_config_terms(sizes[i], original[i], base) for i in mine]
        widths = [t.pop("intermediate") for t in terms if "intermediate" in t]  # (of the blocks with the MLP)
        if not all(t == terms[0] for t in terms) or (not per_layer and any(w != widths[0] for w in widths)):
            return None, "the layers keep different sizes"
        if per_layer and len(widths) != len(getattr(text, width_key)):
            return None, (f"{_described(text)}'s {width_key!r} lists {len(getattr(text, width_key))} widths, "
                          f"the stack has {len(widths)} MLPs")
        width = widths[0] if widths else sizes[mine[0]]["intermediate"]
        if int(width) != width:
            return None, (f"the pruned MLP widths are not a whole multiple of {_described(text)}'s "
                          f"{width_key!r} in the blocks it builds wider")
        if heads_changed and stack.heads.head_dim_key is None:
            return None, (f"{_described(text)} derives the head size from {stack.hidden_key} / "
                          f"{stack.heads.heads_key}, so it cannot describe pruned heads")
        if heads_changed and stack.heads.output_width_key:
            return None, (f"{type(config).__name__}'s attention builds {stack.heads.output} "
                          f"{stack.heads.output_width_key} wide (not heads x head_dim), so it cannot describe pruned "
                          f"heads")
        if heads_changed and stack.heads.cross_attention:
            return None, (f"{type(config).__name__}'s {stack.heads.heads_key!r} also sets the heads of the "
                          f"{stack.stack}'s cross-attention ({stack.heads.cross_attention}), which keeps them all")
        if not stack.mlp.size_key and any(sizes[i]["intermediate"] != original[i]["intermediate"] for i in mine):
            return None, (f"{_described(text)} has no key for the MLP width alone (the blocks fix it, or the "
                          f"key sizes other modules too), so it cannot describe a pruned MLP")
        # (a heterogeneous config keeps its per-layer head counts: the global keys would override them; a stack
        # none of whose blocks holds its MLP, MLPSpec.in_some_blocks, says nothing of a width key it shares: a
        # MobileBERT built with fewer stacked FFNs than its spec names)
        size = dict(sizes[mine[0]], intermediate=int(width))
        said = _plain_sizes(stack, size, heads=not heterogeneous, mlp=bool(width_key and widths))
        if per_layer and width_key in said:
            said[width_key] = [int(w) for w in widths]
        for key, value in said.items():
            slot = (stack.text_config, _stage(stack), key)
            first = owners.setdefault(slot, stack.stack or stack.name)
            writers.setdefault(slot, stack)
            if values.setdefault(slot, value) != value:
                return None, (f"{_described(text)}'s {key!r} sizes several stacks (the {first} and the "
                              f"{stack.stack or stack.name}), which keep different sizes")
    for (_sub, _stage_index, key), value in values.items():
        setattr(writers[(_sub, _stage_index, key)].sized_config(plain), key, value)
    if hidden is not None:
        for stack in dict.fromkeys(stacks):
            setattr(stack.sized_config(plain), stack.hidden_key, hidden)
    subs = {id(c): c for c in (stack.sized_config(plain) for stack in dict.fromkeys(stacks)) if c is not plain}
    for checked in list(subs.values()) + [plain]:  # each stack's config, then the model's
        validate = getattr(checked, "validate", None)
        if callable(validate):
            try:
                validate()
            except Exception as exc:  # noqa: BLE001  (huggingface_hub StrictDataclassClassValidationError, ...)
                reason = str(exc).strip().splitlines()[-1].strip()
                return None, f"{_described(checked)} refuses the pruned sizes: {reason}"
    return plain, None


def _described(config) -> str:
    """A config's class name, for a hierarchical encoder's stage with the stage (``SwinConfig (stage 1)``)."""
    return config.described if isinstance(config, StageConfig) else type(config).__name__


def _stage(stack: ModelSpec) -> int:
    """The stage of a hierarchical encoder a stack stands for (``ModelSpec.stages``), or -1."""
    return stack.stages.index if stack.stages is not None else -1


def plain_config(config, stacks, original, sizes, form: str = "auto", hidden: Optional[int] = None):
    """The plain config, or ``None`` (the per-layer form): as decided at ``prepare_model`` (``form``)."""
    if form == "per_layer":
        return None
    plain, reason = plain_config_or_reason(config, stacks, original, sizes, hidden)
    if plain is None and form == "plain":
        warnings.warn(f"compact_model: prepare_model planned a plain checkpoint, but the hardened masks cannot be "
                      f"one ({reason}); it saves with per-layer sizes: load it with masked_dora.load_compact(path)",
                      UserWarning, stacklevel=3)
    return plain

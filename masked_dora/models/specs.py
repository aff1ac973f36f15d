"""Looking a model's spec up (:func:`spec_for`), and teaching masked_dora a new family (:func:`register_spec`).

The spec types are in :mod:`masked_dora.models.spec_types` (what a group is, per kind), the shipped table in
:mod:`masked_dora.models.families`; both are re-exported here.
"""

from __future__ import annotations

import functools
from dataclasses import replace as replace_dataclass
from typing import Optional

from torch import nn

from .families import REFUSED, RENAMED_SPECS, SPECS, WRAPPERS
from .families_seq2seq import PAIRS
from .pair_spec import pair_spec_for
from .stage_spec import StagesSpec, expand_stages, stage_count
from .spec_types import (BLOCK_KINDS, GROUP_KINDS, HEAD_COUNTS, QKV_LAYOUTS, ExpertsLayout, HeadSpec, MLPSpec,
                         ModelSpec, PerHeadSpec)
from .wrapper_spec import WrapperSpec, inner_spec, wrap_spec

__all__ = ["BLOCK_KINDS", "GROUP_KINDS", "HEAD_COUNTS", "QKV_LAYOUTS", "ExpertsLayout", "HeadSpec", "MLPSpec",
           "ModelSpec", "PAIRS", "PerHeadSpec", "RENAMED_SPECS", "SPECS", "StagesSpec", "WRAPPERS", "WrapperSpec",
           "matching_specs", "register_spec", "spec_for"]


# the oldest transformers CI tests (.ci/cuda_build_check.sh; .venv has the newest): the specs name the modules and
# config keys of transformers 5, and 4.x lays many out otherwise (ViT's blocks under ``layer``, MoE experts as
# modules of their own, attention reshaping by ``hidden_size``), which fails deep inside, or gives wrong shapes
MIN_TRANSFORMERS = (5, 17)


@functools.lru_cache(maxsize=None)
def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def require_supported_transformers() -> None:
    """A clear error before any model is touched when the installed transformers is older than the specs'."""
    from packaging.version import Version

    found = _transformers_version()
    if Version(found).release[:2] < MIN_TRANSFORMERS:
        need = ".".join(map(str, MIN_TRANSFORMERS))
        raise RuntimeError(f"transformers {found} is installed; masked_dora's model specs describe the modules of "
                           f"transformers >= {need} (the oldest version its CI tests; 4.x names and shapes many of "
                           f"them otherwise): pip install 'transformers>={need}'")


def spec_for(model_or_config) -> ModelSpec:
    """The spec of a model (or config) by its ``config.model_type``; a clear error if there is none (or if the
    installed transformers is older than the specs': :func:`require_supported_transformers`).

    Given a model without a spec, the error says which existing spec its module names match (one
    :func:`register_spec` call away) or that none does. A vision-language model whose ``model_type`` has a
    ``WrapperSpec`` (``WRAPPERS``) and no spec of its own gets its language model's spec, wrapped
    (:func:`~masked_dora.models.wrapper_spec.wrap_spec`); an encoder-decoder of two models (``PAIRS``) its halves'
    specs, composed (:mod:`~masked_dora.models.pair_spec`). A type known not to prune exactly (Zamba's shared blocks,
    the pure state-space models: ``REFUSED``) and without a registered spec gets the reason.
    """
    require_supported_transformers()
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise TypeError(f"model: expected a transformers model or config with a model_type, "
                        f"got {type(model_or_config).__name__}")
    variants = [spec for spec in SPECS.values() if model_type in spec.model_types]
    if not variants and model_type in WRAPPERS:
        return _wrapped_spec_for(config, model_type, WRAPPERS[model_type])
    if not variants and model_type in PAIRS:  # an encoder-decoder of two models: their specs, composed
        return pair_spec_for(config, model_type, PAIRS[model_type], spec_for)
    model = model_or_config if isinstance(model_or_config, nn.Module) else None
    for spec in variants:
        if spec.applies_to(config):
            spec = _with_stages(spec, config)
            if model is None or has_spec_modules(model, spec):
                return spec
    if variants:
        raise ValueError(f"model: this {model_type!r} model matches none of its specs' conditions: "
                         + "; ".join(f"{s.name} needs {dict(s.when)}"
                                     + (f" and the modules {list(s.when_modules)} in its blocks" if s.when_modules
                                        else "") for s in variants))
    if model_type in REFUSED:
        raise ValueError(f"model: masked_dora cannot prune a {model_type!r} model exactly: {REFUSED[model_type]}")
    known = sorted({t for s in SPECS.values() for t in s.model_types})
    msg = f"model: no masked_dora spec for model_type {model_type!r} (known: {known}). "
    like = matching_specs(model_or_config) if isinstance(model_or_config, nn.Module) else []
    if like:
        msg += (f"Its modules are laid out like the {like[0]!r} spec: masked_dora.register_spec({model_type!r}, "
                f"like={like[0]!r}) adds it (then check that the compacted model equals the masked one, as the "
                f"tests of the shipped families do).")
    else:
        msg += ("A spec names the block list (e.g. 'model.layers'), the MLP producers/consumer and its size key, "
                "and the attention q/k/v/o projections with their head-count keys: masked_dora.register_spec("
                f"{model_type!r}, spec=ModelSpec(...)). A fused q/k/v or gate/up projection is expressible "
                "(MLPSpec(segments=...), "
                "HeadSpec(qkv=..., qkv_layout=...)), as are GPT-2's Conv1D layers and MoE experts packed into 3-D "
                "parameters (MLPSpec(experts=...), see the 'mixtral' spec).")
    raise ValueError(msg)


def _with_stages(spec: ModelSpec, config) -> ModelSpec:
    """A hierarchical encoder's spec (``stages``) as one stack per stage of ``config``
    (:func:`~masked_dora.models.stage_spec.expand_stages`); any other spec as it is."""
    if spec.stages is None or spec.stages.index >= 0:
        return spec
    return expand_stages(spec, stage_count(spec, config))


def _wrapped_spec_for(config, model_type: str, wrapper: WrapperSpec) -> ModelSpec:
    """The spec of a VLM: its language model's (by the text config's ``model_type``), wrapped."""
    inner = inner_spec(config, wrapper.text_config, model_type, "language model", spec_for)
    return _cached_wrap(model_type, wrapper, inner)


@functools.lru_cache(maxsize=None)
def _cached_wrap(model_type: str, wrapper: WrapperSpec, inner: ModelSpec) -> ModelSpec:
    """One spec object per (VLM, language model spec): code comparing specs by identity sees one family."""
    return wrap_spec(model_type, wrapper, inner)


def has_spec_modules(model: nn.Module, spec: ModelSpec) -> bool:
    """Whether the first block of ``model`` has every module of ``spec.when_modules`` (``True`` without any)."""
    if not spec.when_modules:
        return True
    from .blocks import find_layers

    try:
        _, layers = find_layers(model, spec)
    except ValueError:
        return False
    if not len(layers):
        return False
    names = {name for name, _ in layers[0].named_modules()}
    return all(path in names for path in spec.when_modules)


def matching_specs(model: nn.Module) -> list:
    """Names of the registered specs whose block list and group modules (all ``nn.Linear``) ``model`` has."""
    from .blocks import block_modules, find_layers, has_experts, is_conv1d, packed_experts

    names = []
    for name, spec in SPECS.items():
        if spec.stages is not None and spec.stages.index < 0:  # a hierarchical encoder: its first stage's blocks
            spec = expand_stages(spec, 1)
        try:
            _, layers = find_layers(model, spec)
            kinds = BLOCK_KINDS
            if spec.mlp.experts:  # packed expert parameters, not modules, before prepare_model; in a block that has
                # them (DeepSeek-V3's first blocks are dense)
                layers = [layer for layer in layers if has_experts(layer, spec)][:1]
                if layers:
                    packed_experts(layers[0], spec)
                kinds = ("heads",)
            mods = block_modules(layers[0], spec, kinds) if len(layers) else {}
        except ValueError:
            continue
        if mods and all(isinstance(m, nn.Linear) or is_conv1d(m) for roles in mods.values() for m in roles.values()):
            names.append(name)
    return names


def register_spec(model_type: str, like: Optional[str] = None, spec: Optional[ModelSpec] = None,
                  *, replace: bool = False) -> ModelSpec:
    """Teach masked_dora a model family: ``like=`` an existing spec's name (the family's module names and
    config keys are that spec's), or a full ``spec=ModelSpec(...)``. Returns the registered spec.

    ``model_type`` is the config's ``model_type``. A type that already has a spec is refused unless
    ``replace=True``. The registration lasts for the process (call it before ``prepare_model`` and before
    ``load_compact``).
    """
    if not isinstance(model_type, str) or not model_type:
        raise TypeError(f"model_type: expected a non-empty str, got {model_type!r}")
    if (like is None) == (spec is None):
        raise ValueError("register_spec: give exactly one of like= (an existing spec's name) or spec= (a ModelSpec)")
    if like is not None:
        if like in RENAMED_SPECS:
            import warnings

            warnings.warn(f"like: the spec {like!r} is now {RENAMED_SPECS[like]!r} (it prunes the decoder stack too; "
                          f"MaskedDoRAConfig(stacks=('encoder',)) prunes the encoder alone)", DeprecationWarning,
                          stacklevel=2)
            like = RENAMED_SPECS[like]
        if like not in SPECS:
            raise ValueError(f"like: expected one of {sorted(SPECS)}, got {like!r}")
        spec = replace_dataclass(SPECS[like], name=model_type, model_types=(model_type,))
    elif not isinstance(spec, ModelSpec):
        raise TypeError(f"spec: expected a ModelSpec, got {type(spec).__name__}")
    elif model_type not in spec.model_types:
        spec = replace_dataclass(spec, model_types=tuple(spec.model_types) + (model_type,))
    owners = [n for n, s in SPECS.items() if model_type in s.model_types]  # several where configs pick a variant
    if owners and not replace:
        raise ValueError(f"model_type: {model_type!r} already has the spec {' / '.join(owners)}; pass replace=True "
                         f"to override it")
    for owner in owners:
        old = SPECS[owner]
        SPECS[owner] = replace_dataclass(old, model_types=tuple(t for t in old.model_types if t != model_type))
    if spec.name in SPECS and spec.name not in owners and not replace:
        raise ValueError(f"spec.name: {spec.name!r} is already registered; pick another name or replace=True")
    SPECS[spec.name] = spec
    return spec

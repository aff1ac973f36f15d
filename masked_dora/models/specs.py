"""Declarative specs: which modules of a model family form which coupled pruning group.

A spec names, relative to one transformer block, the producers (layers whose
output rows a group removes) and the consumer (the layer whose input columns
go with them), the config keys that hold the group's size, and the module
attributes that must follow a per-layer size change. Nothing here is code per
model: adding a family is adding a table entry (see ``SPECS``).

Groups (DESIGN.md, "Coupled structure"):

* ``mlp``: one channel of the MLP's inner width; rows of ``producers``
  (``gate_proj``/``up_proj``, ``fc1``/``intermediate.dense``), columns of the
  ``consumer`` (``down_proj``/``output.dense``). A pruned channel is exactly 0 at
  the consumer's input because every producer is gated and the activations of
  these families map 0 to 0 (SiLU, GELU, ReLU).
* ``heads``: attention heads; rows of ``query``/``key``/``value`` in head-sized
  blocks, columns of ``output``. With GQA (fewer KV heads than query heads) a KV
  head takes its query heads along (``gqa="kv_groups"``: whole KV groups go), or
  the same number of query heads goes inside every group (``gqa="query_heads"``:
  KV heads stay). A KV head's dims are never split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from torch import nn

GROUP_KINDS = ("mlp", "heads")


@dataclass(frozen=True)
class MLPSpec:
    """The MLP channel group of one block (module paths relative to the block)."""

    producers: Tuple[str, ...]
    consumer: str
    size_key: str  # config key of the inner width
    # attributes to set on a module when its block's width changes: (module path, attribute)
    size_attrs: Tuple[Tuple[str, str], ...] = ()


@dataclass(frozen=True)
class HeadSpec:
    """The attention-head group of one block (module paths relative to the block)."""

    query: str
    key: str
    value: str
    output: str
    heads_key: str  # config key of the number of query heads
    kv_heads_key: Optional[str] = None  # config key of the number of KV heads (None: no GQA in this family)
    head_dim_key: Optional[str] = None  # config key of an explicit head size (None: hidden // heads)
    attention: str = ""  # path of the attention module whose attributes follow the head counts
    # attribute -> quantity, quantity one of "heads", "kv_heads", "groups" (heads per KV head), "width"
    attrs: Tuple[Tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    """A model family: where its blocks are and what its groups are."""

    name: str
    model_types: Tuple[str, ...]
    layers: Tuple[str, ...]  # suffixes of the block ModuleList's qualified name, tried in order
    hidden_key: str
    mlp: MLPSpec
    heads: HeadSpec


LLAMA_STYLE = dict(
    layers=("layers",),
    hidden_key="hidden_size",
    mlp=MLPSpec(producers=("mlp.gate_proj", "mlp.up_proj"), consumer="mlp.down_proj",
                size_key="intermediate_size", size_attrs=(("mlp", "intermediate_size"),)),
    heads=HeadSpec(query="self_attn.q_proj", key="self_attn.k_proj", value="self_attn.v_proj",
                   output="self_attn.o_proj", heads_key="num_attention_heads",
                   kv_heads_key="num_key_value_heads", head_dim_key="head_dim", attention="self_attn",
                   attrs=(("num_key_value_groups", "groups"),)),
)

BERT_STYLE = dict(
    layers=("encoder.layer",),
    hidden_key="hidden_size",
    mlp=MLPSpec(producers=("intermediate.dense",), consumer="output.dense", size_key="intermediate_size"),
    heads=HeadSpec(query="attention.self.query", key="attention.self.key", value="attention.self.value",
                   output="attention.output.dense", heads_key="num_attention_heads",
                   attention="attention.self",
                   attrs=(("num_attention_heads", "heads"), ("all_head_size", "width"))),
)

DISTILBERT = dict(
    layers=("transformer.layer",),
    hidden_key="dim",
    mlp=MLPSpec(producers=("ffn.lin1",), consumer="ffn.lin2", size_key="hidden_dim"),
    heads=HeadSpec(query="attention.q_lin", key="attention.k_lin", value="attention.v_lin",
                   output="attention.out_lin", heads_key="n_heads", attention="attention",
                   attrs=(("n_heads", "heads"),)),
)

SPECS: Dict[str, ModelSpec] = {
    "llama": ModelSpec(name="llama", model_types=("llama", "mistral", "qwen2"), **LLAMA_STYLE),
    "bert": ModelSpec(name="bert", model_types=("bert", "roberta"), **BERT_STYLE),
    "distilbert": ModelSpec(name="distilbert", model_types=("distilbert",), **DISTILBERT),
}


def spec_for(model_or_config) -> ModelSpec:
    """The spec of a model (or config) by its ``config.model_type``; a clear error if there is none."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise TypeError(f"model: expected a transformers model or config with a model_type, "
                        f"got {type(model_or_config).__name__}")
    for spec in SPECS.values():
        if model_type in spec.model_types:
            return spec
    known = sorted(t for s in SPECS.values() for t in s.model_types)
    raise ValueError(
        f"model: no masked_dora spec for model_type {model_type!r} (known: {known}). A spec must name the "
        f"block list (e.g. 'model.layers'), the MLP producers/consumer and its size key, and the attention "
        f"q/k/v/o projections with their head-count keys; add a ModelSpec to masked_dora.models.specs.SPECS")


def _resolve(root: nn.Module, path: str, what: str) -> nn.Module:
    try:
        return root.get_submodule(path) if path else root
    except AttributeError as exc:
        raise ValueError(f"spec: {what} {path!r} is missing from {type(root).__name__}") from exc


def find_layers(model: nn.Module, spec: ModelSpec) -> Tuple[str, nn.ModuleList]:
    """The qualified name and the ModuleList of the model's transformer blocks."""
    for suffix in spec.layers:
        for name, module in model.named_modules():
            if isinstance(module, nn.ModuleList) and (name == suffix or name.endswith("." + suffix)):
                return name, module
    raise ValueError(f"spec {spec.name!r}: no block list named like {list(spec.layers)} in "
                     f"{type(model).__name__}")


@dataclass
class HeadLayout:
    """Head counts of one attention module: ``heads`` query heads, ``kv_heads`` KV heads of ``head_dim``."""

    heads: int
    kv_heads: int
    head_dim: int

    @property
    def group_size(self) -> int:
        return self.heads // self.kv_heads


def head_layout(config, spec: ModelSpec) -> HeadLayout:
    """The (uniform) head layout a config describes."""
    hs = spec.heads
    heads = getattr(config, hs.heads_key, None)
    if heads is None:
        raise ValueError(f"spec {spec.name!r}: config has no {hs.heads_key!r}")
    kv = getattr(config, hs.kv_heads_key, None) if hs.kv_heads_key else None
    kv = heads if kv is None else kv
    hd = getattr(config, hs.head_dim_key, None) if hs.head_dim_key else None
    if hd is None:
        hd = getattr(config, spec.hidden_key) // heads
    if heads % kv:
        raise ValueError(f"config: {hs.heads_key}={heads} is not a multiple of {hs.kv_heads_key}={kv}")
    return HeadLayout(int(heads), int(kv), int(hd))


def block_modules(block: nn.Module, spec: ModelSpec, kinds=GROUP_KINDS) -> Dict[str, Dict[str, nn.Module]]:
    """``{kind: {role: module}}`` for one block, every path checked."""
    return {kind: {role: _resolve(block, path, f"{kind} module") for role, path in role_paths(spec, kind).items()}
            for kind in kinds}


def role_paths(spec: ModelSpec, kind: str) -> Dict[str, str]:
    """``{role: path relative to the block}`` of a group kind."""
    if kind == "mlp":
        roles = {f"producer{i}": p for i, p in enumerate(spec.mlp.producers)}
        roles["consumer"] = spec.mlp.consumer
        return roles
    if kind == "heads":
        hs = spec.heads
        return {"query": hs.query, "key": hs.key, "value": hs.value, "output": hs.output}
    raise ValueError(f"kind: expected one of {GROUP_KINDS}, got {kind!r}")

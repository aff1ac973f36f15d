"""Reading a spec against a model: its block list, each block's group members, head layout and roles.

:mod:`masked_dora.models.specs` says *what* a family's groups are (declarative tables); this module finds
them in a model: the transformer blocks (:func:`find_layers`), the member modules of a group kind in one
block (:func:`block_modules`, by role: ``producer<i>``/``consumer`` for the MLP, ``query``/``key``/``value``
or ``qkv``/``output`` for the heads; an MoE block's roles carry ``_e<expert>``), the packed parameters of an
MoE block before ``prepare_model`` wraps them (:func:`packed_experts`), the head counts a config describes
(:func:`head_layout`; those a block was built with, :func:`built_head_layout`) and the per-head
modules (:func:`per_head_modules`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from dataclasses import replace as replace_dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .specs import BLOCK_KINDS, ModelSpec, PerHeadSpec


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2): a linear layer whose weight is stored transposed, (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and hasattr(module, "nx")


def features(module: nn.Module) -> Tuple[int, int]:
    """``(in_features, out_features)`` of an ``nn.Linear`` or a ``Conv1D``."""
    if is_conv1d(module):
        return int(module.nx), int(module.nf)
    return int(module.in_features), int(module.out_features)


def _resolve(root: nn.Module, path: str, what: str) -> nn.Module:
    try:
        return root.get_submodule(path) if path else root
    except AttributeError as exc:
        raise ValueError(f"spec: {what} {path!r} is missing from {type(root).__name__}") from exc


def stack_specs(spec: ModelSpec) -> Tuple[ModelSpec, ...]:
    """The family's block stacks, in order: ``spec`` itself, then ``spec.stacks`` (an encoder-decoder's decoder)."""
    return (spec,) + tuple(spec.stacks)


@dataclass(frozen=True)
class Block:
    """One transformer block of a model: its number across every stack (the groups' layer number), its qualified
    name, the module and its stack's spec."""

    index: int
    path: str
    module: nn.Module
    spec: ModelSpec


def model_blocks(model: nn.Module, spec: ModelSpec, stacks: Optional[Sequence[str]] = None) -> List[Block]:
    """Every block of ``model``, stack after stack (the first stack is required; a further one the model lacks,
    such as T5EncoderModel's decoder, is skipped). ``stacks``: the names of the stacks to return (``None``:
    all); the indices count every stack the model has either way, so a block keeps its number."""
    blocks = []
    for i, stack in enumerate(stack_specs(spec)):
        try:
            path, layers = find_layers(model, stack)
        except ValueError:
            if i == 0:
                raise
            continue
        start = len(blocks)
        blocks += [Block(start + j, f"{path}.{j}", b, block_spec(b, stack)) for j, b in enumerate(layers)]
    return [b for b in blocks if stacks is None or b.spec.stack in stacks]


def block_spec(block: nn.Module, spec: ModelSpec) -> ModelSpec:
    """The spec of one block of ``spec``'s stack: ``spec``, or for a block without ``spec.heads``'s query module
    under a spec with ``heads_elsewhere`` (Mllama's cross-attention layers), its variant with those heads, and for
    a dense block of an MoE family with a ``dense_mlp``, its dense variant (the same object for every such block)."""
    if spec.heads_elsewhere is not None and not _exists(block, spec.heads.query):
        spec = _heads_elsewhere_variant(spec)
    if spec.dense_mlp is None or has_experts(block, spec):
        return spec
    return _dense_variant(spec)


@functools.lru_cache(maxsize=None)
def _dense_variant(spec: ModelSpec) -> ModelSpec:
    return replace_dataclass(spec, name=f"{spec.name}-dense", mlp=spec.dense_mlp, dense_mlp=None)


@functools.lru_cache(maxsize=None)
def _heads_elsewhere_variant(spec: ModelSpec) -> ModelSpec:
    return replace_dataclass(spec, name=f"{spec.name}-{spec.heads_elsewhere.attention or 'heads-elsewhere'}",
                             heads=spec.heads_elsewhere, heads_elsewhere=None)


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


def layer_config(config, layer: Optional[int]):
    """The config of block ``layer``: a heterogeneous config (transformers' ``per_layer_config``, ``is_heterogeneous``:
    Gemma 4's full-attention layers have their own ``head_dim`` and ``num_key_value_heads``) gives its per-layer
    values only through ``config.per_layer_config[layer]`` (the global attribute raises); any other config is every
    layer's.
    ``layer``: the block's number (:class:`Block.index`; heterogeneous configs have one stack), or ``None`` for
    the global values."""
    heterogeneous = layer is not None and getattr(config, "is_heterogeneous", False)
    return config.per_layer_config[layer] if heterogeneous else config


def head_layout(config, spec: ModelSpec, layer: Optional[int] = None) -> HeadLayout:
    """The head layout a config describes for block ``layer`` (a VLM's: its text config's,
    ``ModelSpec.sized_config``; see :func:`layer_config`; ``None``: the uniform layout of a config whose layers all
    have it)."""
    config = layer_config(spec.sized_config(config), layer)
    hs = spec.heads
    heads = getattr(config, hs.heads_key, None)
    if heads is None:
        raise ValueError(f"spec {spec.name!r}: config has no {hs.heads_key!r}")
    kv = getattr(config, hs.kv_heads_key, None) if hs.kv_heads_key else None
    kv = hs.fixed_kv_heads or (heads if kv is None else kv)
    hd = getattr(config, hs.head_dim_key, None) if hs.head_dim_key else None
    if hd is None:
        hd = getattr(config, spec.hidden_key) // heads
    if heads % kv:
        raise ValueError(f"config: {hs.heads_key}={heads} is not a multiple of {hs.kv_heads_key}={kv}")
    return HeadLayout(int(heads), int(kv), int(hd))


LAYER_SIZES_KEY = "masked_dora_layer_sizes"
"""The config key of a per-layer checkpoint (:func:`~masked_dora.models.compact.compact_model`): per block, in
:func:`model_blocks` order, ``{"intermediate", "heads", "kv_heads", "head_dim"}`` (``"hidden"`` too under
``hidden_mode="per_block"``), the sizes :func:`~masked_dora.models.load_compact` builds each block with."""


def built_head_layout(config, spec: ModelSpec, layer: int) -> HeadLayout:
    """The head layout block ``layer`` (:class:`Block.index`) was built with: the config's (:func:`head_layout`),
    or, in a model loaded from a per-layer checkpoint, the counts its config's :data:`LAYER_SIZES_KEY` lists
    for that block (its blocks were built with those, whatever the config's keys say: a checkpoint whose heads
    were pruned keeps 2 of the config's 4). A checkpoint of the first stack alone lists only that stack's
    blocks; the others are built as the config says."""
    hl = head_layout(config, spec, layer)
    listed = getattr(config, LAYER_SIZES_KEY, None) or []
    if layer >= len(listed):
        return hl
    entry = listed[layer]
    return HeadLayout(int(entry.get("heads", hl.heads)), int(entry.get("kv_heads", hl.kv_heads)),
                      int(entry.get("head_dim", hl.head_dim)))


def per_head_modules(block: nn.Module, spec: ModelSpec, config) -> List[Tuple[PerHeadSpec, nn.Module]]:
    """The per-head modules (``HeadSpec.per_head``) that a block of a model with ``config`` has, paths checked."""
    return [(entry, _resolve(block, entry.path, "per-head module")) for entry in spec.heads.per_head
            if entry.built_by(spec.sized_config(config))]


def per_head_counts(entry: PerHeadSpec, module: nn.Module, head_dim: int) -> List[float]:
    """How many heads ``module`` holds, as its layout says: its ModuleList's length, or dim ``entry.dim`` of each
    parameter (over ``head_dim`` with ``entry.head_rows``; a fraction where a head's rows are cut)."""
    if entry.modules:
        return [len(getattr(module, entry.modules))]
    per = entry.entries_per_head(head_dim)
    counts = [int(p.shape[entry.dim]) if p.dim() > entry.dim else 0 for p in module.parameters(recurse=False)]
    return [n // per if n % per == 0 else n / per for n in counts]


def check_per_head_modules(block: nn.Module, spec: ModelSpec, config, where: str, layer: int) -> None:
    """Raise unless every per-head module of ``block`` (number ``layer``) holds one entry per head (query or KV, as
    it follows)."""
    hl = built_head_layout(config, spec, layer)
    for entry, module in per_head_modules(block, spec, config):
        expected = getattr(hl, entry.follows)
        counts = per_head_counts(entry, module, hl.head_dim)
        if not counts or any(n != expected for n in counts):
            what = (f"modules in .{entry.modules}" if entry.modules else
                    f"heads of {hl.head_dim} rows (dim {entry.dim} of its parameters)" if entry.head_rows else
                    f"rows (dim {entry.dim} of its parameters)")
            raise ValueError(f"spec {spec.name!r}: {where}.{entry.path} holds {counts} {what}; expected {expected}, "
                             f"one per {'query' if entry.follows == 'heads' else 'KV'} head")


def block_modules(block: nn.Module, spec: ModelSpec, kinds=BLOCK_KINDS) -> Dict[str, Dict[str, nn.Module]]:
    """``{kind: {role: module}}`` for one block, every path checked (a prepared block, for MoE experts: before
    ``prepare_model`` they are packed parameters, see :func:`packed_experts`)."""
    experts = num_experts(block, spec) if "mlp" in kinds else 0
    return {kind: {role: _resolve(block, path, f"{kind} module")
                   for role, path in role_paths(spec, kind, experts).items()}
            for kind in kinds}


def num_experts(block: nn.Module, spec: ModelSpec) -> int:
    """The number of experts in ``block``'s MoE module (0 for a dense MLP)."""
    if not spec.mlp.experts:
        return 0
    experts = _resolve(block, spec.mlp.experts, "mlp experts module")
    count = getattr(experts, "num_experts", None)
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"spec {spec.name!r}: the experts module {spec.mlp.experts!r} "
                         f"({type(experts).__name__}) has no positive num_experts")
    return count


def owner_of(root: nn.Module, path: str) -> Tuple[nn.Module, str]:
    """``(module, name)``: the module below ``root`` that holds the attribute at the dotted ``path`` (``root``
    itself for a plain name) and the attribute's name in it. ``AttributeError`` where a module on the way is
    missing."""
    owner, _, name = path.rpartition(".")
    return (root.get_submodule(owner) if owner else root), name


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``path`` below ``root`` (replacing what is there)."""
    owner, name = owner_of(root, path)
    setattr(owner, name, module)


def dotted_attr(module: nn.Module, name: str):
    """The attribute ``name`` of ``module`` (a parameter, an activation), a dotted path below it (DBRX's
    ``mlp.w1``); ``None`` if missing."""
    try:
        owner, attr = owner_of(module, name)
    except AttributeError:
        return None
    return getattr(owner, attr, None)


def packed_experts(block: nn.Module, spec: ModelSpec) -> Tuple[nn.Module, Tuple[Tensor, ...], Tensor]:
    """``(experts module, (packed producer weights...), packed consumer weight)`` of an unprepared MoE block, as
    stored (``MLPSpec.experts_layout``: (experts, out, in), or (experts, in, out) where ``transposed``; 2-D
    (experts * rows, cols) where ``flat``; the ``up`` parameter after the producers); checked against the layout
    (the weights' dims, the biases it names, the module's own layout flags where it has them)."""
    module = _resolve(block, spec.mlp.experts, "mlp experts module")
    layout = spec.mlp.experts_layout
    names = tuple(spec.mlp.producers) + ((layout.up,) if layout.up else ()) + (spec.mlp.consumer,)
    weights = [dotted_attr(module, name) for name in names]
    order = "(experts, in, out)" if layout.transposed else "(experts, out, in)"
    order = "(experts * rows, cols)" if layout.flat else order
    for name, w in zip(names, weights):
        if not isinstance(w, Tensor) or w.dim() != (2 if layout.flat else 3):
            raise ValueError(f"spec {spec.name!r}: expected a packed {2 if layout.flat else 3}-D parameter {name!r} "
                             f"{order} on {type(module).__name__}, got {type(w).__name__}")
    # transformers' newer experts modules say their layout (is_transposed, has_bias, is_concatenated)
    declared = {"is_transposed": layout.transposed, "has_bias": layout.bias, "is_concatenated": not layout.interleaved}
    differs = {k: getattr(module, k) for k, want in declared.items() if hasattr(module, k) and
               bool(getattr(module, k)) != want}
    if differs:
        raise ValueError(f"spec {spec.name!r}: expected experts stored {order}, "
                         f"{'with' if layout.bias else 'without'} bias, gate/up "
                         f"{'interleaved' if layout.interleaved else 'concatenated [gate | up]'} (the spec's "
                         f"experts_layout); {type(module).__name__} has {differs}")
    *producers, down = (per_expert(module, spec, w, consumer=i == len(weights) - 1) for i, w in enumerate(weights))
    gate_up_rows = sum(w.shape[1] for w in producers)
    if (gate_up_rows != spec.mlp.segments_of(0) * down.shape[2] or any(w.shape[2] != down.shape[1] for w in producers)
            or len({w.shape for w in producers}) != 1):
        raise ValueError(f"spec {spec.name!r}: {names[0]!r} {tuple(weights[0].shape)} and {names[-1]!r} "
                         f"{tuple(weights[-1].shape)} on {type(module).__name__} do not pair as {order} packed "
                         f"[gate | up] and down projections (is the spec's experts_layout the module's?)")
    expert_biases(module, spec)  # checked
    return module, tuple(weights[:-1]), weights[-1]


def expert_matrices(module: nn.Module, spec: ModelSpec, weights: Sequence[Tensor]) -> Tuple[Tensor, Tensor]:
    """``(gate_up (experts, 2I, H), down (experts, H, I))``, each expert's (out, in) matrices, of the stored
    ``weights`` (:func:`packed_experts`' order: producer, ``up`` where the layout has one, consumer): views, but
    for a separate ``up``, whose gate and up rows are stacked into a copy."""
    *producers, down = weights
    producers = [per_expert(module, spec, w, consumer=False) for w in producers]
    gate_up = torch.cat(producers, dim=1) if spec.mlp.experts_layout.up else producers[0]
    return gate_up, per_expert(module, spec, down, consumer=True)


def per_expert(module: nn.Module, spec: ModelSpec, weight: Tensor, consumer: bool) -> Tensor:
    """A stored packed parameter as each expert's (out, in) matrices, (experts, out, in): a view."""
    layout = spec.mlp.experts_layout
    if layout.flat:  # (experts * rows, cols): each expert's block of rows
        count = int(module.num_experts)
        weight = weight.view(count, weight.shape[0] // count, weight.shape[1])
    return weight.transpose(1, 2) if layout.transposed or (consumer and layout.down_transposed) else weight


def expert_biases(module: nn.Module, spec: ModelSpec) -> Tuple[Optional[Tensor], ...]:
    """The packed biases ``<name>_bias`` (experts, out) of the producers and the consumer of an unprepared experts
    module (``None`` each where ``MLPSpec.experts_layout`` has no bias); a dotted name's bias beside its parameter
    (``inner.gate_up_proj_bias``), as compaction writes it."""
    names = tuple(spec.mlp.producers) + (spec.mlp.consumer,)
    if not spec.mlp.experts_layout.bias:
        return (None,) * len(names)
    biases = tuple(dotted_attr(module, f"{name}_bias") for name in names)
    for name, b in zip(names, biases):
        if not isinstance(b, Tensor) or b.dim() != 2:
            raise ValueError(f"spec {spec.name!r}: expected a packed 2-D parameter {name + '_bias'!r} (experts, out) "
                             f"on {type(module).__name__} (experts_layout.bias), got {type(b).__name__}")
    return biases


def is_consumer_role(role: str) -> bool:
    """The MLP group's consumer role (``"consumer"``, or ``"consumer_e<e>"`` for expert ``e``)."""
    return role == "consumer" or role.startswith("consumer_e")


def expert_index(role: str) -> int:
    """The expert of an MoE member role (``"..._e<e>"``); 0 for a dense MLP's roles."""
    return int(role.rpartition("_e")[2]) if "_e" in role else 0


def has_experts(block: nn.Module, spec: ModelSpec) -> bool:
    """Whether ``block`` holds the spec's MoE experts module (Qwen3-MoE's ``mlp_only_layers`` hold a dense MLP)."""
    try:
        return bool(spec.mlp.experts) and block.get_submodule(spec.mlp.experts) is not None
    except AttributeError:
        return False


def holds_spec_mlp(block: nn.Module, spec: ModelSpec) -> bool:
    """Whether ``block``'s MLP is the one its spec describes: for a dense spec, always, or under
    ``MLPSpec.in_some_blocks`` where its producers and consumer exist (raises where only some do); for an MoE
    spec, a block with the experts (a dense block under a spec without ``dense_mlp``, whose MLP is never pruned,
    does not; a dense block's ``dense_mlp`` variant does)."""
    if spec.mlp.in_some_blocks:
        paths = role_paths(spec, "mlp")
        missing = [path for path in paths.values() if not _exists(block, path)]
        if missing and len(missing) < len(paths):
            raise ValueError(f"spec {spec.name!r}: a {type(block).__name__} has the MLP's "
                             f"{sorted(set(paths.values()) - set(missing))} but not {missing}")
        return not missing
    return not spec.mlp.experts or has_experts(block, spec)


def block_refusal(block: nn.Module, spec: ModelSpec, kind: str) -> Optional[str]:
    """Why ``spec.block_refusals`` keeps ``kind`` whole in ``block`` (``None``: it does not): the reason of the
    first entry of that kind whose attributes (terms joined by ``&``) are all truthy in this block. An attribute
    the block lacks is an error (the spec no longer describes this transformers' modules; pruning on would not be
    exact)."""
    for k, terms, reason in spec.block_refusals:
        if k == kind and all(_block_attribute(block, spec, term, kind) for term in terms.split("&")):
            return reason
    return None


def _block_attribute(block: nn.Module, spec: ModelSpec, path: str, kind: str):
    """The value at the dotted ``path`` from ``block``, attribute after attribute (``self_attn.config.x``: the
    attention's config's ``x``)."""
    value = block
    for name in path.split("."):
        if not hasattr(value, name):
            raise ValueError(f"spec {spec.name!r}: {type(value).__name__} has no attribute {name!r} (of {path!r} "
                             f"from a {type(block).__name__}), which the spec's block_refusals reads for {kind!r}")
        value = getattr(value, name)
    return value


def holds_group(block: nn.Module, spec: ModelSpec, kind: str) -> bool:
    """Whether ``block`` has a group of ``kind`` (``"mlp"`` or ``"heads"``) that ``prepare_model`` builds where
    the kind is targeted: the MLP where the block holds it (:func:`holds_spec_mlp`), the heads where no other
    stack's groups prune its attention (``ModelSpec.attention_of``); either, unless ``spec.block_refusals`` keeps
    it whole in this block (:func:`block_refusal`)."""
    holds = holds_spec_mlp(block, spec) if kind == "mlp" else not spec.attention_of
    return holds and block_refusal(block, spec, kind) is None


def _exists(block: nn.Module, path: str) -> bool:
    try:
        block.get_submodule(path)
        return True
    except AttributeError:
        return False


def mlp_width(block: nn.Module, spec: ModelSpec) -> int:
    """The MLP's inner width in ``block`` (one expert's, for an MoE block, prepared or not)."""
    if spec.mlp.experts:
        module = _resolve(block, spec.mlp.experts, "mlp experts module")
        consumer = dotted_attr(module, spec.mlp.consumer)
        if isinstance(consumer, Tensor):  # packed, as the layout stores it
            return int(per_expert(module, spec, consumer, consumer=True).shape[2])
        return int(module.intermediate_dim)  # wrapped (MaskedDoRAExperts)
    return features(block_modules(block, spec, ("mlp",))["mlp"]["consumer"])[0]


def depthwise_modules(block: nn.Module, spec: ModelSpec) -> List[nn.Module]:
    """The MLP's depthwise convolutions between its producers and its consumer (``MLPSpec.depthwise``), paths
    checked."""
    return [_resolve(block, path, "mlp depthwise convolution") for path in spec.mlp.depthwise]


def check_depthwise_modules(block: nn.Module, spec: ModelSpec, where: str) -> None:
    """Raise unless every ``MLPSpec.depthwise`` module of ``block`` is a convolution with one filter per MLP channel
    (``groups == in_channels == out_channels ==`` the MLP's width): only then is channel c of the group its
    channel c alone, so that cutting a channel's filter leaves the others' outputs as they were."""
    width = mlp_width(block, spec)
    for path, conv in zip(spec.mlp.depthwise, depthwise_modules(block, spec)):
        sizes = tuple(getattr(conv, k, None) for k in ("groups", "in_channels", "out_channels"))
        if not isinstance(conv, nn.modules.conv._ConvNd) or sizes != (width,) * 3:
            raise ValueError(f"spec {spec.name!r}: {where}.{path} should be a depthwise convolution over the MLP's "
                             f"{width} channels (groups, in_channels, out_channels all {width}), got "
                             f"{type(conv).__name__} with {sizes}")


def producer_index(role: str) -> int:
    """The spec's producer number of a producer role (``"producer<i>"`` or ``"producer<i>_e<e>"``)."""
    return int(role[len("producer"):].split("_")[0])


def role_paths(spec: ModelSpec, kind: str, experts: int = 0) -> Dict[str, str]:
    """``{role: path relative to the block}`` of a group kind (``experts``: the block's expert count, for an
    MoE spec: roles ``producer<i>_e<e>`` and ``consumer_e<e>`` per expert)."""
    if kind == "mlp":
        if spec.mlp.experts:  # the layers of a prepared block's MaskedDoRAExperts
            roles = {}
            for e in range(experts):
                roles[f"producer0_e{e}"] = f"{spec.mlp.experts}.gate_up.{e}"
                roles[f"consumer_e{e}"] = f"{spec.mlp.experts}.down.{e}"
            return roles
        roles = {f"producer{i}": p for i, p in enumerate(spec.mlp.producers)}
        roles["consumer"] = spec.mlp.consumer
        return roles
    if kind == "heads":
        hs = spec.heads
        if hs.qkv:
            return {"qkv": hs.qkv, "output": hs.output}
        return {"query": hs.query, "key": hs.key, "value": hs.value, "output": hs.output}
    if kind == "hidden":  # the residual stream's writers in a block (their output rows are gated)
        return {"attn_writer": spec.heads.output, "mlp_writer": spec.mlp.consumer}
    raise ValueError(f"kind: expected one of {BLOCK_KINDS + ('hidden',)}, got {kind!r}")

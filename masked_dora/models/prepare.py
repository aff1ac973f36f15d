"""``prepare_model``: wrap the coupled groups of a transformers model in masked DoRA.

Every member of a targeted group (producers *and* consumers) becomes a
:class:`~masked_dora.nn.MaskedDoRALinear` sharing the original weight; every
other parameter is frozen. Each group gets one :class:`GroupMask`; producers
read their ``z`` from it, consumers keep an all-ones mask of their own (their
columns go at compaction). Everything the library adds lives under
``model.masked_dora`` (a :class:`MaskedDoRAState`).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..nn import ClampedGLU, ClampedSwiGLU, MaskedDoRAExperts, MaskedDoRALinear
from ..nn.base_weight import dequantize_weight, quantized_weight_reason
from ..nn.quantized_base import QuantizedBaseDoRALinear, is_quantized_linear
from .blocks import (Block, HeadLayout, block_modules, block_refusal, built_head_layout, check_depthwise_modules,
                     check_per_head_modules, dotted_attr, expert_biases, expert_index, expert_matrices, features,
                     has_experts, holds_group, holds_spec_mlp, is_consumer_role, is_conv1d, mlp_width, model_blocks,
                     num_experts, packed_experts, producer_index, role_paths, stack_specs)
from .config import MaskedDoRAConfig
from .group_mask import ALWAYS_KEPT, ForwardMasks, GroupMask, InputGate, MaskView
from .specs import BLOCK_KINDS, QKV_LAYOUTS, HeadSpec, ModelSpec, spec_for

STATE_ATTR = "masked_dora"


class MaskedDoRAState(nn.Module):
    """What ``prepare_model`` adds to a model: the group masks and the settings that built them."""

    def __init__(self, config: MaskedDoRAConfig, spec: ModelSpec):
        super().__init__()
        self.config, self.spec = config, spec
        self.groups = nn.ModuleDict()
        # set by compact_for_training: the pruned units have left the model (training at the kept size), and
        # the hardened masks it removed them by (what save_training_state records)
        self.compacted_for_training = False
        self.compaction_masks: Optional[Dict[str, Tensor]] = None
        # budget="exact": the fraction of the target sparsity the per-forward plan applies now (the gradual
        # warm-up's schedule sets it, MaskTrainer.begin_step); hardening always applies the whole target
        self.plan_progress = 1.0
        # every block's sizes as the model's config builds it (compact_model's reference, whatever
        # compact_for_training has removed since; compact.config_block_sizes): set by prepare_model
        self.built_sizes: Optional[List[Dict[str, int]]] = None

    def blocks(self, model: nn.Module) -> List[Block]:
        """The blocks of ``model`` whose groups this state holds (``config.stacks``), numbered across stacks."""
        return model_blocks(model, self.spec, self.config.stacks)

    def group(self, kind: str, layer: int) -> GroupMask:
        return self.groups[f"{kind}_{layer}"]

    def groups_of(self, kind: str) -> List[GroupMask]:
        return [g for g in self.groups.values() if g.kind == kind]

    def set_temperature(self, value: float) -> None:
        for g in self.groups.values():
            g.gate.set_temperature(value)

    def exact_plan(self) -> Dict[str, Tensor]:
        """``budget="exact"``: the masks :func:`~masked_dora.models.harden` would take from the current logits.

        Planned again only when a logit tensor changed (an optimizer step bumps its version counter), so
        once per step however many forwards (gradient accumulation, evaluation, generation), and never
        again once training stops.
        """
        key = tuple((k, g.mask_logits._version, g.mask_logits.data_ptr()) for k, g in self.groups.items())
        key += (self.plan_progress,)
        if getattr(self, "_plan_key", None) != key:
            from .sparsity import plan_current

            self._plan, self._plan_key = plan_current(self, self.plan_progress), key
        return self._plan


def get_state(model: nn.Module) -> MaskedDoRAState:
    state = getattr(model, STATE_ATTR, None)
    if not isinstance(state, MaskedDoRAState):
        raise ValueError("model: expected a model prepared with masked_dora.prepare_model "
                         f"(no {STATE_ATTR!r} attribute on {type(model).__name__})")
    return state


def is_prepared(model: nn.Module) -> bool:
    return isinstance(getattr(model, STATE_ATTR, None), MaskedDoRAState)


def _replace(block: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = block.get_submodule(parent_path) if parent_path else block
    setattr(parent, name, new)


def _layer_kwargs(config: MaskedDoRAConfig, weight: Tensor) -> dict:
    """The masked-DoRA settings of a member layer with ``weight`` (out, in; or experts, out, in)."""
    return dict(rank=min(config.rank, *weight.shape[-2:]), alpha=config.alpha, use_rslora=config.use_rslora,
                gate=config.gate, mask_init=config.mask_init, lora_dropout=config.lora_dropout,
                dropout_mode=config.dropout_mode)


def _wrap(block: nn.Module, path: str, module: nn.Module, config: MaskedDoRAConfig, where: str) -> MaskedDoRALinear:
    if isinstance(module, MaskedDoRALinear):
        return module
    conv1d = is_conv1d(module)
    if conv1d:  # GPT-2's transposed-weight linear layer: the same map as an nn.Linear
        linear = nn.Linear(module.nx, module.nf, device=module.weight.device, dtype=module.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(module.weight.t())
            linear.bias.copy_(module.bias)
        module = linear
    if is_quantized_linear(module):  # QLoRA-style: the quantized module stays the base, whole
        shape = torch.empty(module.out_features, module.in_features, device="meta")
        layer = QuantizedBaseDoRALinear.from_quantized(module, **_layer_kwargs(config, shape))
        layer.from_conv1d = False
        _replace(block, path, layer)
        return layer
    if not isinstance(module, nn.Linear):
        raise TypeError(f"model: expected an nn.Linear at {where}.{path}, got {type(module).__name__} "
                        f"(merge or unload other adapters first; for PEFT DoRA use masked_dora.from_peft)")
    layer = MaskedDoRALinear.from_linear(module, **_layer_kwargs(config, module.weight))
    layer.from_conv1d = conv1d  # the base model's layer stores its weight transposed (export_peft: fan_in_fan_out)
    _replace(block, path, layer)
    return layer


def _keep_all(layer: MaskedDoRALinear) -> None:
    """A member that is not gated (consumer, or K/V kept whole): plain DoRA, its own logits frozen."""
    layer.set_mask(torch.ones(layer.out_features, dtype=torch.bool))
    layer.mask_logits.requires_grad_(False)


def _wrap_experts(block, spec, config) -> None:
    """Replace an MoE block's experts module by a :class:`MaskedDoRAExperts` sharing its packed weights (copying
    them where they are stored transposed, or gate and up apart), in the layout ``spec.mlp.experts_layout`` says."""
    module, producers, consumer = packed_experts(block, spec)
    layout = spec.mlp.experts_layout
    gate_up, down = expert_matrices(module, spec, producers + (consumer,))
    gate_up_bias, down_bias = expert_biases(module, spec)
    experts = MaskedDoRAExperts.from_packed(gate_up, down, gate_up_bias=gate_up_bias, down_bias=down_bias,
                                            interleaved=layout.interleaved, **_expert_activation(module, layout),
                                            **_layer_kwargs(config, down))
    _replace(block, spec.mlp.experts, experts)


def _expert_activation(module, layout) -> dict:
    """How the experts ``module`` combines gate and up (``layout.glu``), as MaskedDoRAExperts' act_fn / glu."""
    if layout.glu == "act":
        return dict(act_fn=dotted_attr(module, layout.act_fn))
    if layout.glu == "act_pair":  # the module's act_fn(gate, up) combines them itself
        return dict(act_fn=None, glu=dotted_attr(module, layout.act_fn))
    if layout.glu == "clamped_swiglu":
        return dict(act_fn=None, glu=ClampedSwiGLU(module.alpha, module.limit))
    from transformers.activations import ACT2FN

    act_fn = ACT2FN[layout.act] if layout.act else dotted_attr(module, layout.act_fn)
    return dict(act_fn=None, glu=ClampedGLU(act_fn, getattr(module, layout.limit_attr),
                                            clamp_after_act=layout.glu == "act_clamped"))


def _channels_of_rows(width: int, rows: int, interleaved: bool) -> Tensor:
    """The channel of each of a member's ``rows`` (output rows of a producer, input columns of the consumer):
    ``rows // width`` segments of ``width`` stacked ([gate | up]), or interleaved (gate c, up c, ...)."""
    if interleaved:
        return torch.arange(width).repeat_interleave(rows // width)
    return torch.arange(width).repeat(rows // width)


def _mlp_group(block, i, spec, config, where) -> GroupMask:
    """One group per block: the MLP's channels (units: channel c of expert e is unit e * width + c for an MoE
    block, whose experts are the group's partitions: each keeps the same count)."""
    if spec.mlp.experts and not isinstance(block.get_submodule(spec.mlp.experts), MaskedDoRAExperts):
        _wrap_experts(block, spec, config)
    mods = block_modules(block, spec, ("mlp",))["mlp"]
    experts = num_experts(block, spec)
    paths = role_paths(spec, "mlp", experts)
    width = mlp_width(block, spec)
    for role, m in mods.items():
        segments = 1 if is_consumer_role(role) else spec.mlp.segments_of(producer_index(role))
        size = features(m)[0 if is_consumer_role(role) else 1]
        if size != width * segments:
            raise ValueError(f"model: {where}.{paths[role]} has {size} channels, the MLP group expects "
                             f"{width * segments}")
    # a fused producer stacks segments: row r of it is channel r mod width (r // 2 where interleaved); expert e's
    # channels follow e's
    interleaved = spec.mlp.experts_layout.interleaved
    roles = {role: _channels_of_rows(width, features(m)[0 if is_consumer_role(role) else 1], interleaved)
             + width * expert_index(role) for role, m in mods.items()}
    group = GroupMask("mlp", i, width * max(1, experts), roles, gate=config.gate, mask_init=config.mask_init,
                      partitions=max(1, experts), tied=config.mask_learning == "layer")
    for role, m in mods.items():
        layer = _wrap(block, paths[role], m, config, where)
        if is_consumer_role(role):
            _keep_all(layer)
            if spec.mlp.gate_consumer_input:  # the activation maps 0 elsewhere: cut a pruned channel here too
                layer.register_forward_pre_hook(InputGate(group, role))
        else:
            layer.set_mask_source(MaskView(group, role))
    return group


def _head_units(heads_spec: HeadSpec, hl: HeadLayout, by_kv: bool) -> Dict[str, Tensor]:
    """``{role: unit index of each channel}`` of the head group: the q/k/v rows and the output's input columns.

    Units are KV heads (``by_kv``: a KV head's query heads, key and value go with it) or query heads (the
    key and value rows stay, :data:`ALWAYS_KEPT` where they share a fused projection with gated q rows;
    separate k/v projections are no member of the group). A fused projection's rows are ordered by its
    ``qkv_layout``: ``"blocks"`` [q | k | v]; ``"grouped"``, per KV head [its query heads | k | v];
    ``"per_head"``, the grouped order with one query head per KV head ([q_h k_h v_h]); ``"chunked"``, per chunk
    of heads [its q | its k | its v] (whatever the order of the three: their rows are the same heads').
    """
    hd, gs = hl.head_dim, hl.group_size
    q_head = torch.arange(hl.heads * hd) // hd  # the query head of each q row, and of each output column
    q_unit = q_head // gs if by_kv else q_head
    kv_unit = torch.arange(hl.kv_heads * hd) // hd if by_kv else torch.full((hl.kv_heads * hd,), ALWAYS_KEPT)
    units = {"output": q_unit}
    if not heads_spec.qkv:
        units["query"] = q_unit
        if by_kv:
            units["key"] = units["value"] = kv_unit
        return units
    layout = heads_spec.qkv_layout
    if layout == "blocks":
        units["qkv"] = torch.cat([q_unit, kv_unit, kv_unit])
    elif layout in ("grouped", "per_head"):
        if layout == "per_head" and gs != 1:
            raise ValueError(f"spec: qkv_layout='per_head' has one query head per KV head, the config has {gs}; "
                             f"use qkv_layout='grouped'")
        kv = kv_unit.view(hl.kv_heads, hd)
        units["qkv"] = torch.cat([q_unit.view(hl.kv_heads, gs * hd), kv, kv], dim=1).flatten()
    elif layout == "chunked":
        chunks = heads_spec.qkv_chunks
        if gs != 1 or hl.heads % chunks:
            raise ValueError(f"spec: qkv_layout='chunked' needs no GQA and heads in {chunks} equal chunks, the config "
                             f"has {hl.heads} heads / {hl.kv_heads} KV heads")
        per_chunk = q_unit.view(chunks, -1)  # the unit of each row of one of the chunk's q, k or v
        units["qkv"] = torch.cat([per_chunk] * 3, dim=1).flatten()
    else:
        raise ValueError(f"spec: qkv_layout expected one of {QKV_LAYOUTS}, got {layout!r}")
    return units


def _check_head_shapes(mods, paths, units, hl, where) -> None:
    """Every member's channel count is the head layout's (rows of q/k/v, input columns of the output)."""
    for role, m in mods.items():
        side, attr = (0, "in_features") if role == "output" else (1, "out_features")
        expected = units[role].numel() if role in units else hl.kv_heads * hl.head_dim  # k/v kept whole
        if features(m)[side] != expected:
            raise ValueError(f"model: {where}.{paths[role]}.{attr} is {features(m)[side]}, expected {expected} "
                             f"({hl.heads} heads / {hl.kv_heads} KV heads x head_dim {hl.head_dim})")


def _head_group(block, i, spec, config, model_config, where) -> Tuple[GroupMask, Optional[InputGate]]:
    """The head group of one block: one unit per KV head (``gqa="kv_groups"``, or no GQA), else one per query
    head with the same count kept in every KV group, the KV heads kept and the output's input gated."""
    hl = built_head_layout(model_config, spec, i)
    mods = block_modules(block, spec, ("heads",))["heads"]
    paths = role_paths(spec, "heads")
    by_kv = config.gqa == "kv_groups" or hl.group_size == 1
    units = _head_units(spec.heads, hl, by_kv)
    _check_head_shapes(mods, paths, units, hl, where)
    if by_kv:
        group = GroupMask("heads", i, hl.kv_heads, units, gate=config.gate, mask_init=config.mask_init,
                          unit_size=hl.group_size, partitions=spec.heads.partitions,
                          tied=config.mask_learning == "layer")
    else:
        group = GroupMask("heads", i, hl.heads, units, gate=config.gate, mask_init=config.mask_init,
                          partitions=hl.kv_heads, tied=config.mask_learning == "layer")
    for role, m in mods.items():
        layer = _wrap(block, paths[role], m, config, where)
        if role in units and role != "output":
            layer.set_mask_source(MaskView(group, role))
        else:  # the output (its columns go at compaction) and separate k/v kept whole
            _keep_all(layer)
    input_gate = None
    if not by_kv:  # the KV heads stay, so a pruned query head must be cut at the output's input
        input_gate = InputGate(group, "output")
        block.get_submodule(paths["output"]).register_forward_pre_hook(input_gate)
    return group, input_gate


def _refuse_heads_kv_groups_cannot_prune(blocks: List[Block], config: MaskedDoRAConfig, model_config) -> None:
    """One KV head shared by several query heads (multi-query attention, Falcon-7B) with ``gqa="kv_groups"``:
    the only KV group is every head and always stays, so no head could ever go. An error rather than a
    rounding warning (nothing of the target is reachable), and no silent switch to ``gqa="query_heads"``,
    which prunes something else (query heads, the KV head kept) and which the user picks knowingly. Read per
    block, as it was built: a per-layer checkpoint whose KV heads were pruned to one in every block is such a
    model; one with such blocks among others prunes the others (the rounding warning names what is kept)."""
    if "heads" not in config.target_groups or config.gqa != "kv_groups" or config.target_sparsity["heads"] == 0:
        return
    layouts = [built_head_layout(model_config, b.spec, b.index) for b in blocks
               if holds_group(b.module, b.spec, "heads")]
    if layouts and all(hl.kv_heads == 1 and hl.group_size > 1 for hl in layouts):
        # (blocks that keep their heads whole, ModelSpec.block_refusals, may have more KV heads: not "the model")
        where = ("model" if len(layouts) == len(blocks) else
                 f"model, in each block whose heads prune (the others keep theirs whole: {len(blocks) - len(layouts)} "
                 f"of {len(blocks)} blocks),")
        raise ValueError(f"config.gqa: this {model_config.model_type!r} {where} has one KV head for its "
                         f"{layouts[0].heads} query heads (multi-query attention), so gqa='kv_groups' can prune no "
                         f"head (the only KV group of each block always stays); use gqa='query_heads' (the same "
                         f"number of query heads leaves every KV group, the KV head stays) or target_groups=('mlp',)")


def keep_own_checkpoint_layout(model: nn.Module) -> None:
    """Make ``save_pretrained`` write ``model``'s state dict with its own keys and layouts.

    transformers 5 converts a model's state dict to the hub layout on save (Mixtral: ``mlp`` becomes
    ``block_sparse_moe``, packed experts are split per expert), and converts back in ``from_pretrained``.
    The Trainer resumes with a plain ``load_state_dict`` of that file, which then finds none of the wrapped
    experts' adapters and only warns: a resumed Mixtral run restarted them from the step-0 values. A
    prepared model's checkpoints are for resuming (the compacted model is what goes to the hub, and it
    saves in the hub layout), so its conversion list is emptied: the one ``from_pretrained`` records.
    """
    if hasattr(model, "save_pretrained"):
        model._weight_conversions = []


def _unwrappable_quantized(module: nn.Module, config: Optional[MaskedDoRAConfig]) -> Optional[str]:
    """Why a module holding a quantized parameter cannot stay the base of a masked-DoRA layer (``None``: it can)."""
    if config is None:
        return "from_peft reads PEFT's adapters off plain base layers"
    if not is_quantized_linear(module):
        return f"it is a {type(module).__name__}, not a linear layer"
    if dequantize_weight(module) is None:  # (one layer's weight, transient)
        return f"its {type(module).__name__} weight cannot be dequantized"
    if "hidden" in config.target_groups:
        return "hidden-dimension pruning reads and cuts every layer's columns"
    return None


def refuse_quantized_base(model: nn.Module, blocks: List[Block], config: Optional[MaskedDoRAConfig] = None) -> None:
    """Raise, naming the first one, if a parameter of ``blocks`` is quantized
    (:func:`~masked_dora.nn.base_weight.quantized_weight_reason`) and masked DoRA cannot keep its module as a
    quantized base (:class:`~masked_dora.nn.quantized_base.QuantizedBaseDoRALinear`): a linear layer whose weight
    dequantizes (bitsandbytes 4/8-bit, torchao), without hidden pruning, under ``prepare_model`` (``config``);
    ``from_peft`` (no ``config``) refuses any quantized base."""
    for b in blocks:
        for mod_name, module in b.module.named_modules():
            for p_name, p in module.named_parameters(recurse=False):
                reason = quantized_weight_reason(p)
                why = None if reason is None else _unwrappable_quantized(module, config)
                if why is None:
                    continue
                name = f"{mod_name}.{p_name}" if mod_name else p_name
                qc = getattr(model.config, "quantization_config", None)
                method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
                method = getattr(method, "value", method)  # transformers' QuantizationMethod enum: its string
                loaded = f", loaded with quantization_config quant_method={str(method)!r}" if method else ""
                raise ValueError(f"model: {b.path}.{name} holds {reason}{loaded}, and {why}: this quantized base "
                                 f"(QLoRA-style) is not supported: load the model unquantized (dtype=torch.bfloat16) "
                                 f"to prune it; the compacted model is a plain one, which any quantizer takes "
                                 f"afterwards. prepare_model wraps quantized linear layers whose weight dequantizes "
                                 f"(bitsandbytes 4/8-bit, torchao), without hidden pruning")


def _refuse(kind: str, config: MaskedDoRAConfig, model_config, reason: str) -> None:
    others = tuple(k for k in config.target_groups if k != kind)
    raise ValueError(f"config.target_groups: {kind!r} cannot be pruned in a {model_config.model_type!r} model: "
                     f"{reason}. Prune the rest only: target_groups={others}")


def _targeted_blocks(model: nn.Module, spec: ModelSpec, config: MaskedDoRAConfig) -> List[Block]:
    """The blocks ``config`` prunes (its ``stacks``), after the refusals that concern the whole model: a group
    kind a family cannot prune exactly, a stack the model lacks, an MoE spec over dense MLP blocks, one KV
    head with ``gqa="kv_groups"``."""
    for kind in config.target_groups:
        reason = next((r for s in stack_specs(spec) if (r := s.refusal(kind, model.config, config.hidden_mode))
                       is not None), None)
        if reason is not None:
            _refuse(kind, config, model.config, reason)
    blocks = model_blocks(model, spec, config.stacks)
    present = [name for name in dict.fromkeys(b.spec.stack for b in model_blocks(model, spec))]
    if config.stacks is not None and (not blocks or not set(config.stacks) <= set(present)):
        raise ValueError(f"config.stacks: this {type(model).__name__} has the stacks {present}, got "
                         f"{list(config.stacks)}")
    dense = [b.index for b in blocks if b.spec.mlp.experts and not has_experts(b.module, b.spec)]
    if dense and "mlp" in config.target_groups:  # an MoE spec without dense_mlp (a registered one) over dense blocks
        _refuse("mlp", config, model.config, f"its blocks {dense} hold a dense MLP instead of experts, which its "
                                             f"spec {spec.name!r} does not describe (ModelSpec(dense_mlp=...) names "
                                             f"such a block's MLP)")
    if "mlp" in config.target_groups and not any(holds_spec_mlp(b.module, b.spec) for b in blocks):
        _refuse("mlp", config, model.config, f"none of its blocks holds the MLP the spec names "
                                             f"({sorted(set(role_paths(spec, 'mlp').values()))})")
    if "heads" in config.target_groups and blocks and all(b.spec.attention_of for b in blocks):
        owners = sorted({b.spec.attention_of for b in blocks})
        _refuse("heads", config, model.config, f"the attention of the stacks {list(config.stacks)} is pruned by the "
                                               f"head groups of the stacks {owners}: add them to config.stacks")
    for kind in config.target_groups:  # every block keeps the kind whole (ModelSpec.block_refusals): nothing prunes
        refusals = [r for b in blocks if kind in BLOCK_KINDS and (r := block_refusal(b.module, b.spec, kind))]
        if refusals and not any(holds_group(b.module, b.spec, kind) for b in blocks):
            _refuse(kind, config, model.config, f"in every block, {refusals[0]}")
    _refuse_heads_kv_groups_cannot_prune(blocks, config, model.config)
    return blocks


def _check_block(b: Block, config: MaskedDoRAConfig, model_config) -> None:
    """Every member the config targets in block ``b`` is an ``nn.Linear`` (or Conv1D, or packed experts), and
    every per-head module holds one entry per head."""
    kinds = config.target_groups
    if b.spec.mlp.experts and "mlp" in kinds:
        packed_experts(b.module, b.spec)  # the experts' packed weights, wrapped whole by _mlp_group
        kinds = tuple(k for k in kinds if k != "mlp")
    # no group of a kind here: a hybrid's mixer block (MLPSpec.in_some_blocks) has no MLP, ModelSpec.block_refusals
    # keep a kind whole, another stack's head groups prune this attention (attention_of)
    kinds = tuple(k for k in kinds if k not in BLOCK_KINDS or holds_group(b.module, b.spec, k))
    for kind, roles in block_modules(b.module, b.spec, kinds).items():
        paths = role_paths(b.spec, kind)
        for role, module in roles.items():
            if not (isinstance(module, nn.Linear) or is_conv1d(module) or is_quantized_linear(module)):
                advice = ("merge or unload other adapters first; for PEFT LoRA/DoRA use masked_dora.from_peft"
                          if hasattr(module, "base_layer") else
                          "the spec must point at nn.Linear (or transformers Conv1D) projections")
                raise TypeError(f"model: expected an nn.Linear at {b.path}.{paths[role]}, got "
                                f"{type(module).__name__} ({advice})")
    if "mlp" in kinds:
        check_depthwise_modules(b.module, b.spec, b.path)
    if "heads" in kinds:
        check_per_head_modules(b.module, b.spec, model_config, b.path, b.index)


def prepare_model(model: nn.Module, config: Optional[MaskedDoRAConfig] = None, calibration=None,
                  loss_fn=None) -> nn.Module:
    """Wrap ``model``'s targeted groups in masked DoRA (in place) and return it.

    ``calibration`` (an iterable of input dicts) and ``loss_fn(model, batch) ->
    scalar`` feed the ``taylor`` and ``activation`` importance scores used to
    initialise the masks (see :mod:`masked_dora.models.importance`).
    """
    config = MaskedDoRAConfig() if config is None else config
    if not isinstance(config, MaskedDoRAConfig):
        raise TypeError(f"config: expected a MaskedDoRAConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a transformers model (nn.Module), got {type(model).__name__}")
    if is_prepared(model):
        raise ValueError("model: already prepared with masked_dora.prepare_model")
    if config.importance in ("taylor", "activation") and calibration is None:
        raise ValueError(f"calibration: importance={config.importance!r} needs an iterable of calibration "
                         f"batches (dicts of model inputs); got None")
    spec = spec_for(model)
    from .hidden import build_hidden_group, check_hidden
    from .hidden_per_block import build_block_groups, is_per_block

    check_hidden(model, spec, config)  # hidden pruning: refusals and the plain config, before anything changes
    blocks = _targeted_blocks(model, spec, config)
    refuse_quantized_base(model, blocks, config)
    for b in blocks:  # check every block before changing anything
        _check_block(b, config, model.config)
    from .save_form import decide_save_form

    # how the compacted model will be saved, decided (and refused, for save_form="plain") before any change
    save_form, save_form_reason = decide_save_form(model, spec, config)
    from .compact import config_block_sizes

    built_sizes = config_block_sizes(model, spec)
    for p in model.parameters():
        p.requires_grad_(False)
    state = MaskedDoRAState(config, spec)
    device = next(model.parameters()).device
    for b in blocks:  # group keys number the blocks across stacks (an encoder-decoder's decoder follows)
        if "mlp" in config.target_groups and holds_group(b.module, b.spec, "mlp"):
            state.groups[f"mlp_{b.index}"] = _mlp_group(b.module, b.index, b.spec, config, b.path)
        if "heads" in config.target_groups and holds_group(b.module, b.spec, "heads"):  # (see _check_block)
            group, _ = _head_group(b.module, b.index, b.spec, config, model.config, b.path)
            state.groups[f"heads_{b.index}"] = group
    if is_per_block(config):  # one group per block (its reads and writes), after the writers' own groups
        state.groups.update(build_block_groups(model, blocks, config, _wrap))
    elif "hidden" in config.target_groups:  # one group for the residual stream, after the writers' own groups
        state.groups["hidden"] = build_hidden_group(model, blocks, config, _wrap)
    if config.temperature is not None:
        state.set_temperature(config.temperature)
    setattr(model, STATE_ATTR, state.to(device))
    keep_own_checkpoint_layout(model)
    state.save_form, state.save_form_reason = save_form, save_form_reason
    if getattr(model, "is_quantized", False) and any(isinstance(m, QuantizedBaseDoRALinear) for m in model.modules()):
        # transformers' Trainer refuses "purely quantized models" (is_quantized, and not a PEFT model: no trainable
        # adapters); this one trains masked-DoRA adapters over its quantized base. hf_quantizer, which saving and
        # loading consult, stays
        model.is_quantized = False
    state.built_sizes = built_sizes
    model.train(model.training)  # new modules follow the model's mode
    forward_masks = ForwardMasks(state)
    model.register_forward_pre_hook(forward_masks)
    model.register_forward_hook(forward_masks.after)
    from .sparsity import warn_unreachable_targets

    warn_unreachable_targets(model)  # a target that rounding changes (e.g. 25% of 2 KV groups: none) warns now
    if config.importance != "none":
        from .importance import init_masks_from_importance

        init_masks_from_importance(model, config.importance, calibration, loss_fn)
    return model

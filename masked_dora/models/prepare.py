"""``prepare_model``: wrap the coupled groups of a transformers model in masked DoRA.

Every member of a targeted group (producers *and* consumers) becomes a
:class:`~masked_dora.nn.MaskedDoRALinear` sharing the original weight; every
other parameter is frozen. Each group gets one :class:`GroupMask`; producers
read their ``z`` from it, consumers keep an all-ones mask of their own (their
columns go at compaction). Everything the library adds lives under
``model.masked_dora`` (a :class:`MaskedDoRAState`).
"""

from __future__ import annotations

from typing import Dict, List, Optional

from torch import Tensor, nn

from ..nn.base_weight import dequantize_weight, quantized_weight_reason
from ..nn.quantized_base import QuantizedBaseDoRALinear, is_quantized_linear
from .blocks import (Block, block_modules, block_refusal, built_head_layout, check_depthwise_modules,
                     check_per_head_modules, has_experts, holds_group, holds_spec_mlp, is_conv1d, model_blocks,
                     packed_experts, role_paths, stack_specs)
from .config import MaskedDoRAConfig
from .group_build import head_group, mlp_group, wrap_member
from .group_mask import ForwardMasks, GroupMask
from .specs import BLOCK_KINDS, ModelSpec, spec_for

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
        packed_experts(b.module, b.spec)  # the experts' packed weights, wrapped whole by mlp_group
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
            state.groups[f"mlp_{b.index}"] = mlp_group(b.module, b.index, b.spec, config, b.path)
        if "heads" in config.target_groups and holds_group(b.module, b.spec, "heads"):  # (see _check_block)
            group, _ = head_group(b.module, b.index, b.spec, config, model.config, b.path)
            state.groups[f"heads_{b.index}"] = group
    if is_per_block(config):  # one group per block (its reads and writes), after the writers' own groups
        state.groups.update(build_block_groups(model, blocks, config, wrap_member))
    elif "hidden" in config.target_groups:  # one group for the residual stream, after the writers' own groups
        state.groups["hidden"] = build_hidden_group(model, blocks, config, wrap_member)
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

"""Hugging Face models: coupled pruning groups, exact target sparsity, compaction, save/load, training.

Typical use::

    from masked_dora.models import MaskedDoRAConfig, prepare_model, harden, compact_model
    model = prepare_model(model, MaskedDoRAConfig(target_sparsity=0.25))
    ...train (MaskedDoRACallback for transformers.Trainer, or train_masked)...
    harden(model)                    # exact top-k per group kind
    small = compact_model(model)     # plain transformers model, nn.Linear layers
    small.save_pretrained("pruned")  # uniform: AutoModel loads it; otherwise masked_dora.load_compact
"""

from .compact import compact_model
from .compact_training import compact_for_training
from .compact_load import load_compact
from .config import MaskedDoRAConfig
from .group_mask import GroupMask
from .peft_export import export_peft
from .prepare import MaskedDoRAState, get_state, is_prepared, prepare_model
from .resize import build_compact_model
from .sparsity import SparsityController, expected_keep, harden, kept_fraction, plan_keep
from .specs import (SPECS, ExpertsLayout, HeadSpec, MLPSpec, ModelSpec, PerHeadSpec, StagesSpec, register_spec,
                    spec_for)
from .state import from_peft, load_training_state, save_training_state
from .training import MaskedDoRACallback, MaskTrainer, param_groups, train_masked, use_mask_group

__all__ = ["GroupMask", "MaskTrainer", "MaskedDoRACallback", "MaskedDoRAConfig", "MaskedDoRAState", "ModelSpec",
           "ExpertsLayout", "HeadSpec", "MLPSpec", "PerHeadSpec", "StagesSpec", "register_spec",
           "SPECS", "SparsityController", "build_compact_model", "compact_for_training", "compact_model",
           "expected_keep", "export_peft",
           "from_peft",
           "get_state", "harden", "is_prepared", "kept_fraction", "load_compact", "load_training_state", "param_groups",
           "plan_keep", "prepare_model", "save_training_state", "spec_for", "train_masked", "use_mask_group"]

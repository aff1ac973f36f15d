"""The methods of bench/quality.py (the learned-mask study of issue 12): what each run does.

Kept apart from the runner so the table can grow; ``bench/quality.py`` imports :data:`METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict


@dataclass(frozen=True)
class Method:
    kind: str                                     # learned | fixed | cut | torch_pruning | tp_cut
    description: str
    config: Dict[str, object] = field(default_factory=dict)   # MaskedDoRAConfig overrides
    calibration_dropout: bool = False  # Taylor scores with dropout on (the dense model is its own teacher)
    one_run: bool = False  # learned: one train_masked call (harden_after=steps): one optimizer, batches go on
    # CoFi's layer-wise distillation: the weight of the hidden-state term (DistillationTask.hidden_weight) in the
    # training loss (mask learning and the fixed methods' training); 0: the embedding loss alone
    hidden_weight: float = 0.0
    hidden_recovery: bool = True  # learned: recovery keeps the hidden-state term (False: the embedding loss)


HS = 1.0  # the hidden-state term's weight of the *_hs methods (bench/quality.py --hidden-weight overrides it)

METHODS: Dict[str, Method] = {
    "learned": Method("learned", "A: the CLI's method until this study (activation init, masks learned with the "
                      "Lagrangian controller for 90 steps, harden, 60 recovery steps)",
                      {"importance": "activation"}),
    "fixed_activation": Method("fixed", "C: activation cut fixed from step 0, masked DoRA",
                               {"importance": "activation"}),
    "fixed_magnitude": Method("fixed", "D: magnitude cut fixed from step 0, masked DoRA", {"importance": "magnitude"}),
    "cut_activation": Method("cut", "activation cut, no training", {"importance": "activation"}),
    "torch_pruning": Method("torch_pruning", "TP: Torch-Pruning group-Taylor cut, then PEFT LoRA"),
    "tp_cut": Method("tp_cut", "Torch-Pruning group-Taylor cut, no training"),
    "torch_pruning_global": Method("torch_pruning", "TP with global_pruning=True (its cut ranked across layers, "
                                   "the peer of allocation='global')", {"global_pruning": True}),
    "learned_global": Method("learned", "A with allocation='global' (layer budgets learned)",
                             {"importance": "activation", "allocation": "global"}),
    "fixed_activation_global": Method("fixed", "C with allocation='global' (the activation cut ranked across "
                                      "layers), fixed from step 0: the CLI's default from this study until "
                                      "2026-11-28 (now its --hidden-weight 0)",
                                      {"importance": "activation", "allocation": "global"}),
    "learned_soft": Method("learned", "A with logits near the boundary (mask_init 0.5) so decisions can move",
                           {"importance": "activation", "mask_init": 0.5}),
    "learned_exact": Method("learned", "budget='exact': every forward keeps the activation cut's exact top-k of the "
                            "current logits, logits learn straight-through (no penalty, no drift)",
                            {"importance": "activation", "budget": "exact"}),
    "learned_exact_global": Method("learned", "learned_exact with allocation='global' (units swap across layers)",
                                   {"importance": "activation", "budget": "exact", "allocation": "global"}),
    "learned_exact_slow": Method("learned", "learned_exact with mask_lr 0.005 (fewer, better-evidenced swaps)",
                                 {"importance": "activation", "budget": "exact", "mask_lr": 0.005}),
    "fixed_taylor": Method("fixed", "first-order Taylor cut (|dL/dz| on the calibration batches, dropout on, as "
                           "TP's gradients), fixed from step 0, masked DoRA", {"importance": "taylor"},
                           calibration_dropout=True),
    "learned_global_warmup": Method("learned", "learned_global with a sparsity warm-up: the controller's target ramps "
                                    "from dense to the final keep over the first 60 of the 90 learning steps "
                                    "(Sheared-LLaMA, CoFi)", {"importance": "activation", "allocation": "global",
                                                               "warmup_steps": 60}),
    "learned_soft_global": Method("learned", "learned_global with logits near the boundary (mask_init 0.5)",
                                  {"importance": "activation", "allocation": "global", "mask_init": 0.5}),
    "learned_soft_global_fast": Method("learned", "learned_soft_global with mask_lr 0.2 (the loss gradient, not "
                                       "the penalty, orders the boundary units)",
                                       {"importance": "activation", "allocation": "global", "mask_init": 0.5,
                                        "mask_lr": 0.2}),
    "learned_global_one_run": Method("learned", "learned_global as one continuous run: harden after 90 steps "
                                     "inside one train_masked call (the same AdamW, the batches go on) instead of "
                                     "a second call for recovery", {"importance": "activation",
                                                                   "allocation": "global"}, one_run=True),
    "learned_exact_global_slow": Method("learned", "learned_exact_global with mask_lr 0.005 as one continuous "
                                        "run (units swap across layers only on consistent evidence)",
                                        {"importance": "activation", "budget": "exact", "allocation": "global",
                                         "mask_lr": 0.005}, one_run=True),
    "learned_layer_global": Method("learned", "layer budgets learned on the fixed activation order: "
                                   "mask_learning='layer' (one offset per layer's logits), budget='exact' "
                                   "(every forward the global top-k: always at the target), "
                                   "allocation='global', mask_lr 0.005, one continuous run",
                                   {"importance": "activation", "allocation": "global", "budget": "exact",
                                    "mask_learning": "layer", "mask_lr": 0.005}, one_run=True),
    "learned_layer_global_fast": Method("learned", "learned_layer_global with mask_lr 0.02",
                                        {"importance": "activation", "allocation": "global", "budget": "exact",
                                         "mask_learning": "layer", "mask_lr": 0.02}, one_run=True),
    "learned_exact_global_gradual": Method("learned", "learned_exact_global_slow with gradual pruning: the exact "
                                           "plan goes from dense to the target over the first 60 steps (cubic, "
                                           "Zhu and Gupta), the units leaving in the order of the learned logits",
                                           {"importance": "activation", "budget": "exact", "allocation": "global",
                                            "mask_lr": 0.005, "warmup_steps": 60}, one_run=True),
    "learned_layer_global_gradual": Method("learned", "learned_layer_global with the same gradual pruning (60 "
                                           "steps, cubic)", {"importance": "activation", "allocation": "global",
                                                             "budget": "exact", "mask_learning": "layer",
                                                             "mask_lr": 0.005, "warmup_steps": 60}, one_run=True),
    # CoFi's layer distillation (Xia et al. 2022): + HS * the relative squared error of each layer's hidden
    # states to the dense model's (masked_dora.models.distill.hidden_state_loss), the same loss for fixed and learned
    "fixed_activation_global_hs": Method("fixed", "fixed_activation_global trained with the hidden-state loss "
                                         "(CoFi's layer distillation) for all its steps; at λ = 3 the CLI's "
                                         "default since 2026-11-28",
                                         {"importance": "activation", "allocation": "global"}, hidden_weight=HS),
    "learned_global_hs": Method("learned", "learned_global with the hidden-state loss while the masks learn "
                                "(CoFi's use) and in recovery (the same loss as fixed_activation_global_hs)",
                                {"importance": "activation", "allocation": "global"}, hidden_weight=HS),
    "learned_global_hs_learn": Method("learned", "learned_global with the hidden-state loss only while the masks "
                                      "learn (the layer signal picks the units), recovery on the embedding loss",
                                      {"importance": "activation", "allocation": "global"}, hidden_weight=HS,
                                      hidden_recovery=False),
    "learned_exact_global_hs": Method("learned", "learned_exact_global with the hidden-state loss throughout "
                                      "(units swap on the layers' evidence, always at the target)",
                                      {"importance": "activation", "budget": "exact", "allocation": "global"},
                                      hidden_weight=HS),
}
# the study as committed (--methods all runs every entry of METHODS)
DEFAULT_METHODS = ["learned_exact", "fixed_activation", "torch_pruning", "learned_exact_global",
                   "fixed_activation_global", "learned"]

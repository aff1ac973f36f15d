"""TRL's ``SFTTrainer`` with :class:`~masked_dora.models.training.MaskedDoRACallback`: where its loss comes from.

TRL (1.16) patches the model's forward with a fused LM head and computes the loss from the per-token
log-probabilities it returns, not from ``outputs.loss``, where the callback's forward hook adds the sparsity
penalty. The hook therefore also routes the penalty's gradient through ``outputs.log_probs``, for the losses where
that gives the penalty its exact share (a token-mean NLL), and the callback refuses the TRL setups where it cannot.
"""

from __future__ import annotations

import sys

import torch


class PenaltyThroughLogProbs(torch.autograd.Function):
    """``log_probs`` unchanged, with the sparsity penalty's gradient riding on it: TRL's ``SFTTrainer`` (1.16) calls
    its fused LM head (``fused_lm_head=True``) and builds its loss from ``outputs.log_probs``, never reading
    ``outputs.loss``, where the callback's hook puts the penalty.

    Its loss is ``-sum(log_probs[label_mask]) * s`` (``s``: ``1 / num_items_in_batch`` or ``1 / local tokens``, times
    the processes, over the accumulation steps when the Trainer divides), so the gradient reaching each kept token is
    ``-s`` and minus their sum is ``s x local tokens``: the penalty's share of the step, as
    the callback's hook computes it for a model's own loss, and 1 on one process without accumulation. That sum is
    the penalty's gradient here. A caller that reads ``outputs.loss`` instead never runs this backward (the loss does
    not depend on the returned tensor), so the penalty counts once either way. Only for a token-mean NLL: DFT weighs
    each token by its probability and preference losses (DPO, ...) subtract log-probabilities, so the callback
    refuses those (:func:`trl_penalty_route`).
    """

    @staticmethod
    def forward(ctx, log_probs, label_mask, penalty):
        ctx.save_for_backward(label_mask)
        ctx.penalty_dtype = penalty.dtype
        return log_probs.clone()

    @staticmethod
    def backward(ctx, grad):
        (label_mask,) = ctx.saved_tensors
        share = -(grad * label_mask.to(grad.dtype)).sum()
        return grad, None, share.to(ctx.penalty_dtype)


def trl_penalty_route(args) -> bool:
    """Whether the Trainer's ``args`` are TRL's ``SFTConfig`` (its loss read off the fused LM head's
    ``log_probs``, where :class:`PenaltyThroughLogProbs` carries the penalty); ``False`` for any other Trainer.

    Raises, naming the argument, for the TRL setups whose loss the penalty cannot reach, so a run never trains the
    masks without it: ``loss_type="dft"`` (each token's weight is its probability), ``label_smoothing_factor``
    (the loss comes from full logits, computed without labels: no loss, no log-probabilities for the hook) and
    TRL's other trainers (DPO, GRPO, KTO, ...: their losses are not a token mean of log-likelihoods).
    """
    trl = sys.modules.get("trl")
    if trl is None:  # never imported: no TRL trainer is running
        return False
    module, name = type(args).__module__ or "", type(args).__name__
    # by class, not by module: a user's SFTConfig subclass, defined in their own script, is TRL's SFTTrainer too
    if not isinstance(args, getattr(trl, "SFTConfig", ())):
        if not (module == "trl" or module.startswith("trl.")):
            return False
        raise ValueError(f"args: MaskedDoRACallback supports TRL's SFTTrainer only, got a {name}: TRL's other "
                         f"trainers build their loss from the model's per-token log-probabilities in ways "
                         f"(preferences, rewards) that the sparsity penalty cannot be added to")
    loss_type = getattr(args, "loss_type", "nll")
    if loss_type != "nll":
        raise ValueError(f"args: {name}(loss_type={loss_type!r}) is not supported by MaskedDoRACallback: it weighs "
                         f"each token's log-probability by its probability, so the sparsity penalty's share of the "
                         f"loss cannot be read off it; use loss_type='nll' (the default)")
    if getattr(args, "label_smoothing_factor", 0) > 0:
        raise ValueError(f"args: {name}(label_smoothing_factor={args.label_smoothing_factor}) is not supported by "
                         f"MaskedDoRACallback: the SFTTrainer then computes the loss from logits of a forward "
                         f"without labels, which the sparsity penalty cannot reach; set it to 0")
    return True

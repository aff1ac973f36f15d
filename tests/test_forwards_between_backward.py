"""Forwards between a training forward and its backward, under activation checkpointing: the recomputation in
the backward reads the mask sample the groups hold then (``ForwardMasks``), so another forward must not leave its
own sample there. A forward without gradients puts the previous sample back (metrics or an entropy term in a
Trainer's ``compute_loss_func``: before, a non-reentrant checkpoint raised CheckpointError); a second forward with
gradients before the backward raises (its sample would give the first forward's recomputation wrong gradients)."""

from __future__ import annotations

import pytest
import torch

from masked_dora.models import MaskedDoRAConfig, prepare_model

from tiny_models import lm_batches, randomize_adapters, tiny_model

CHECKPOINTING = ["non_reentrant", "reentrant"]


def _prepared(checkpointing=None, **config):
    model = tiny_model("llama", kind="lm")
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none", target_sparsity=0.5,
                                          **config))
    randomize_adapters(model)  # mixed logits: every gate sample differs from the next
    model.train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": checkpointing ==
                                                                           "reentrant"})
    return model


def _step(model, between=None):
    """One forward/backward on the first tiny batch (seeded gate noise), ``between`` run after the forward; the
    loss and the gradients."""
    batch = lm_batches(1)[0]
    torch.manual_seed(123)
    out = model(**batch)
    if between is not None:
        between(model, batch)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def _no_grad_forward(model, batch):
    with torch.no_grad():
        model(**batch)


@pytest.mark.parametrize("checkpointing", CHECKPOINTING)
def test_a_forward_without_gradients_before_the_backward_leaves_the_gradients_as_they_were(checkpointing):
    ref_loss, ref = _step(_prepared())
    loss, grads = _step(_prepared(checkpointing), between=_no_grad_forward)
    assert torch.equal(loss, ref_loss)
    logits = [n for n in ref if n.endswith("mask_logits")]
    assert logits and all(ref[n].abs().sum() > 0 for n in logits)
    for name, g in ref.items():
        assert grads[name] is not None, name
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("checkpointing", CHECKPOINTING)
def test_a_second_forward_with_gradients_before_the_backward_raises_under_checkpointing(checkpointing):
    model = _prepared(checkpointing)
    batch = lm_batches(1)[0]
    first = model(**batch)
    with pytest.raises(RuntimeError, match="second training forward with gradients started before the backward "
                                           r"of the previous one, under activation checkpointing.*torch\.no_grad"):
        model(**batch)
    first.loss.backward()  # then the usual order works again
    model(**batch).loss.backward()
    model(**batch).loss.backward()


def test_two_forwards_then_one_backward_stay_allowed_where_they_are_exact():
    """Without checkpointing each forward's graph holds its own sample; with budget="exact" every forward uses
    the same masks: both run two forwards before one backward (a two-column contrastive loss)."""
    for model in (_prepared(), _prepared("non_reentrant", budget="exact")):
        batch = lm_batches(1)[0]
        (model(**batch).loss + model(**batch).loss).backward()


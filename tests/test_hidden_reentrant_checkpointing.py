"""README ("Gradient checkpointing"): HF's gradient_checkpointing_enable(), reentrant or not, gives the same loss
and gradients as no checkpointing. With hidden_mode="global" the hidden group's gate value is shared by every
block's writers, and reentrant checkpointing backpropagates each block on its own: the second block's backward
goes through the shared gate graph the first one already freed (before and after compact_for_training)."""

import pytest
import torch

from masked_dora.models import MaskedDoRAConfig, compact_for_training, harden, prepare_model

from tiny_models import lm_batches, tiny_model


@pytest.mark.parametrize("narrowed", [False, True])
def test_reentrant_checkpointing_with_the_hidden_group(narrowed):
    def make():
        model = tiny_model("llama", kind="lm")
        prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none",
                                              target_groups=("mlp", "hidden"), target_sparsity=0.5))
        if narrowed:
            harden(model)
            compact_for_training(model)
        return model

    model = make()
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model(**lm_batches(1)[0]).loss.backward()  # RuntimeError: Trying to backward through the graph a second time
    assert any(p.grad is not None and bool(p.grad.any()) for p in model.parameters() if p.requires_grad)

"""hidden_mode="global" on a model whose task head reads the residual stream (LlamaForSequenceClassification's
``score``, ...ForTokenClassification's ``score``, ...ForQuestionAnswering's ``qa_outputs``): the head is a reader
like the LM head, so compact_for_training and compact_model must cut its columns too (prepare_model accepts
these models)."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from masked_dora.models import MaskedDoRAConfig, compact_for_training, compact_model, harden, prepare_model

from tiny_models import randomize_adapters, tiny_config, tiny_inputs

HEADS = ["LlamaForSequenceClassification", "LlamaForTokenClassification", "LlamaForQuestionAnswering"]


def _outputs(out):
    return torch.cat([v.flatten() for k, v in out.items() if k in ("logits", "start_logits", "end_logits")])


@pytest.mark.parametrize("cls", HEADS)
def test_a_task_head_narrows_with_the_residual_stream(cls):
    config = tiny_config("llama")
    config.pad_token_id = 0
    torch.manual_seed(0)
    model = getattr(transformers, cls)(config).eval()
    prepare_model(model, MaskedDoRAConfig(rank=4, alignment={"mlp": 8}, importance="none",
                                          target_groups=("mlp", "heads", "hidden"), target_sparsity=0.5))
    randomize_adapters(model)
    harden(model)
    inputs = tiny_inputs()
    with torch.no_grad():
        ref = _outputs(model(**inputs))
        torch.testing.assert_close(_outputs(compact_model(model)(**inputs)), ref, rtol=1e-5, atol=1e-6)
        small = compact_for_training(copy.deepcopy(model))
        torch.testing.assert_close(_outputs(small(**inputs)), ref, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(_outputs(compact_model(small)(**inputs)), ref, rtol=1e-5, atol=1e-6)

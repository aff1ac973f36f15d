"""The embedding-distillation task's layer-wise hidden-state term (CoFi's layer distillation, hidden_weight)."""

import copy
import dataclasses

import pytest
import torch

from masked_dora.models import MaskedDoRAConfig, harden, prepare_model
from masked_dora.models.distill import build_task, hidden_state_loss
from masked_dora.models.embedding import distillation_loss, encode

from tiny_models import tiny_bert_dir

pytestmark = pytest.mark.filterwarnings("ignore:prepare_model:UserWarning")

TEXTS = (["def foo(x): return x + 1", "the quick brown fox jumps", "open a file and read it", "sort a list",
          "parse the arguments", "a"], ["join two paths together now", "split the string on commas please"])


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    from transformers import AutoTokenizer, BertModel

    path = tiny_bert_dir(str(tmp_path_factory.mktemp("tiny")))
    dense = BertModel.from_pretrained(path)
    return build_task(AutoTokenizer.from_pretrained(path), dense, 6, 2, batch_size=3, max_length=16, texts=TEXTS)


def _student(task):
    torch.manual_seed(0)
    cfg = MaskedDoRAConfig(rank=4, target_groups=("mlp", "heads"), target_sparsity=0.5, importance="none",
                           alignment={"mlp": 8, "heads": 1})
    student = prepare_model(copy.deepcopy(task.dense), cfg)
    harden(student)
    return student


def test_default_loss_is_the_embedding_loss(task):
    assert task.hidden_weight == 0.0
    student = _student(task)
    batch = task.train_batches[0]
    expected = distillation_loss(encode(student, batch), task.teacher[id(batch)])
    assert torch.equal(task.loss_fn(student, batch), expected)
    assert not task.teacher_hidden  # the off term computes no teacher states


def test_dense_model_scores_zero(task):
    hs = dataclasses.replace(task, hidden_weight=1.0)
    assert hs.teacher is task.teacher and hs.teacher_hidden is task.teacher_hidden  # data and caches shared
    copy_ = copy.deepcopy(task.dense).eval()
    for batch in task.train_batches:  # the padded batch included ("a" is short)
        with torch.no_grad():
            assert float(hs.loss_fn(copy_, batch)) == pytest.approx(0.0, abs=1e-6)
    batch = task.train_batches[1]
    with torch.no_grad():
            states = copy_(**batch, output_hidden_states=True).hidden_states[1:]
    assert len(hs.teacher_hidden_states(batch)) == len(task.dense.encoder.layer)
    assert float(hidden_state_loss(states, hs.teacher_hidden_states(batch), batch["attention_mask"])) < 1e-10
    # a zero student state is a relative error of 1 per layer
    zeros = [torch.zeros_like(s) for s in states]
    assert float(hidden_state_loss(zeros, hs.teacher_hidden_states(batch), batch["attention_mask"])) == \
        pytest.approx(1.0)


def test_padding_is_ignored(task):
    batch = next(b for b in task.train_batches if not bool(b["attention_mask"].all()))
    teacher = task.teacher_hidden_states(batch)
    pad = ~batch["attention_mask"].bool()
    noisy = [t.masked_fill(pad.unsqueeze(-1), 123.0) for t in teacher]
    assert float(hidden_state_loss(noisy, teacher, batch["attention_mask"])) == 0.0


def test_gradient_reaches_the_student(task):
    hs = dataclasses.replace(task, hidden_weight=1.0)
    batch = task.train_batches[0]
    grads = {}
    for name, t in (("embedding", task), ("hidden", hs)):
        student = _student(task)
        student.train()
        loss = t.loss_fn(student, batch)
        assert float(loss.detach()) > 0
        loss.backward()
        grads[name] = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
        assert grads[name] and any(float(g.abs().sum()) > 0 for g in grads[name].values())
    # the hidden term changes the adapters' gradients (same seed, same dropout, same student)
    assert any(not torch.allclose(grads["embedding"][n], grads["hidden"][n]) for n in grads["hidden"])


def test_width_mismatch_and_bad_weight_are_refused(task):
    with pytest.raises(ValueError, match="hidden_weight"):
        dataclasses.replace(task, hidden_weight=-1.0)
    with pytest.raises(ValueError, match="same width"):
        hidden_state_loss([torch.zeros(1, 2, 4)], [torch.zeros(1, 2, 8)], torch.ones(1, 2))

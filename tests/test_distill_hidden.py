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


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_a_batch_of_the_callers_own_gets_the_teachers_embeddings_computed(task, weight):
    t = dataclasses.replace(task, hidden_weight=weight)
    student = _student(task)
    own = {k: v.clone() for k, v in task.train_batches[0].items()}  # the same texts, another dict: not kept
    with torch.no_grad():
        assert torch.allclose(t.loss_fn(student, own), t.loss_fn(student, task.train_batches[0]), rtol=1e-6)


def test_replacing_the_teacher_model_is_refused(task):
    other = copy.deepcopy(task.dense)
    with pytest.raises(ValueError, match="dense: this task's teacher embeddings and hidden states"):
        dataclasses.replace(task, dense=other)
    again = dataclasses.replace(task, hidden_weight=2.0, hidden_cache_bytes=task.hidden_cache_bytes)
    assert again.teacher_hidden is task.teacher_hidden and again.dense is task.dense  # loss settings only


def test_width_mismatch_and_bad_weight_are_refused(task):
    with pytest.raises(ValueError, match="hidden_weight"):
        dataclasses.replace(task, hidden_weight=-1.0)
    with pytest.raises(ValueError, match="same width"):
        hidden_state_loss([torch.zeros(1, 2, 4)], [torch.zeros(1, 2, 8)], torch.ones(1, 2))


def _trained_student(task):
    """A hardened student whose adapters are not at their init (so its hidden states differ from the teacher's)."""
    student = _student(task)
    with torch.no_grad():
        for n, p in student.named_parameters():
            if p.requires_grad and "mask" not in n:
                p.add_(0.05 * torch.randn_like(p))
    return student.eval()


def test_kept_and_recomputed_teacher_states_give_the_same_loss(task):
    """hidden_cache_bytes=0 recomputes the teacher's states in every call; a large budget keeps them (packed
    real tokens). Both give the loss of the teacher's states computed here directly, and the same gradients."""
    kept = dataclasses.replace(task, hidden_weight=3.0, hidden_cache_bytes=1 << 30)
    streamed = dataclasses.replace(task, hidden_weight=3.0, hidden_cache_bytes=0)
    assert kept.teacher_hidden is not streamed.teacher_hidden  # another budget: a cache of its own
    student = _trained_student(task)
    for _ in range(2):  # the second pass reads the kept states back
        for batch in task.train_batches:  # the padded batch included
            with torch.no_grad():
                direct_teacher = [h.float() for h in task.dense(**batch, output_hidden_states=True).hidden_states[1:]]
                out = student(**batch, output_hidden_states=True)
                direct = hidden_state_loss(out.hidden_states[1:], direct_teacher, batch["attention_mask"])
                direct = distillation_loss(encode(student, batch), task.teacher[id(batch)]) + 3.0 * direct
            losses = []
            for t in (kept, streamed):
                student.zero_grad(set_to_none=True)
                loss = t.loss_fn(student, batch)
                loss.backward()
                losses.append((loss.detach(), {n: p.grad.clone() for n, p in student.named_parameters()
                                               if p.grad is not None}))
            assert float(losses[0][0]) > 1e-4
            torch.testing.assert_close(losses[0][0], direct, rtol=1e-6, atol=0)
            torch.testing.assert_close(losses[1][0], direct, rtol=1e-6, atol=0)
            assert losses[0][1].keys() == losses[1][1].keys()
            for n in losses[0][1]:
                torch.testing.assert_close(losses[0][1][n], losses[1][1][n], rtol=1e-6, atol=1e-9)
    assert len(kept.teacher_hidden) == len(task.train_batches)
    assert len(streamed.teacher_hidden) == 0 and streamed.teacher_hidden.nbytes == 0


def _packed_bytes(task, batch):
    real = int(batch["attention_mask"].sum())
    return len(task.dense.encoder.layer) * real * task.dense.config.hidden_size * 4


@pytest.mark.parametrize("slack", [-1, 0, 1])
def test_teacher_cache_never_exceeds_its_byte_budget(task, slack):
    """Batches are kept in the order they come while they fit; the stored tensors' bytes are counted and never
    exceed hidden_cache_bytes, and a batch that does not fit is recomputed (the loss is unchanged)."""
    b0, b1 = task.train_batches[:2]
    budget = _packed_bytes(task, b0) + _packed_bytes(task, b1) + slack
    t = dataclasses.replace(task, hidden_weight=1.0, hidden_cache_bytes=budget)
    ref = dataclasses.replace(task, hidden_weight=1.0, hidden_cache_bytes=0)
    student = _trained_student(task)
    with torch.no_grad():
        for _ in range(2):
            for batch in task.train_batches:
                torch.testing.assert_close(t.loss_fn(student, batch), ref.loss_fn(student, batch), rtol=1e-6, atol=0)
    cache = t.teacher_hidden
    stored = sum(packed.numel() * packed.element_size() for _, packed in cache._entries.values())
    assert stored == cache.nbytes <= budget
    assert len(cache) == (2 if slack >= 0 else 1)  # -1: the second batch does not fit, and is not kept later


def test_teacher_cache_packs_real_tokens_in_the_teachers_dtype():
    from masked_dora.models.distill import TeacherHiddenCache

    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": mask}
    states = [torch.randn(2, 3, 4).to(torch.bfloat16) for _ in range(2)]
    cache = TeacherHiddenCache(1 << 20)
    assert cache.put(batch, states) and cache.nbytes == 2 * 4 * 4 * 2  # 2 layers, 4 real tokens, width 4, bf16
    got = cache.get(batch)
    for g, h in zip(got, states):
        assert g.dtype == torch.float32
        assert torch.equal(g[mask.bool()], h.float()[mask.bool()]) and not g[~mask.bool()].any()
    assert cache.get(dict(batch)) is None  # another batch object: not this one's states
    assert not cache.put(batch, states)  # kept once


@pytest.mark.parametrize("bad", [-1, 1.5, True, "512"])
def test_bad_cache_budget_is_refused_naming_it(task, bad):
    with pytest.raises(ValueError, match="hidden_cache_bytes"):
        dataclasses.replace(task, hidden_cache_bytes=bad)


def test_teacher_cache_misses_a_changed_batch_and_keeps_it_anew():
    """A batch dict whose tensors were replaced (as another dict at a freed one's id looks) or modified in place
    since its states were kept is a miss (it read stale states, or failed to scatter them), and its stale entry
    is dropped so its new states are kept in its place (it used to hold the budget and refuse them forever)."""
    from masked_dora.models.distill import TeacherHiddenCache

    def states():
        return [torch.randn(2, 3, 4) for _ in range(2)]

    batch = {"input_ids": torch.ones(2, 3, dtype=torch.long), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    cache = TeacherHiddenCache(2 * 5 * 4 * 4)  # room for one batch of 5 real tokens
    assert cache.put(batch, states())
    batch["attention_mask"] = torch.tensor([[1, 1, 1], [0, 1, 1]])  # the same count of real tokens, elsewhere
    assert cache.get(batch) is None and cache.nbytes == 0 and len(cache) == 0
    new = states()
    assert cache.put(batch, new) and cache.nbytes == 2 * 5 * 4 * 4
    mask = batch["attention_mask"].bool()
    assert all(torch.equal(g[mask], h[mask]) for g, h in zip(cache.get(batch), new))
    batch["input_ids"] = torch.zeros(2, 3, dtype=torch.long)  # another dict at a reused id looks like this
    assert cache.get(batch) is None and cache.put(batch, states()) and len(cache) == 1
    batch["input_ids"][0, 0] = 7  # modified in place
    assert cache.get(batch) is None and cache.put(batch, states()) and len(cache) == 1
    assert cache.get(batch) is not None and not cache.put(batch, states())  # kept once

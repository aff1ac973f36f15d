"""The embedding-distillation task of ``masked-dora prune`` and ``bench/quality.py``, built once.

A student encoder learns to reproduce the dense model's L2-normalised mean-pooled sentence
embeddings (``1 - cos``) on real text (the docstrings of Python's standard library, split into
train and held-out modules). :class:`DistillationTask` holds the tokenised batches, the teacher's
embeddings of every training batch, and the held-out sets with the dense model's embeddings, so
any number of students (methods, seeds, sparsities) train and evaluate against the same data.

``hidden_weight`` (default 0: off) adds CoFi's layer-wise distillation (Xia et al. 2022) to the loss: the
student's hidden state after each encoder layer matched to the dense model's after the same layer
(:func:`hidden_state_loss`; student and teacher have the same width when only MLP channels and heads
are pruned). The teacher's hidden states of a batch are computed under ``no_grad`` by ``dense`` (a model of
its own, in eval mode) when the loss needs them; :class:`TeacherHiddenCache` keeps those of as many batches
as fit ``hidden_cache_bytes`` (default :data:`HIDDEN_CACHE_BYTES`, 512 MiB; the rest are recomputed in every
step that uses them; 0 keeps none), so the memory is bounded whatever the corpus, and the loss is the same
either way. On the demo's task (75 batches of 16 texts, MiniLM) all of them take 383 MiB, and recomputing
costs a teacher forward, about a third of a training step (``bench/teacher_states.py``).
``dataclasses.replace(task, hidden_weight=w)`` gives a task with that loss sharing the data and caches.

Evaluation (:meth:`DistillationTask.evaluate`): mean and minimum cosine between the student's and
the dense model's held-out embeddings, and top-1 retrieval over query/document halves of the
held-out texts (agreement with the dense model's choice, and each model's own accuracy).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..ops._checks import tensor_version
from .embedding import distillation_loss, embed, encode, mean_pool, retrieval_metrics, tokenize_batches
from .textdata import query_document_pairs, stdlib_corpus

HIDDEN_CACHE_BYTES = 512 * 2**20  # default bound on the teacher hidden states DistillationTask keeps


@dataclass
class DistillationTask:
    tokenizer: object
    dense: nn.Module
    train_texts: List[str]
    eval_texts: List[str]
    train_batches: List[Dict[str, Tensor]]
    eval_sets: Dict[str, List[Dict[str, Tensor]]]
    dense_eval: Dict[str, Tensor]
    teacher: Dict[int, Tensor] = field(repr=False)
    hidden_weight: float = 0.0  # weight of hidden_state_loss in loss_fn (0: the embedding loss alone)
    hidden_cache_bytes: int = HIDDEN_CACHE_BYTES  # teacher hidden states kept between steps, at most these bytes
    teacher_hidden: Optional["TeacherHiddenCache"] = field(default=None, repr=False)  # made from hidden_cache_bytes

    objective = "embedding"

    def __post_init__(self):
        w = self.hidden_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= w < float("inf"):
            raise ValueError(f"hidden_weight: expected a finite number >= 0, got {w!r}")
        owner = getattr(self.teacher_hidden, "dense", None)
        if owner is not None and owner is not self.dense:  # dataclasses.replace(task, dense=...)
            raise ValueError("dense: this task's teacher embeddings and hidden states were computed by another "
                             "model; build a task for this one with build_task(...) (replace() shares the data "
                             "and caches, so only the loss settings may change)")
        if self.teacher_hidden is None or self.teacher_hidden.max_bytes != self.hidden_cache_bytes:
            self.teacher_hidden = TeacherHiddenCache(self.hidden_cache_bytes)  # validates the budget
        self.teacher_hidden.dense = self.dense  # the model whose states it holds

    @property
    def probe_batch(self) -> Dict[str, Tensor]:
        """A held-out batch to compare the compacted and the masked model on."""
        return self.eval_sets["texts"][0]

    def outputs(self, model: nn.Module, batch: Dict[str, Tensor]) -> Tensor:
        """What compaction must preserve: the embeddings."""
        return encode(model, batch)

    def loss_fn(self, model: nn.Module, batch: Dict[str, Tensor]) -> Tensor:
        """``mean(1 - cos)`` of the student's embeddings of a training batch to the teacher's, plus
        ``hidden_weight`` times :func:`hidden_state_loss` of its layers' hidden states when that is not 0."""
        if not self.hidden_weight:
            return distillation_loss(encode(model, batch), self.teacher_embeddings(batch))
        out = model(**batch, output_hidden_states=True)
        emb = nn.functional.normalize(mean_pool(out.last_hidden_state, batch["attention_mask"]).float(), dim=-1)
        hidden = hidden_state_loss(out.hidden_states[1:], self.teacher_hidden_states(batch), batch["attention_mask"])
        return distillation_loss(emb, self.teacher_embeddings(batch)) + self.hidden_weight * hidden

    def teacher_embeddings(self, batch: Dict[str, Tensor]) -> Tensor:
        """The dense model's embeddings of ``batch``: kept for the task's training batches, computed now for a
        batch of the caller's own (it raised ``KeyError``)."""
        kept = self.teacher.get(id(batch))
        if kept is not None and kept.shape[0] == batch["input_ids"].shape[0]:
            return kept
        return embed(self.dense, [batch])

    @torch.no_grad()
    def teacher_hidden_states(self, batch: Dict[str, Tensor]) -> Tuple[Tensor, ...]:
        """The dense model's hidden states after each encoder layer on ``batch`` (eval mode, float32): from
        the cache, else computed now (and kept if they fit the cache's budget)."""
        states = self.teacher_hidden.get(batch)
        if states is None:
            if self.dense.training:
                self.dense.eval()
            states = self.dense(**batch, output_hidden_states=True).hidden_states[1:]
            self.teacher_hidden.put(batch, states)
            states = tuple(h.float() for h in states)
        return states

    @torch.no_grad()
    def evaluate(self, model: nn.Module, progress: bool = False, desc: str = "student") -> Dict[str, float]:
        new = {k: embed(model, v, progress, f"{desc} {k}") for k, v in self.eval_sets.items()}
        cos = (self.dense_eval["texts"] * new["texts"]).sum(-1)
        if "queries" not in new:  # held-out texts too short to split into query/document halves
            nan = float("nan")
            return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "top1_agreement": nan,
                    "top1_accuracy": nan, "top1_accuracy_dense": nan}
        r = retrieval_metrics(self.dense_eval["queries"], self.dense_eval["docs"], new["queries"], new["docs"])
        return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                "top1_agreement": r["top1_agreement"], "top1_accuracy": r["top1_accuracy"],
                "top1_accuracy_dense": r["top1_accuracy_reference"]}


class TeacherHiddenCache:
    """The teacher's hidden states of training batches, at most ``max_bytes`` of them (0: nothing kept).

    A batch's states are kept compactly: the real tokens only (``attention_mask``), all layers in one tensor of
    the dense model's dtype; :meth:`get` scatters them back into zero padding (the loss never reads padded
    positions, so it is the same). Batches are kept in the order they come while they fit; a batch that does not
    fit is recomputed every time it is used (for batches cycled in a fixed order, evicting would make every
    lookup miss). ``nbytes``: the bytes held, never above ``max_bytes``.

    A batch is found by ``id`` and matched by its tensors' identity and version: a dict whose tensors were
    replaced or modified in place since (or another dict at a freed one's ``id``) misses, and its stale entry
    is dropped, so it is recomputed and kept in its place."""

    def __init__(self, max_bytes: int = 0):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, numbers.Integral) or max_bytes < 0:
            raise ValueError(f"hidden_cache_bytes: expected an int >= 0 (bytes; 0 keeps nothing), got {max_bytes!r}")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.dense: Optional[nn.Module] = None  # the teacher whose states these are (set by DistillationTask)
        self._entries: Dict[int, Tuple[tuple, Tensor]] = {}  # id(batch) -> (_identity(batch), packed states)

    def __len__(self) -> int:
        return len(self._entries)

    def _lookup(self, batch: Dict[str, Tensor]) -> Optional[Tensor]:
        """The packed states kept for ``batch``; a stale entry at its ``id`` is dropped (see the class notes)."""
        entry = self._entries.get(id(batch))
        if entry is None:
            return None
        kept, now = entry[0], _identity(batch)
        if len(kept) == len(now) and all(a[0] == b[0] and a[1] is b[1] and a[2] == b[2] for a, b in zip(kept, now)):
            return entry[1]
        del self._entries[id(batch)]
        self.nbytes -= entry[1].numel() * entry[1].element_size()
        return None

    def get(self, batch: Dict[str, Tensor]) -> Optional[Tuple[Tensor, ...]]:
        packed = self._lookup(batch)
        if packed is None:
            return None
        mask = batch["attention_mask"].bool()
        full = packed.new_zeros((packed.shape[0],) + tuple(mask.shape) + (packed.shape[-1],), dtype=torch.float32)
        full[:, mask] = packed.float()
        return tuple(full.unbind(0))

    def put(self, batch: Dict[str, Tensor], states: Sequence[Tensor]) -> bool:
        """Keep ``states`` (one ``(batch, tokens, hidden)`` tensor per layer) if they fit; returns whether."""
        mask = batch["attention_mask"].bool()
        size = len(states) * int(mask.sum()) * states[0].shape[-1] * states[0].element_size()
        if self._lookup(batch) is not None or self.nbytes + size > self.max_bytes:
            return False
        packed = torch.stack([h[mask] for h in states])  # (layers, real tokens, hidden)
        self._entries[id(batch)] = (_identity(batch), packed)
        self.nbytes += size
        return True


def _identity(batch: Dict[str, Tensor]) -> tuple:
    """``(key, tensor, version)`` of the batch's tensors (the tensors held, so identity is sound; version
    None for an inference tensor, which has none)."""
    return tuple((k, v, tensor_version(v))
                 for k, v in sorted(batch.items(), key=lambda kv: str(kv[0])) if isinstance(v, Tensor))


def hidden_state_loss(student: Sequence[Tensor], teacher: Sequence[Tensor], attention_mask: Tensor) -> Tensor:
    """CoFi's layer distillation at equal width: layer ``l`` of the student to layer ``l`` of the teacher.

    Per layer, the squared error of the hidden states summed over the real tokens (``attention_mask``)
    over the teacher's squared norm on the same tokens (a relative error: 0 when equal, 1 for a zero
    state), averaged over layers."""
    if len(student) != len(teacher):
        raise ValueError(f"hidden states: the student has {len(student)} layers, the teacher {len(teacher)}")
    mask = attention_mask.unsqueeze(-1).float()
    losses = []
    for s, t in zip(student, teacher):
        if s.shape != t.shape:
            raise ValueError(f"hidden states: student {tuple(s.shape)} vs teacher {tuple(t.shape)} (the layer-wise "
                             "loss needs the same width: prune MLP channels and heads, not the hidden dimension)")
        losses.append(((s.float() - t) ** 2 * mask).sum() / (t ** 2 * mask).sum().clamp_min(1e-12))
    return torch.stack(losses).mean()


def build_task(tokenizer, dense: nn.Module, n_train: int, n_eval: int, batch_size: int, max_length: int,
               seed: int = 0, progress: bool = False,
               texts: Optional[Tuple[List[str], List[str]]] = None,
               hidden_weight: float = 0.0, hidden_cache_bytes: int = HIDDEN_CACHE_BYTES) -> DistillationTask:
    """Texts, batches and the dense model's embeddings (``dense`` is put in eval mode and not changed).

    ``texts``: ``(train, held-out)`` texts of the user's own (default: the stdlib docstrings).
    ``hidden_weight``: the layer-wise hidden-state term's weight in ``loss_fn`` (default 0: off);
    ``hidden_cache_bytes``: at most how many bytes of the teacher's hidden states to keep (0: recompute them)."""
    dense.eval()
    train_texts, eval_texts = stdlib_corpus(n_train, n_eval, seed=seed) if texts is None else texts
    queries, docs = query_document_pairs(eval_texts)
    train_batches = tokenize_batches(tokenizer, train_texts, batch_size, max_length)
    pairs = (("queries", queries), ("docs", docs)) if len(queries) >= 2 else ()
    eval_sets = {name: tokenize_batches(tokenizer, texts, 64, max_length)
                 for name, texts in (("texts", eval_texts),) + pairs}
    teacher_all = embed(dense, train_batches, progress, "teacher embeddings")
    teacher, start = {}, 0
    for b in train_batches:
        teacher[id(b)] = teacher_all[start:start + b["input_ids"].shape[0]]
        start += b["input_ids"].shape[0]
    dense_eval = {k: embed(dense, v, progress, f"dense {k}") for k, v in eval_sets.items()}
    return DistillationTask(tokenizer, dense, train_texts, eval_texts, train_batches, eval_sets, dense_eval, teacher,
                            hidden_weight=hidden_weight, hidden_cache_bytes=hidden_cache_bytes)

"""The language-modelling task of ``masked-dora prune --objective lm``: next-token loss on the user's text.

A causal LM learns its own next tokens on the training texts (cross-entropy, padding masked out), and
is evaluated on held-out texts against the dense model it came from: held-out perplexity (the mean
next-token negative log-likelihood, exponentiated, over every real token), the dense model's perplexity
on the same tokens, and top-1 agreement (how often the pruned model's most likely next token is the
dense model's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .embedding import tokenize_batches


def _shifted(batch: Dict[str, Tensor], logits: Tensor):
    """Logits for positions 0..T-2, their next tokens, and which of them are real tokens."""
    return logits[:, :-1], batch["input_ids"][:, 1:], batch["attention_mask"][:, 1:].bool()


def next_token_loss(model: nn.Module, batch: Dict[str, Tensor]) -> Tensor:
    """Mean cross-entropy of every real next token (float32)."""
    logits, target, real = _shifted(batch, model(input_ids=batch["input_ids"],
                                                 attention_mask=batch["attention_mask"]).logits)
    return F.cross_entropy(logits[real].float(), target[real])


@dataclass
class LanguageModelingTask:
    tokenizer: object
    dense: nn.Module
    train_texts: List[str]
    eval_texts: List[str]
    train_batches: List[Dict[str, Tensor]]
    eval_batches: List[Dict[str, Tensor]]
    dense_eval: Dict[str, float]

    objective = "lm"

    @property
    def probe_batch(self) -> Dict[str, Tensor]:
        """A held-out batch to compare the compacted and the masked model on."""
        return self.eval_batches[0]

    def loss_fn(self, model: nn.Module, batch: Dict[str, Tensor]) -> Tensor:
        return next_token_loss(model, batch)

    def outputs(self, model: nn.Module, batch: Dict[str, Tensor]) -> Tensor:
        """What compaction must preserve: the logits."""
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, progress: bool = False, desc: str = "student") -> Dict[str, float]:
        model.eval()
        nll, agree, tokens = 0.0, 0, 0
        for batch in self.eval_batches:
            logits, target, real = _shifted(batch, self.outputs(model, batch))
            dense_logits = _shifted(batch, self.outputs(self.dense, batch))[0]
            nll += float(F.cross_entropy(logits[real], target[real], reduction="sum"))
            agree += int((logits[real].argmax(-1) == dense_logits[real].argmax(-1)).sum())
            tokens += int(real.sum())
        return {"perplexity": math.exp(nll / tokens), "top1_agreement": agree / tokens,
                "perplexity_dense": self.dense_eval["perplexity"]}


@torch.no_grad()
def build_lm_task(tokenizer, dense: nn.Module, train_texts: List[str], eval_texts: List[str], batch_size: int,
                  max_length: int) -> LanguageModelingTask:
    """Tokenised batches and the dense model's held-out perplexity (``dense`` is put in eval mode)."""
    dense.eval()
    train_batches = tokenize_batches(tokenizer, train_texts, batch_size, max_length)
    eval_batches = tokenize_batches(tokenizer, eval_texts, 32, max_length)
    task = LanguageModelingTask(tokenizer, dense, train_texts, eval_texts, train_batches, eval_batches, {})
    nll, tokens = 0.0, 0
    for batch in eval_batches:
        logits, target, real = _shifted(batch, task.outputs(dense, batch))
        nll += float(F.cross_entropy(logits[real], target[real], reduction="sum"))
        tokens += int(real.sum())
    if tokens == 0:
        raise ValueError("data: the held-out texts have no next token to predict (texts of one token?)")
    task.dense_eval["perplexity"] = math.exp(nll / tokens)
    return task

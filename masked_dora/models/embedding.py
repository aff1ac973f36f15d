"""Sentence embeddings (mean pooling) for distillation and evaluation of encoder models."""

from __future__ import annotations

import statistics
import time
from typing import Dict, List, Sequence

import torch
from torch import Tensor, nn


def mean_pool(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of the token states over the attention mask (sentence-transformers' mean pooling)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)


def encode(model: nn.Module, batch: Dict[str, Tensor]) -> Tensor:
    """L2-normalised mean-pooled embeddings of one tokenised batch."""
    out = model(**batch)
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is None:
        raise TypeError(f"model: expected an encoder returning last_hidden_state, got {type(out).__name__}")
    return nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]).float(), dim=-1)


def tokenize_batches(tokenizer, texts: Sequence[str], batch_size: int, max_length: int) -> List[Dict[str, Tensor]]:
    batches = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        batches.append({k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc})
    return batches


@torch.no_grad()
def embed(model: nn.Module, batches: Sequence[Dict[str, Tensor]], progress: bool = False,
          desc: str = "embed") -> Tensor:
    model.eval()
    it = batches
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc=desc, unit="batch", leave=False)
    return torch.cat([encode(model, b) for b in it])


def distillation_loss(student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
    """``mean(1 - cos(student, teacher))``."""
    return (1.0 - nn.functional.cosine_similarity(student_emb, teacher_emb, dim=-1)).mean()


def retrieval_metrics(q_ref: Tensor, d_ref: Tensor, q_new: Tensor, d_new: Tensor) -> Dict[str, float]:
    """Top-1 retrieval: agreement of the new model with the reference, and each one's accuracy on the pairs."""
    top_ref = (q_ref @ d_ref.T).argmax(1)
    top_new = (q_new @ d_new.T).argmax(1)
    target = torch.arange(q_ref.shape[0])
    return {"top1_agreement": float((top_ref == top_new).float().mean()),
            "top1_accuracy_reference": float((top_ref == target).float().mean()),
            "top1_accuracy": float((top_new == target).float().mean())}


@torch.no_grad()
def latency_ms(model: nn.Module, batch: Dict[str, Tensor], repeats: int = 7, warmup: int = 2) -> float:
    """Median wall time of one forward on ``batch`` in milliseconds."""
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            model(**batch)
            if i >= warmup:
                times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

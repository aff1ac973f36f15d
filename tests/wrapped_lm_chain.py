"""The chain of a model whose language model a spec wraps (VLMs: tests/test_models_vlm.py; audio LMs:
tests/test_models_audio_lm.py), shared: a training step with labels, the tensors outside the language model's
blocks, and prepare → a training step → harden → compact → save, with the reference and compacted logits on each
kind of input. Each test file supplies its own inputs (images, audio features) and rows."""

from __future__ import annotations

import os
import re
from typing import Callable, Dict, Sequence

import torch

from tiny_models import randomize_adapters


def row_unavailable_reason(tiny) -> str:
    """Why this transformers cannot run a tiny-model row (``classes``, ``since``/``since_why`` and, where the row
    has them, ``broken_in``/``broken_why``); "" where it can."""
    import transformers

    if not all(hasattr(transformers, name) for name in tiny.classes):
        return f"transformers {transformers.__version__} has no {tiny.classes}"
    version = tuple(int(n) for n in re.findall(r"\d+", transformers.__version__)[:2])
    if tiny.since and version < tiny.since:
        return f"transformers {transformers.__version__} < {'.'.join(map(str, tiny.since))}: {tiny.since_why}"
    if version in getattr(tiny, "broken_in", ()):
        return f"transformers {transformers.__version__}: {tiny.broken_why}"
    return ""


def train_step(model, inputs: dict, eval_while_training: Sequence[str] = ()) -> None:
    """One optimizer step (SGD) of the model's own loss on ``inputs`` (with labels), adapters and mask logits;
    the modules ``eval_while_training`` stay in eval mode (BatchNorm towers)."""
    model.train()
    for name in eval_while_training:
        model.get_submodule(name).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    model(**inputs).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    torch.optim.SGD(params, lr=1e-2).step()
    model.eval()


def outside_blocks(model, block_lists: Sequence[str]) -> dict:
    """Every tensor but the language model's blocks': the tower, the projector, the embeddings, the head."""
    blocks = tuple(f"{block_list}." for block_list in block_lists)
    return {k: v.detach().clone() for k, v in model.state_dict().items() if not k.startswith(blocks)}


def compact_chain(model, config, block_lists: Sequence[str], train: Callable, inputs: Dict[str, dict], media: str,
                  path: str, one_row: Dict[str, dict]) -> dict:
    """prepare_model(``config``) → random adapters → ``train(model)`` → harden → the masked model's logits on each
    kind of ``inputs`` (``{"image": ..., "text": ...}``) → compact → the compacted model's → save to ``path``, with
    the ``media`` inputs (for a reload in a clean process). Returns what the tests read."""
    from masked_dora.models import compact_model, harden, prepare_model

    before = outside_blocks(model, block_lists)
    prepare_model(model, config)
    randomize_adapters(model)
    train(model)
    harden(model)
    with torch.no_grad():
        ref = {k: model(**v).logits for k, v in inputs.items()}
        small = compact_model(model)
        out = {k: small(**v).logits for k, v in inputs.items()}
    small.save_pretrained(path)
    torch.save(inputs[media], os.path.join(path, "inputs.pt"))
    return dict(model=model, small=small, before=before, inputs=inputs, ref=ref, out=out, path=path, one_row=one_row)

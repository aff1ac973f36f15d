"""Shared steps of the hierarchical image encoders' tests (tests/test_models_swin.py, tests/test_models_segformer.py):
tiny images, one training step, relative error, and one stage pruned alone with its training state reloaded."""

from __future__ import annotations

import torch

from masked_dora.models import (MaskedDoRAConfig, compact_model, get_state, harden, load_training_state, prepare_model,
                                save_training_state)

from tiny_models import output_tensor, randomize_adapters

PRUNE = dict(rank=2, alignment={"mlp": 8}, importance="none", target_sparsity=0.5)


def images(seed: int = 1, size: int = 32) -> dict:
    return {"pixel_values": torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))}


def train_step(model) -> None:
    """One optimizer step on the adapters and mask logits (the training path: gates sampled, gradients reach them)."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-2)
    output_tensor(model(**images(2))).float().pow(2).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    opt.step()
    model.eval()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


def compact_equal(model, train: bool = True):
    """Random adapters, one training step (``train``), harden, compact: returns the masked model's output on
    :func:`images` and the compacted model, after checking that the compacted model computes that output."""
    randomize_adapters(model)
    if train:
        train_step(model)
    harden(model)
    inputs = images()
    with torch.no_grad():
        ref = output_tensor(model(**inputs))
        small = compact_model(model)
        assert rel_err(output_tensor(small(**inputs)), ref) < 1e-5
    return ref, small


def one_stage_round_trip(model, fresh, tmp_path, groups: list):
    """Prune stage 1 alone (``stacks=("stage1",)``; ``groups``: the group names expected, which keep their block
    numbers across stages), save the training state, reload it into ``fresh`` (same outputs), harden both, compact
    ``fresh``: returns the compacted model after checking it computes the masked one."""
    prepare_model(model, MaskedDoRAConfig(target_groups=("mlp", "heads"), stacks=("stage1",), **PRUNE))
    assert sorted(get_state(model).groups) == groups
    randomize_adapters(model)
    save_training_state(model, str(tmp_path))
    load_training_state(fresh, str(tmp_path))
    inputs = images()
    with torch.no_grad():
        for m in (model, fresh):
            harden(m)
        ref = output_tensor(model(**inputs))
        assert rel_err(output_tensor(fresh(**inputs)), ref) < 1e-6
        small = compact_model(fresh)
        assert rel_err(output_tensor(small(**inputs)), ref) < 1e-5
    return small

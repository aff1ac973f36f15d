"""Compacted-LLM inference on this CPU: a Llama-shaped model, dense against compacted (issue 15's benchmark).

The model (issue 15): hidden 2048, intermediate 5632, 16 heads / 4 KV heads, 8 layers, random weights, fp32,
vocabulary 1024 (the LM head is not what is measured), SDPA attention. The compacted model comes the way a
user gets one: ``prepare_model`` → random mask logits → ``harden`` (25% or 50% of the MLP channels, in
blocks of 64, and of the KV groups with their query heads) → ``compact_model``; its logits are checked against
the masked model's. Timing and phases are ``bench/gpu_block.py``'s ``block_section`` (median of 5 wall-clock
calls after one warm-up): prefill of 1 x 512 and 1 x 2048 tokens, and decode of one token for batch 1 and 8
against a KV cache of 512 tokens (tokens/s = batch / time per step).

Configurations (``--configs``): MLP+heads at 25% and 50%; MLP+heads at 25% with the hidden dimension pruned
25% too, ``hidden_mode="global"`` (a plain smaller model) and ``"per_block"`` (the residual stream stays full
width; each block gathers its kept channels and its writers scatter back); and MLP+heads alone at about the
per-block model's kept block parameters, so that the two ways of spending the same parameter budget compare.

Targets (issue 15, this CPU): at 25% MLP+heads >= 1.25x prefill and >= 1.2x decode; at 50% >= 1.6x prefill;
the per-block hidden mode adds speed on top at equal kept parameters (or the README says why not).

Run: ``python bench/compacted_inference.py [--out bench/results/cpu-<date>-compacted-inference]``
(about 5 minutes per configuration on 2 cores); writes ``.json`` and ``.md``.
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
from timing import commit_of, cpu_name, write_results  # noqa: E402

SHAPE = dict(layers=8, hidden=2048, intermediate=5632, heads=16, kv_heads=4, vocab=1024)
# name: (what is pruned, sparsity per kind, hidden_mode)
CONFIGS = {
    "mh25": ("MLP+heads 25%", {"mlp": 0.25, "heads": 0.25}, None),
    "mh50": ("MLP+heads 50%", {"mlp": 0.5, "heads": 0.5}, None),
    "hidden_global": ("MLP+heads 25%, hidden 25% global", {"mlp": 0.25, "heads": 0.25, "hidden": 0.25}, "global"),
    "hidden_per_block": ("MLP+heads 25%, hidden 25% per block", {"mlp": 0.25, "heads": 0.25, "hidden": 0.25},
                         "per_block"),
    # MLP+heads alone at about the per-block model's kept block parameters (25.3M against 25.4M of 45.1M)
    "mh_matched": ("MLP 42%, heads 50% (the per-block model's kept parameters)", {"mlp": 0.42, "heads": 0.5}, None),
}
TARGETS = {("mh25", "prefill"): 1.25, ("mh25", "decode"): 1.2, ("mh50", "prefill"): 1.6}


def markdown(rows, meta) -> str:
    device, dtype = meta.get("device", "cpu"), meta.get("dtype", "float32")
    where = (f"{meta['machine']}, {meta['threads']} threads, no GPU" if device == "cpu"
             else f"{meta.get('gpu', device)} (CUDA {meta.get('cuda')})")
    lines = [f"# Compacted-LLM inference, dense against compacted ({meta['date']}, {device.upper()})", "",
             f"- Command: `{meta['command']}`.",
             f"- Machine: {where}. Versions: torch {meta['torch']}, "
             f"transformers {meta['transformers']}. Commit `{meta['commit']}`.",
             f"- Model: {SHAPE['layers']} Llama layers, hidden {SHAPE['hidden']}, intermediate "
             f"{SHAPE['intermediate']}, {SHAPE['heads']} heads / {SHAPE['kv_heads']} KV heads, {dtype}, "
             "random weights; "
             "the compacted one through prepare_model → harden → compact_model (see the script's docstring).", "",
             "| pruned | kept block parameters | phase | batch x tokens (context) | dense tokens/s | compact tokens/s "
             "| speed-up | target |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if row["model"] != "compact":
            continue
        dense = next(r for r in rows if r["model"] == "dense" and r["config"] == row["config"]
                     and r["phase"] == row["phase"] and r["batch"] == row["batch"] and r["tokens"] == row["tokens"])
        target = TARGETS.get((row["config"], row["phase"]))
        met = "" if target is None else f"≥ {target}x: {'met' if row['speedup_vs_dense'] >= target else 'not met'}"
        shape = f"{row['batch']} x {row['tokens']}" + (f" ({row['context']})" if row["context"] else "")
        kept = f"{row['block_params_m']:.1f}M ({row['block_params_m'] / dense['block_params_m']:.0%})"
        lines.append(f"| {CONFIGS[row['config']][0]} | {kept} | {row['phase']} | {shape} | "
                     f"{dense['tokens_per_s']:.1f} | {row['tokens_per_s']:.1f} | {row['speedup_vs_dense']:.2f}x "
                     f"| {met} |")
    kept = {r["config"]: (r["hidden"], r["intermediate"], r["heads"], r["kv_heads"], r["form"])
            for r in rows if r["model"] == "compact"}
    lines += ["", "Kept per layer (hidden channels read and written, intermediate, heads, KV heads, checkpoint "
              "form): " + "; ".join(f"{CONFIGS[c][0]}: {v}" for c, v in kept.items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="output path without extension "
                                                    "(default: bench/results/<device>-<date>-compacted-inference)")
    parser.add_argument("--device", default="cpu",
                        help="cpu, or cuda (bench/gpu_check.sh: bf16; UNRUN on a GPU so far)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS),
                        help="what to prune (default: all of %(default)s)")
    args = parser.parse_args(argv)
    out = args.out or f"bench/results/{args.device.split(':')[0]}-{datetime.date.today()}-compacted-inference"

    import transformers

    commit = commit_of()
    meta = dict(date=str(datetime.date.today()),
                command=" ".join(["python bench/compacted_inference.py"] + list(argv or sys.argv[1:])),
                machine=cpu_name(), threads=torch.get_num_threads(), torch=torch.__version__,
                transformers=transformers.__version__, commit=commit, device=args.device, dtype=args.dtype)
    if args.device.startswith("cuda"):
        meta.update(gpu=torch.cuda.get_device_name(args.device), cuda=torch.version.cuda)
    rows = []
    for name in args.configs:
        _, sparsity, hidden_mode = CONFIGS[name]
        for row in block_section(device=args.device, dtype=getattr(torch, args.dtype), prune=sparsity,
                                 prefill_tokens=(512, 2048),
                                 decode_batch=(1, 8), context=512, seed=0, hidden_mode=hidden_mode, **SHAPE):
            rows.append(dict(row, config=name))
            print(json.dumps({k: row[k] for k in ("phase", "batch", "tokens", "model", "ms", "speedup_vs_dense")}
                             | {"config": name}), flush=True)
        # after every configuration: a time limit (bench/gpu_check.sh's stage) keeps what was measured
        write_results(out, meta, rows, markdown(rows, meta))
    print(markdown(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())

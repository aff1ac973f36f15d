"""The per-block hidden mode's writers with the scatter fused into the residual add, against unfused (issue 15).

One compacted model (``bench/compacted_inference.py``'s Llama shape and its ``hidden_per_block`` configuration:
MLP+heads 25% and the hidden dimension 25% per block), timed twice per phase: with its ``o_proj``/``down_proj``
``CompactLinear`` writers deferring their scatter (``defer_scatter=True``, what ``compact_model`` and
``load_compact`` build: the decoder layer's ``residual + hidden_states`` becomes one fused
``compact_linear(..., residual=)``) and with them writing a zero-filled full-width output the layer then adds
(``defer_scatter=False``, the form before). The two alternate, ``--rounds`` times per phase, in this one process
(order swapped every round), each a median of ``--repeats`` calls; the speed-up is the median over rounds of
unfused time / fused time. The logits of both forms are compared first (bit-equal on the CPU kernels).

Run: ``python bench/fused_scatter.py [--device cuda --dtype bfloat16] [--out ...]``; writes ``.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from compacted_inference import CONFIGS, SHAPE  # noqa: E402
from gpu_block import _cache_kwarg, build_compact, build_dense  # noqa: E402
from timing import commit_of, cpu_name, median_timer, write_results  # noqa: E402

from masked_dora.nn import CompactLinear  # noqa: E402


def set_deferred(model: torch.nn.Module, on: bool) -> int:
    """Turn every scattering CompactLinear's deferred scatter on or off; returns how many there are."""
    layers = [m for m in model.modules() if isinstance(m, CompactLinear) and m.out_idx is not None]
    for m in layers:
        m.defer_scatter = on
    return len(layers)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--rounds", type=int, default=5, help="alternations per phase")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    from transformers import DynamicCache

    device, dtype = args.device, getattr(torch, args.dtype)
    out = args.out or f"bench/results/{device.split(':')[0]}-{datetime.date.today()}-fused-scatter"
    dense = build_dense(device, dtype, seed=0, max_positions=4096, **SHAPE)
    _, sparsity, mode = CONFIGS["hidden_per_block"]
    masked, model = build_compact(dense, sparsity, 0, mode)
    del dense, masked
    writers = set_deferred(model, True)
    timer = median_timer(device, cpu_repeats=args.repeats, cpu_warmup=1)
    gen = torch.Generator().manual_seed(1)
    ids = lambda b, n: torch.randint(0, SHAPE["vocab"], (b, n), generator=gen).to(device)  # noqa: E731
    with torch.inference_mode():
        probe = ids(2, 64)
        fused = model(probe).logits
        set_deferred(model, False)
        unfused = model(probe).logits
        diff = float((fused.float() - unfused.float()).abs().max())
    rows = []
    key = _cache_kwarg(model)
    phases = [("prefill", 1, n) for n in (512, 2048)] + [("decode", b, 1) for b in (1, 8)]
    with torch.inference_mode():
        for phase, batch, tokens in phases:
            if phase == "prefill":
                x = ids(batch, tokens)
                fn = lambda: model(x, use_cache=False).logits  # noqa: E731
            else:
                cache, step = DynamicCache(), ids(batch, 1)
                model(ids(batch, 512), use_cache=True, **{key: cache})

                def fn(cache=cache, step=step):
                    logits = model(step, use_cache=True, **{key: cache}).logits
                    cache.crop(-1)
                    return logits
            times = {True: [], False: []}
            for r in range(args.rounds):
                for on in ((True, False) if r % 2 == 0 else (False, True)):
                    set_deferred(model, on)
                    times[on].append(timer(fn))
            ratio = statistics.median(u / f for f, u in zip(times[True], times[False]))
            row = dict(phase=phase, batch=batch, tokens=tokens, fused_ms=statistics.median(times[True]),
                       unfused_ms=statistics.median(times[False]), speedup=ratio)
            rows.append(row)
            print(json.dumps(row), flush=True)
    set_deferred(model, True)
    commit = commit_of()
    import transformers

    where = (f"{cpu_name()}, {torch.get_num_threads()} threads, no GPU" if device == "cpu"
             else f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})")
    command = "python bench/fused_scatter.py " + " ".join(argv or sys.argv[1:])
    meta = dict(date=str(datetime.date.today()), command=command,
                machine=where, torch=torch.__version__, transformers=transformers.__version__, commit=commit,
                dtype=args.dtype, writers=writers, max_abs_logit_diff=diff)
    lines = [f"# Per-block hidden writers: scatter fused into the residual add vs unfused ({meta['date']})", "",
             f"- Command: `{meta['command'].strip()}`.", f"- Machine: {where}. Versions: torch {meta['torch']}, "
             f"transformers {meta['transformers']}. Commit `{commit}`.",
             f"- Model: `bench/compacted_inference.py`'s `hidden_per_block` ({CONFIGS['hidden_per_block'][0]}), "
             f"{args.dtype}; {writers} scattering writers. Fused vs unfused logits: max abs difference {diff:.3g}.",
             f"- {args.rounds} alternating rounds per phase, each the median of {args.repeats} calls; speed-up = "
             "median over rounds of unfused / fused time.", "",
             "| phase | batch x tokens | fused ms | unfused ms | speed-up |", "|---|---|---|---|---|"]
    lines += [f"| {r['phase']} | {r['batch']} x {r['tokens']} | {r['fused_ms']:.1f} | {r['unfused_ms']:.1f} | "
              f"{r['speedup']:.3f}x |" for r in rows]
    write_results(out, meta, rows, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

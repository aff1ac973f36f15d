"""One command for the GPU benchmark report: JSON + a markdown table under bench/results/.

    python bench/gpu_report.py                     # on a CUDA machine: every section, full sizes
    python bench/gpu_report.py --sections dora_train
    python bench/gpu_report.py --cpu-smoke         # no GPU: the CPU-runnable parts at tiny sizes
    python bench/gpu_report.py --quick             # one training shape, compact_linear at M = 1 and 8192
    python bench/gpu_report.py --shapes 4096x11008 --tokens 8192 --ranks 16 --compact-tokens 1 8192

Each section is a function ``(smoke: bool, device: str, **sizes) -> list[dict]``
(flat rows) registered in :data:`SECTIONS`; add a section by writing one and
listing it there. The size options (``--shapes``, ``--tokens``, ``--ranks``,
``--impls`` for dora_train; ``--compact-tokens``, ``--keeps``, ``--patterns``,
``--layers``, ``--no-compile`` for compact_linear; ``--block-layers``,
``--prefill-tokens``, ``--decode-batch``, ``--context`` for block) override a
section's defaults; ``--quick`` presets the short run of bench/gpu_check.sh (explicit
options still win). The report records the device name, torch / triton
versions and the date. The JSON and markdown files are rewritten after EACH
section (``"complete": false`` until the last one ends), so a run that is cut
off keeps every finished section; a section that raises is recorded under
``"errors"`` and the others still run (exit code 1). ``--cpu-smoke`` only
checks that the report runs end to end: its rows are CPU wall-clock times at
toy sizes, written to ``cpu-smoke-*`` files whose header says so; it never
writes GPU results.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import traceback
from typing import Callable, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def section_dora_train(smoke: bool, device: str, **sizes) -> List[dict]:
    """``sizes``: any of ``shapes``, ``tokens``, ``ranks``, ``impls`` (override the defaults)."""
    from gpu_dora import IMPLS, dora_train_section

    if smoke:  # toy sizes, fp32; the triton path is GPU-only (the interpreter's timings mean nothing)
        kw = dict(device="cpu", dtype=torch.float32, shapes=((64, 96), (96, 64)), tokens=128,
                  ranks=(4,), impls=[i for i in IMPLS if i != "masked_dora"])
        return dora_train_section(**dict(kw, **sizes))
    return dora_train_section(device=device, **sizes)


def section_compact_linear(smoke: bool, device: str, **sizes) -> List[dict]:
    """``sizes``: any of ``tokens``, ``keeps``, ``patterns``, ``layers``, ``with_compile``."""
    from gpu_compact import compact_linear_section

    if smoke:
        kw = dict(device="cpu", dtype=torch.float32, tokens=(1, 16), keeps=(0.5,), patterns=("random",),
                  shape={"hidden": 64, "intermediate": 96}, with_compile=False)
        return compact_linear_section(**dict(kw, **sizes))
    return compact_linear_section(device=device, **sizes)


def section_block(smoke: bool, device: str, **sizes) -> List[dict]:
    """``sizes``: any of ``layers``, ``prefill_tokens``, ``decode_batch``, ``context``."""
    from gpu_block import block_section

    if smoke:  # a toy Llama (4 heads -> 3, 256 MLP channels -> 192), fp32
        kw = dict(device="cpu", dtype=torch.float32, layers=2, hidden=64, intermediate=256, heads=4, kv_heads=4,
                  prefill_tokens=(16,), decode_batch=(1,), context=8, vocab=128)
        return block_section(**dict(kw, **sizes))
    return block_section(device=device, **sizes)


SECTIONS: Dict[str, Callable[[bool, str], List[dict]]] = {
    "dora_train": section_dora_train,
    "compact_linear": section_compact_linear,
    "block": section_block,
}

# columns of each section's markdown table (all row keys go to the JSON)
COLUMNS = {
    "dora_train": ["in_features", "out_features", "tokens", "rank", "mode", "impl", "backend", "ms",
                   "vs_peft_lora", "speedup_vs_peft_dora", "saved_mb", "activations_mb",
                   "activations_vs_peft_dora", "peak_mb", "peak_vs_peft_dora",
                   "rel_err_vs_torch"],
    "compact_linear": ["layer", "M", "N", "K", "keep", "pattern", "impl", "ms", "tflops", "gbps",
                       "ideal_over_t", "speedup_vs_eager", "rel_err", "timer"],
    "block": ["phase", "batch", "tokens", "context", "model", "form", "intermediate", "heads", "kv_heads", "ms",
              "tokens_per_s", "speedup_vs_dense", "params_m", "block_params_m", "rel_err_vs_masked"],
}


def environment(device: str, smoke: bool) -> dict:
    import triton

    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or 'unknown'})"
    return {"device": device, "device_name": name, "torch": torch.__version__, "triton": triton.__version__,
            "cuda": torch.version.cuda, "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "cpu_smoke": smoke, "python": platform.python_version()}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def markdown(env: dict, sections: Dict[str, List[dict]], errors: Optional[Dict[str, str]] = None,
             pending: Sequence[str] = ()) -> str:
    head = "CPU SMOKE RUN (toy sizes, CPU wall clock; NOT GPU results)" if env["cpu_smoke"] else "GPU report"
    lines = [f"# masked_dora benchmark: {head}", "",
             f"device: {env['device_name']} | torch {env['torch']} | triton {env['triton']} | "
             f"CUDA {env['cuda']} | {env['date']}", ""]
    if env.get("sizes"):
        lines += [f"sizes: {json.dumps(env['sizes'])}", ""]
    if pending:
        lines += [f"INCOMPLETE: sections not finished (yet): {', '.join(pending)}", ""]
    for name, rows in sections.items():
        lines += [f"## {name}", ""]
        if errors and name in errors:
            lines += ["FAILED: " + errors[name].strip().splitlines()[-1], ""]
        if not rows:
            lines += ["(no rows)", ""]
            continue
        cols = [c for c in COLUMNS.get(name, list(rows[0])) if c in rows[0]]
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for row in rows:
            lines.append("| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
        lines.append("")
    return "\n".join(lines)


# --quick (GPU only; ignored with --cpu-smoke): what bench/gpu_check.sh measures in its time box
QUICK = {"shapes": [(4096, 11008)], "tokens": [8192], "ranks": [16], "compact_tokens": [1, 8192], "keeps": [0.75],
         "patterns": ["random", "runs8"]}


def _shape(text: str):
    try:
        k, n = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected INxOUT such as 4096x11008, got {text!r}") from None
    return (k, n)


def section_sizes(args) -> Dict[str, dict]:
    """The per-section size overrides given on the command line (``--quick`` fills the ones not given)."""
    quick = QUICK if args.quick and not args.cpu_smoke else {}
    pick = lambda name: getattr(args, name) if getattr(args, name) is not None else quick.get(name)  # noqa: E731
    dora = {"shapes": pick("shapes"), "tokens": pick("tokens"), "ranks": pick("ranks"), "impls": args.impls}
    compact = {"tokens": pick("compact_tokens"), "keeps": pick("keeps"), "patterns": pick("patterns"),
               "layers": args.layers, "with_compile": False if args.no_compile else None}
    block = {"layers": args.block_layers, "prefill_tokens": args.prefill_tokens, "decode_batch": args.decode_batch,
             "context": args.context}
    return {"dora_train": {k: v for k, v in dora.items() if v is not None},
            "compact_linear": {k: v for k, v in compact.items() if v is not None},
            "block": {k: v for k, v in block.items() if v is not None}}


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)  # a reader (or a cut-off run) never sees half a file


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run the CPU-runnable parts at tiny sizes (checks the script; no GPU numbers)")
    parser.add_argument("--out", default=RESULTS, help="output folder (default bench/results)")
    parser.add_argument("--quick", action="store_true", help=f"short run: {json.dumps(QUICK)}")
    sizes = parser.add_argument_group("sizes (override a section's defaults)")
    sizes.add_argument("--shapes", nargs="+", type=_shape, help="dora_train: INxOUT layer shapes, e.g. 4096x11008")
    sizes.add_argument("--tokens", nargs="+", type=int, help="dora_train: tokens per batch (one or more)")
    sizes.add_argument("--ranks", nargs="+", type=int, help="dora_train: LoRA ranks")
    sizes.add_argument("--impls", nargs="+", help="dora_train: implementations (see bench/gpu_dora.py IMPLS)")
    sizes.add_argument("--compact-tokens", nargs="+", type=int, help="compact_linear: token counts M")
    sizes.add_argument("--keeps", nargs="+", type=float, help="compact_linear: kept fractions")
    sizes.add_argument("--patterns", nargs="+", choices=["random", "runs8"], help="compact_linear: index patterns")
    sizes.add_argument("--layers", nargs="+", choices=["down_gather", "o_scatter_residual"],
                       help="compact_linear: layers")
    sizes.add_argument("--no-compile", action="store_true", help="compact_linear: no torch.compile baseline")
    sizes.add_argument("--block-layers", type=int, help="block: decoder layers of the Llama-7B-sized model")
    sizes.add_argument("--prefill-tokens", nargs="+", type=int, help="block: prefill lengths (batch 1)")
    sizes.add_argument("--decode-batch", nargs="+", type=int, help="block: decode batch sizes")
    sizes.add_argument("--context", type=int, help="block: cached tokens for decode")
    args = parser.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        parser.error("no CUDA GPU: the report measures GPU kernels; use --cpu-smoke to check it runs here")
    device = "cpu" if args.cpu_smoke else "cuda"
    overrides = section_sizes(args)
    env = environment(device, args.cpu_smoke)
    env["sizes"] = {name: overrides[name] for name in args.sections if overrides.get(name)}
    env["autotune"] = os.environ.get("MASKED_DORA_AUTOTUNE") or "full"
    os.makedirs(args.out, exist_ok=True)
    stamp = env["date"].replace(":", "").replace("+0000", "Z")
    prefix = "cpu-smoke" if args.cpu_smoke else "gpu-report"
    base = os.path.join(args.out, f"{prefix}-{stamp}")
    results: Dict[str, List[dict]] = {}
    errors: Dict[str, str] = {}

    def write(pending: Sequence[str]) -> str:
        report = {"environment": env, "complete": not pending, "pending": list(pending), "sections": results}
        if errors:
            report["errors"] = errors
        _write(base + ".json", json.dumps(report, indent=1) + "\n")
        md = markdown(env, results, errors, pending)
        _write(base + ".md", md + "\n")
        return md

    write(args.sections)
    for i, name in enumerate(args.sections):
        print(f"== section {name}", flush=True)
        try:
            results[name] = SECTIONS[name](args.cpu_smoke, device, **overrides.get(name, {}))
        except Exception:  # keep the other sections: record the failure, go on
            errors[name] = traceback.format_exc()
            results[name] = []
            print(errors[name], file=sys.stderr, flush=True)
        write(args.sections[i + 1:])  # after EACH section: a cut-off run keeps what finished
        print(f"   wrote {base}.json and {base}.md ({name} done)", flush=True)
    print(write(()))
    print(f"wrote {base}.json and {base}.md")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

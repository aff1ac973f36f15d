"""One command for the GPU benchmark report: JSON + a markdown table under bench/results/.

    python bench/gpu_report.py                     # on a CUDA machine: every section, full sizes
    python bench/gpu_report.py --sections dora_train
    python bench/gpu_report.py --cpu-smoke         # no GPU: the CPU-runnable parts at tiny sizes

Each section is a function ``(smoke: bool, device: str) -> list[dict]`` (flat
rows) registered in :data:`SECTIONS`; add a section by writing one and listing
it there. The report records the device name, torch / triton versions and the
date. ``--cpu-smoke`` only checks that the report runs end to end: its rows are
CPU wall-clock times at toy sizes, written to ``cpu-smoke-*`` files whose
header says so; it never writes GPU results.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
from typing import Callable, Dict, List

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def section_dora_train(smoke: bool, device: str) -> List[dict]:
    from gpu_dora import IMPLS, dora_train_section

    if smoke:  # toy sizes, fp32; the triton path is GPU-only (the interpreter's timings mean nothing)
        return dora_train_section(device="cpu", dtype=torch.float32, shapes=((64, 96), (96, 64)), tokens=128,
                                  ranks=(4,), impls=[i for i in IMPLS if i != "masked_dora"])
    return dora_train_section(device=device)


def section_compact_linear(smoke: bool, device: str) -> List[dict]:
    from gpu_compact import compact_linear_section

    if smoke:
        return compact_linear_section(device="cpu", dtype=torch.float32, tokens=(1, 16), keeps=(0.5,),
                                      patterns=("random",), shape={"hidden": 64, "intermediate": 96},
                                      with_compile=False)
    return compact_linear_section(device=device)


SECTIONS: Dict[str, Callable[[bool, str], List[dict]]] = {
    "dora_train": section_dora_train,
    "compact_linear": section_compact_linear,
}

# columns of each section's markdown table (all row keys go to the JSON)
COLUMNS = {
    "dora_train": ["in_features", "out_features", "tokens", "rank", "mode", "impl", "backend", "ms",
                   "vs_peft_lora", "speedup_vs_peft_dora", "saved_mb", "peak_mb", "peak_vs_peft_dora",
                   "rel_err_vs_torch"],
    "compact_linear": ["layer", "M", "N", "K", "keep", "pattern", "impl", "ms", "tflops", "gbps",
                       "ideal_over_t", "speedup_vs_eager", "rel_err"],
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


def markdown(env: dict, sections: Dict[str, List[dict]]) -> str:
    head = "CPU SMOKE RUN (toy sizes, CPU wall clock; NOT GPU results)" if env["cpu_smoke"] else "GPU report"
    lines = [f"# masked_dora benchmark: {head}", "",
             f"device: {env['device_name']} | torch {env['torch']} | triton {env['triton']} | "
             f"CUDA {env['cuda']} | {env['date']}", ""]
    for name, rows in sections.items():
        lines += [f"## {name}", ""]
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run the CPU-runnable parts at tiny sizes (checks the script; no GPU numbers)")
    parser.add_argument("--out", default=RESULTS, help="output folder (default bench/results)")
    args = parser.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        parser.error("no CUDA GPU: the report measures GPU kernels; use --cpu-smoke to check it runs here")
    device = "cpu" if args.cpu_smoke else "cuda"
    env = environment(device, args.cpu_smoke)
    results: Dict[str, List[dict]] = {}
    for name in args.sections:
        print(f"== section {name}", flush=True)
        results[name] = SECTIONS[name](args.cpu_smoke, device)
    os.makedirs(args.out, exist_ok=True)
    stamp = env["date"].replace(":", "").replace("+0000", "Z")
    prefix = "cpu-smoke" if args.cpu_smoke else "gpu-report"
    base = os.path.join(args.out, f"{prefix}-{stamp}")
    with open(base + ".json", "w") as f:
        json.dump({"environment": env, "sections": results}, f, indent=1)
    md = markdown(env, results)
    with open(base + ".md", "w") as f:
        f.write(md + "\n")
    print(md)
    print(f"wrote {base}.json and {base}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

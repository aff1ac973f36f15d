"""One timer for the GPU report's sections (milliseconds per call, median), and what result files record: the CPU's
name, the library's commit, and the ``.json`` + ``.md`` pair."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from typing import Callable, Optional


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for result headers."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def median_timer(device: str, cpu_repeats: int = 7, cpu_warmup: int = 2) -> Callable[[Callable], float]:
    """ms per call of ``fn()``: ``triton.testing.do_bench`` median (warm-up 25 ms, 100 ms of repeats, L2
    flushed) on CUDA; on the CPU (smoke runs only) the median of ``cpu_repeats`` wall-clock calls after
    ``cpu_warmup`` untimed ones."""
    if device == "cuda":
        import triton.testing as tt

        return lambda fn: float(tt.do_bench(fn, warmup=25, rep=100, return_mode="median"))

    def run_cpu(fn):
        for _ in range(cpu_warmup):
            fn()
        times = []
        for _ in range(cpu_repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    return run_cpu


def commit_of(library: Optional[str] = None) -> str:
    """The short commit of the library's checkout (default: this one), with " + uncommitted changes" when
    ``masked_dora/`` differs from it; "" outside a git checkout."""
    lib = library or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args):
        return subprocess.run(["git", "-C", lib, *args], capture_output=True, text=True).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    return commit + (" + uncommitted changes" if commit and git("status", "--porcelain", "masked_dora") else "")


def write_results(base: str, meta: dict, rows: list, markdown: str) -> None:
    """``base.json`` (``{"meta": meta, "rows": rows}``) and ``base.md`` (``markdown``)."""
    with open(base + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(base + ".md", "w") as f:
        f.write(markdown)

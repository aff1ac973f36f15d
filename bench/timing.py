"""One timer for the GPU report's sections (milliseconds per call, median), and the CPU name for result headers."""

from __future__ import annotations

import platform
import statistics
import time
from typing import Callable


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

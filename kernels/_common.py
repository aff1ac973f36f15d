"""Shared pieces of the Triton backend: backend predicates, autotune configs, dtype helpers.

Nothing here touches CUDA at import time.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Dict, List, Sequence, Tuple

import torch
import triton
import triton.language as tl

from masked_dora.ops.precision import fp32_matmul_uses_tf32

SUPPORTED_DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# largest rank whose whole LoRA slice lives in registers (row norm, fused dgrad)
MAX_FUSED_RANK = 128


def is_interpreted(kernel) -> bool:
    """True if ``kernel`` was defined under ``TRITON_INTERPRET=1`` (it then runs on CPU tensors)."""
    fn = getattr(kernel, "fn", kernel)  # unwrap an Autotuner
    return type(kernel).__name__ == "InterpretedFunction" or type(fn).__name__ == "InterpretedFunction"


# The CPU interpreter of older Triton releases mis-handles scalar loop bounds (`range(0, K, BLOCK_K)`),
# which our kernels use; compiled kernels are fine on those releases (checked with 3.6).
INTERPRETER_MIN_TRITON = (3, 9)


def _version_tuple(version: str) -> Tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


INTERPRETER_USABLE = _version_tuple(triton.__version__) >= INTERPRETER_MIN_TRITON


def make_predicates(op: str, kernel):
    """``supports``, ``why_not`` and ``priority`` for registering ``kernel``'s op."""
    interpreted = is_interpreted(kernel)

    def supports(device: torch.device, dtype: torch.dtype) -> bool:
        if dtype not in SUPPORTED_DTYPES:
            return False
        if device.type == "cuda":
            return not interpreted
        return device.type == "cpu" and interpreted and INTERPRETER_USABLE

    def why_not(device: torch.device, dtype: torch.dtype) -> str:
        if dtype not in SUPPORTED_DTYPES:
            return (f"backend 'triton' kernel for {op} supports dtypes "
                    f"{[str(d) for d in SUPPORTED_DTYPES]}, got {dtype}")
        if device.type == "cpu" and not interpreted:
            return (f"backend 'triton' runs {op} on cpu only under the Triton interpreter: set "
                    "TRITON_INTERPRET=1 before masked_dora is imported")
        if device.type == "cpu" and not INTERPRETER_USABLE:
            return (f"backend 'triton' runs {op} on cpu only under the Triton interpreter of triton >= "
                    f"{'.'.join(map(str, INTERPRETER_MIN_TRITON))} (older interpreters mis-handle scalar loop "
                    f"bounds); this is triton {triton.__version__}")
        if device.type == "cuda" and interpreted:
            return (f"backend 'triton': {op} kernels were defined under TRITON_INTERPRET=1 "
                    "(interpreter only); unset it to run them on the GPU")
        return f"backend 'triton' runs {op} on cuda (or cpu under TRITON_INTERPRET=1), got device={device.type}"

    def priority(device: torch.device) -> int:
        return 20 if device.type == "cuda" else -10

    return supports, why_not, priority


def device_guard(t: torch.Tensor):
    """Make ``t``'s GPU the current one for the launch (a no-op context on the CPU)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: tf32 for float32 only where torch allows tf32 matmuls."""
    if dtype == torch.float32 and fp32_matmul_uses_tf32():
        return "tf32"
    return "ieee"


def compile_precisions(dtype: torch.dtype) -> tuple:
    """The dot precisions a launch can use for ``dtype`` (see :func:`dot_precision`): both for float32."""
    return ("tf32", "ieee") if dtype == torch.float32 else ("ieee",)


def rank_pad(r: int) -> int:
    """Smallest power of two >= max(r, 16) (``tl.dot`` needs dims >= 16)."""
    return max(16, triton.next_power_of_2(r))


def m_bucket(m: int) -> int:
    """Autotune key for the token count: re-tune per power of two, not per exact M."""
    return triton.next_power_of_2(max(int(m), 1))


# ---------------------------------------------------------------- autotune configs

def _cfg(names: Sequence[str], values: Tuple[int, ...]) -> Dict[str, int]:
    return dict(zip(names, values))


# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages); tile shapes from the Triton matmul
# tutorial's CUDA list (good on Ampere A100 and Hopper H100/H200: 128x256 and 128x128
# tiles with 8 warps for Hopper's wgmma, 64/128 tiles with 4 warps and 4 stages for Ampere).
GEMM_16 = [(128, 256, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 32, 4, 4), (64, 128, 32, 4, 4)]
GEMM_32 = [(128, 128, 32, 8, 3), (64, 128, 32, 4, 4)]
INTERPRET_GEMM = (64, 64, 64, 4, 1)


def gemm_configs(dtype: torch.dtype) -> List[Tuple[int, ...]]:
    return GEMM_32 if dtype == torch.float32 else GEMM_16


# MASKED_DORA_AUTOTUNE=small: autotune over a small fixed set (the first SMALL_AUTOTUNE rows of each
# kernel's list, the big-tile configs) so a time-boxed GPU run (bench/gpu_check.sh) does not spend its
# minutes compiling and timing configs; unset or "full": every config (the default). The full lists stay
# the compile targets (kernels/_compile.py) either way. Read when a kernel's autotuner is first built.
AUTOTUNE_ENV = "MASKED_DORA_AUTOTUNE"
SMALL_AUTOTUNE = 2


def autotune_rows(rows: Sequence[Tuple[int, ...]]) -> List[Tuple[int, ...]]:
    """The config rows to autotune over, per ``MASKED_DORA_AUTOTUNE`` (``full``, the default, or ``small``)."""
    mode = os.environ.get(AUTOTUNE_ENV, "").strip().lower() or "full"
    if mode == "full":
        return list(rows)
    if mode == "small":
        return list(rows)[:SMALL_AUTOTUNE]
    raise ValueError(f"{AUTOTUNE_ENV}: expected 'full' or 'small', got {mode!r}")


def autotune_configs(rows: Sequence[Tuple[int, ...]], names: Sequence[str]) -> List[triton.Config]:
    return [triton.Config(_cfg(names, row[:-2]), num_warps=row[-2], num_stages=row[-1]) for row in rows]


class TunedKernel:
    """A raw ``@triton.jit`` kernel plus one ``triton.autotune`` wrapper per config list.

    On a GPU, ``launch`` runs the autotuned wrapper for ``dtype``; under the
    interpreter it runs the raw kernel with the fixed ``interpret`` config (no
    tuning, big blocks, so tests stay fast).
    """

    def __init__(self, kernel, names: Sequence[str], configs_for, interpret: Tuple[int, ...],
                 key: Sequence[str]):
        self.kernel = kernel
        self.names = tuple(names)
        self.configs_for = configs_for
        self.interpret = interpret
        self.key = list(key)
        self.interpreted = is_interpreted(kernel)

    @functools.lru_cache(maxsize=None)
    def _tuned(self, dtype: torch.dtype):
        rows = autotune_rows(self.configs_for(dtype))  # MASKED_DORA_AUTOTUNE=small: the first few only
        return triton.autotune(autotune_configs(rows, self.names), key=self.key)(self.kernel)

    def meta(self, dtype: torch.dtype) -> Dict[str, int]:
        """The block sizes the interpreter uses (the GPU picks per autotune)."""
        return _cfg(self.names, self.interpret[:-2])

    def launch(self, grid, dtype: torch.dtype, *args, **kwargs) -> None:
        if self.interpreted:
            meta = self.meta(dtype)
            g = grid(meta) if callable(grid) else grid
            self.kernel[g](*args, **kwargs, **meta, num_warps=self.interpret[-2],
                           num_stages=self.interpret[-1])
        else:
            self._tuned(dtype)[grid](*args, **kwargs)


@triton.jit
def grouped_pid(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """Grouped (L2-friendly) ordering of a 1-D program id over an M x N grid of tiles."""
    width = GROUP_M * num_n
    group = pid // width
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n

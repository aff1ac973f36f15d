"""Shared test helpers: relative error, tolerances, the float64 dense reference."""

from __future__ import annotations

from typing import Optional

import torch

from masked_dora.ops.precision import fp32_matmul_uses_tf32

# DESIGN.md correctness policy: ||out - ref|| / ||ref||
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}
TF32_TOLERANCE = 5e-4


def kernel_tolerance(dtype: torch.dtype, device="cpu") -> float:
    """The relative-error bound for a kernel's ``dtype`` output on ``device``.

    The policy's (``TOLERANCE``), except float32 on a GPU while TF32 matmuls are
    allowed (:func:`masked_dora.ops.precision.fp32_matmul_uses_tf32`): ``TF32_TOLERANCE`` then. CPU kernels never use TF32.
    """
    if dtype == torch.float32 and torch.device(device).type == "cuda" and fp32_matmul_uses_tf32():
        return TF32_TOLERANCE
    return TOLERANCE[dtype]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (0 when both are 0)."""
    out, ref = out.detach().double(), ref.detach().double()
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    if denom == 0.0:
        return diff
    return diff / denom


def assert_close_rel(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "",
                     tol: Optional[float] = None) -> None:
    tol = TOLERANCE[dtype] if tol is None else tol
    assert out.shape == ref.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(out).all(), f"{what}: non-finite values"
    err = rel_err(out, ref)
    assert err < tol, f"{what}: relative error {err:.3e} >= {tol:.1e} ({dtype})"


def dense_masked_dora_f64(x, weight, bias, lora_A, lora_B, scaling, magnitude, gate_values, eps=1e-8):
    """The textbook definition in float64, building W0 + s B A densely (tests only).

    Differentiable in every argument that requires grad; the row norm is detached.
    Returns y with x's leading shape. ``eps`` is the row-norm floor: the default
    1e-8 is the op's for float32/float64 only; to compare with an op run in
    another dtype on rows whose norm can reach the floor (exactly-zero rows with a
    non-zero magnitude), pass the op's ``masked_dora.ops.row_norm.default_eps(dtype)``.
    """
    d = lambda t: None if t is None else t.double()  # noqa: E731
    x, weight, bias, lora_A, lora_B = d(x), d(weight), d(bias), d(lora_A), d(lora_B)
    magnitude, z = d(magnitude), d(gate_values)
    dense = weight + scaling * lora_B @ lora_A
    norm = dense.detach().norm(dim=1).clamp_min(eps)
    scale = magnitude * z / norm
    pre = x @ weight.t() + scaling * (x @ lora_A.t()) @ lora_B.t()
    y = pre * scale
    if bias is not None:
        y = y + z * bias
    return y


def leaf(t: torch.Tensor, dtype=None) -> torch.Tensor:
    """A fresh leaf copy (optionally cast) that requires grad."""
    return t.detach().to(dtype or t.dtype).clone().requires_grad_(True)


def pretend_gpu(monkeypatch, state: dict) -> None:
    """Make :mod:`masked_dora.ops._verified` see a GPU without one: ``state["cap"]`` its compute capability,
    ``state["build"]`` what ``masked_dora._C`` was built for (read at every call, so a test may change them;
    call ``_verified.forget()`` after a change)."""
    from masked_dora.ops import _verified

    monkeypatch.setattr(_verified, "capability", lambda device: state["cap"])
    monkeypatch.setattr(_verified, "device_index", lambda device: 0)
    monkeypatch.setattr(_verified, "extension_build", lambda: state["build"])
    _verified.forget()


def sm90_build() -> dict:
    """An sm_90 device and an extension built with CUDA for sm_80/sm_90 plus PTX compute_90."""
    return {"cap": (9, 0), "build": {"loaded": True, "with_cuda": True, "sass": (80, 90), "ptx": 90,
                                     "torch": torch.__version__}}

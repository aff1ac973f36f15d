r"""The DoRA row norm without materialising ``W0 + s B A``.

    n_j^2 = ||W0_j||^2 + 2 s <(W0 A^T)_j, B_j> + s^2 B_j (A A^T) B_j^T
    n_j   = max(sqrt(max(n_j^2, 0)), eps)

``||W0_j||^2`` is passed in when cached (W0 is frozen), ``W0 A^T`` is one N x r
skinny GEMM (one read of W0), ``A A^T`` is r x r. Products and sums are float32
(float64 for float64 inputs), the GEMM's included. The clamp at 0 absorbs
rounding; the ``eps`` floor keeps ``m / n`` finite on exactly-zero rows
(real checkpoints have them: PEFT issue #3237). Where the factored sum cancels
(the adapter nearly cancels a row: ``n_j^2 < ||W0_j||^2 / 16``) the op forms
those rows directly (:func:`fix_cancellation`), whatever the backend; with
``r >= K`` the reference forms ``W0 + sBA`` directly (it is no bigger).

The norm is detached (DoRA section 4.3): the op has no autograd formula and the
entry point detaches its inputs.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _checks, _registry
from ._eager import plain_eager
from .dora_linear import accumulate_dtype

OP = "row_norm"
DEFAULT_EPS = None  # per compute dtype, see default_eps


def default_eps(dtype: torch.dtype) -> float:
    """The norm floor used when none is given: 1e-8, or 1e-4 for float16/bfloat16.

    In half precision ``c = m / n`` is cast with the gradients: a zero row with a
    non-zero magnitude and a 1e-8 floor would give ``c = 1e8``, past float16's
    range (65504), and turn ``dP = dy * c`` into inf/NaN.
    """
    return 1e-4 if dtype in (torch.float16, torch.bfloat16) else 1e-8


def weight_sq_norm(weight: Tensor) -> Tensor:
    """``||W0_j||^2`` per row, accumulated in float32 (float64 for float64)."""
    acc = accumulate_dtype(weight.dtype)
    return torch.linalg.vector_norm(weight, dim=1, dtype=acc).square()


_BLOCK_ELEMENTS = 1 << 22  # rows of W0 cast to float32 at a time (16 MB), never the whole matrix


def product_in(acc: torch.dtype, left: Tensor, right: Tensor) -> Tensor:
    """``left @ right`` with products and sums in ``acc`` (no rounding to a half dtype in between),
    without a full ``acc`` copy of ``left`` (cuBLAS does it natively; elsewhere row blocks are cast)."""
    if left.dtype == acc:
        return left @ right.to(acc)
    if left.is_cuda:
        return torch.mm(left, right.to(left.dtype), out_dtype=acc)
    rows = max(1, _BLOCK_ELEMENTS // max(left.shape[1], 1))
    r = right.to(acc)
    return torch.cat([blk.to(acc) @ r for blk in left.split(rows)]) if left.shape[0] else left.new_empty(
        0, right.shape[1], dtype=acc)


def direct_row_norm(weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float, eps: float,
                    rows: Optional[Tensor] = None) -> Tensor:
    """``max(||W0_j + s (B A)_j||, eps)`` formed directly, in float32 (float64), for ``rows`` (default: all)."""
    acc = accumulate_dtype(weight.dtype)
    w = weight if rows is None else weight.index_select(0, rows)
    b = lora_B if rows is None else lora_B.index_select(0, rows)
    dense = torch.addmm(w.to(acc), b.to(acc), lora_A.to(acc), alpha=scaling)  # never in place: w may be W0
    return torch.linalg.vector_norm(dense, dim=1).clamp_min(eps)


# A row whose squared norm came out below this fraction of ||W0_j||^2 lost that much to cancellation in
# the factored sum (fp32: ~eps_mach * ||W0_j||^2 / n_j^2 relative): it is formed directly instead.
CANCELLATION = 1.0 / 16.0


def fix_cancellation(norm: Tensor, weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float,
                     weight_sq: Tensor, eps: float) -> Tensor:
    """Recompute, directly, the rows where the adapter nearly cancels ``W0_j`` (``n_j^2 < ||W0_j||^2 / 16``).

    The factored formula subtracts numbers of size ``||W0_j||^2``: such a row lost digits (a bf16 row
    collapsed to the eps floor, 1e-4 instead of 0.52). Typically no row qualifies; one sync.
    """
    if weight.shape[0] == 0:
        return norm
    rows = torch.nonzero(norm.square() < CANCELLATION * weight_sq.to(norm.dtype)).flatten()
    if rows.numel():
        norm = norm.index_copy(0, rows, direct_row_norm(weight, lora_A, lora_B, scaling, eps, rows).to(norm.dtype))
    return norm


def row_norm_reference(
    weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float,
    weight_sq: Optional[Tensor], eps: float,
) -> Tensor:
    acc = accumulate_dtype(weight.dtype)
    if lora_A.shape[0] >= weight.shape[1]:  # r >= K: W0 + sBA is no bigger than the factors; exact and cheap
        return direct_row_norm(weight, lora_A, lora_B, scaling, eps)
    if weight_sq is None:
        weight_sq = weight_sq_norm(weight)
    w_a = product_in(acc, weight, lora_A.t())           # N x r, one read of W0, products never rounded to half
    a = lora_A.to(acc)
    b = lora_B.to(acc)
    gram = a @ a.t()                                    # r x r
    cross = (w_a * b).sum(1)
    low_rank = ((b @ gram) * b).sum(1)
    sq = weight_sq.to(acc) + (2.0 * scaling) * cross + (scaling * scaling) * low_rank
    return sq.clamp_min(0.0).sqrt().clamp_min(eps)


_registry.register(OP, "torch", row_norm_reference, priority=0)
# CUDA: cuBLAS for W0 A^T + one fused finishing kernel (csrc/cuda/dora_kernels.cu)
_registry.define_compiled_kernel(
    OP, "(Tensor weight, Tensor lora_A, Tensor lora_B, float scaling, Tensor? weight_sq, float eps) -> Tensor",
    backends=("cuda",), dtypes={"cuda": (torch.float32, torch.float16, torch.bfloat16)})


def _row_norm(
    weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float,
    weight_sq: Optional[Tensor], eps: float,
) -> Tensor:
    """The op's body (the custom op and the eager path of :func:`row_norm` alike)."""
    with _registry.no_autocast(weight.device):
        if weight_sq is None:  # once, for the backend and the cancellation check alike
            weight_sq = weight_sq_norm(weight)
        norm = _registry.dispatch(OP, weight.device, weight.dtype, weight, lora_A, lora_B, scaling, weight_sq, eps)
        return fix_cancellation(norm, weight, lora_A, lora_B, scaling, weight_sq, eps)


_row_norm_op = torch.library.custom_op("masked_dora::row_norm", _row_norm, mutates_args=())


@_row_norm_op.register_fake
def _(weight, lora_A, lora_B, scaling, weight_sq, eps):
    return weight.new_empty(weight.shape[0], dtype=accumulate_dtype(weight.dtype))


def check_row_norm_args(weight: Tensor, lora_A: Tensor, lora_B: Tensor, weight_sq: Optional[Tensor]) -> None:
    """Shapes, dtypes and devices of the op's arguments; clear errors naming each."""
    for name, t in (("weight", weight), ("lora_A", lora_A), ("lora_B", lora_B)):
        _checks.check_floating(name, t)
        _checks.check_ndim(name, t, 2)
    n, k = weight.shape
    r = lora_A.shape[0]
    _checks.check_shape("lora_A", lora_A, (r, k))
    _checks.check_shape("lora_B", lora_B, (n, r))
    _checks.check_vector("weight_sq", weight_sq, n)
    _checks.check_same_device([("weight", weight), ("lora_A", lora_A), ("lora_B", lora_B),
                               ("weight_sq", weight_sq)])
    _checks.check_same_dtype([("weight", weight), ("lora_A", lora_A), ("lora_B", lora_B)])


def row_norm(
    weight: Tensor, lora_A: Tensor, lora_B: Tensor, scaling: float,
    weight_sq: Optional[Tensor] = None, eps: Optional[float] = DEFAULT_EPS,
) -> Tensor:
    """Detached ``max(||W0_j + s (B A)_j||_2, eps)`` per output row, float32 (float64 for float64).

    ``eps=None`` takes :func:`default_eps` of the weight's dtype.
    """
    check_row_norm_args(weight, lora_A, lora_B, weight_sq)
    if eps is None:
        eps = default_eps(weight.dtype)
    if not eps >= 0.0:
        raise ValueError(f"eps: expected a non-negative float, got {eps}")
    args = (weight.detach(), lora_A.detach(), lora_B.detach(), float(scaling),
            None if weight_sq is None else weight_sq.detach(), float(eps))
    if plain_eager(weight, lora_A, lora_B, weight_sq):  # the body directly: see ._eager
        with torch.no_grad():
            return _row_norm(*args)
    return torch.ops.masked_dora.row_norm(*args)

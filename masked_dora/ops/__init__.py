"""The op layer: one entry point per op, each registered with ``torch.library``.

Every op has a pure-PyTorch reference implementation (backend ``"torch"``);
kernel backends (``"triton"``, ``"cpp"``, ``"cuda"``) register under the same
dispatcher when they can be imported. See :mod:`masked_dora.ops._registry`.
"""

from . import _registry
from ._registry import BACKENDS, forced_backend, registered, select, use_backend
from .compact_linear import compact_linear, compact_linear_, forget_index_check, validate_indices
from .dora_linear import dora_linear
from .gated_dora_linear import gated_dora_linear
from .row_norm import row_norm, weight_sq_norm
from .. import _backends

_backends.load_kernel_backends()

__all__ = ["BACKENDS", "compact_linear", "compact_linear_", "dora_linear", "forced_backend", "forget_index_check",
           "gated_dora_linear", "registered", "row_norm", "select", "use_backend", "validate_indices", "weight_sq_norm"]

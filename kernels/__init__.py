"""Triton kernels, installed as ``masked_dora.kernels``.

Each op's kernels live in one file with their host launch code and register
themselves under the op's dispatcher (backend ``"triton"``). Importing this
package requires ``triton``; :mod:`masked_dora._backends` imports it and
records the reason when it cannot. Importing never initialises CUDA.

* :mod:`.row_norm` — ``row_norm``: the DoRA row norm in one pass over W0.
* :mod:`.dora_linear` — ``dora_linear``: skinny ``x A^T`` + one GEMM with the
  low-rank, scale and bias epilogue.
* :mod:`.dora_linear_backward` — ``dora_linear_backward``: dgrad GEMM with
  ``dy * c`` fused into its loads, column reductions, ``dA``/``dB``.
* :mod:`._compile` — ahead-of-time compile targets (``compile_targets()`` in
  every kernel module) for the CI compile check.
"""

import triton  # noqa: F401  (a missing triton makes the whole backend unavailable)

from . import row_norm  # noqa: E402,F401  (each import registers a "triton" backend)
from . import dora_linear  # noqa: E402,F401
from . import dora_linear_backward  # noqa: E402,F401
from . import compact_linear  # noqa: E402,F401  (gather/scatter compact GEMM: compact_linear)

"""Triton kernels, installed as ``masked_dora.kernels``.

Each op's kernels live in one file with their host launch code and register
themselves under the op's dispatcher (backend ``"triton"``). Importing this
package requires ``triton``; :mod:`masked_dora._backends` imports it and
records the reason when it cannot.
"""

import triton  # noqa: F401  (a missing triton makes the whole backend unavailable)

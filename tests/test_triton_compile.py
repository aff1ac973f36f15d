"""CI compile check: every Triton kernel config compiles for sm_80 and sm_90 with no GPU present.

Each module of masked_dora.kernels lists its configurations in
``compile_targets()`` (format: masked_dora/kernels/_compile.py). They are
compiled to PTX and cubin with ``triton.compile`` for Ampere (sm_80) and Hopper
(sm_90) in a subprocess without TRITON_INTERPRET (interpreted kernels cannot be
compiled), in parallel on every core, and each kernel's shared memory must fit
the architecture. A cold Triton cache makes this take minutes on 2 cores; a
warm one (~/.triton/cache) seconds.
"""

from __future__ import annotations

import collections

import pytest

pytest.importorskip("masked_dora.kernels")
from masked_dora.kernels import _compile  # noqa: E402

ARCHS = (80, 90)
LIMITS = {80: 166912, 90: 232448}  # bytes of shared memory per block: 163 KiB, 227 KiB


def test_limits_match_the_architectures():
    for arch, limit in LIMITS.items():
        assert _compile.SHARED_MEMORY_LIMIT[arch] == limit


def test_every_kernel_module_lists_compile_targets():
    modules = _compile.kernel_modules()
    for name in ("row_norm", "dora_linear", "dora_linear_backward"):
        assert f"masked_dora.kernels.{name}" in modules
    targets = _compile.collect_targets()
    names = [t.name for t in targets]
    assert len(names) == len(set(names)), "compile target names must be unique"
    per_kernel = collections.defaultdict(set)
    for t in targets:
        per_kernel[t.fn.__name__].add(t.name)
    for kernel in ("_row_norm_kernel", "_xa_kernel", "_dora_fwd_kernel", "_dgrad_kernel", "_cols_kernel",
                   "_da_kernel"):
        got = per_kernel[kernel]
        for dtype in ("bfloat16", "float16", "float32"):
            assert any(dtype in n for n in got), f"{kernel}: no {dtype} target"


def test_bad_target_is_rejected_before_compiling():
    target = _compile.collect_targets()[0]
    bad = _compile.CompileTarget(target.name, target.fn, dict(list(target.signature.items())[:-1]),
                                 target.constexprs, target.num_warps, target.num_stages)
    with pytest.raises((ValueError, RuntimeError), match="signature|TRITON_INTERPRET"):
        _compile.compile_target(bad, 90)


@pytest.mark.slow
def test_all_targets_compile_for_sm80_and_sm90():
    records = _compile.compile_all_in_subprocess(ARCHS)
    n_targets = len(_compile.collect_targets())
    assert len(records) == n_targets * len(ARCHS)
    failed = [f"{r['name']} sm_{r['arch']}: {r['error']}" for r in records if not r["ok"]]
    assert not failed, "compile failures:\n" + "\n".join(failed)
    too_big = [f"{r['name']} sm_{r['arch']}: {r['shared']} > {LIMITS[r['arch']]} bytes"
               for r in records if r["shared"] > LIMITS[r["arch"]]]
    assert not too_big, "shared memory over the limit:\n" + "\n".join(too_big)

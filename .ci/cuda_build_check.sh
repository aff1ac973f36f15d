#!/usr/bin/env bash
# The GPU machine's stack, on this CPU machine: build masked_dora._C WITH its CUDA kernels against
# torch 2.11.0 (CUDA 13.0), triton 3.6.0 and transformers 5.17.0 (the versions the GPU machine has),
# import it in a fresh process, check every kernel is registered for CPU and CUDA, and run the CPU
# test suite there (tests that need the CUDA torch, e.g. the setup.py CUDA fallbacks, run only here).
# Nothing CUDA runs: there is no GPU. Needs nvcc (CUDA 13.x) and PyPI for the first set-up.
#
#   bash .ci/cuda_build_check.sh            # from the repository root; CI runs it beside `make test`
#                                           # (.ci/second_core.sh)
#
# The venv (.venv-cuda) is kept between runs; the package is built in a scratch copy of the tree so
# that its editable _C never clobbers the CPU build in the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
unset MASKED_DORA_CI_GPU_STACK_ELSEWHERE  # the gpu_stack tests run here (.ci/run's `make test` leaves them to this)
root=$PWD
venv=${CUDA_CHECK_VENV:-$root/.venv-cuda}
pins="torch==2.11.0 triton==3.6.0 transformers==5.17.0"
start=$(date +%s)
say() { echo "== cuda-build-check [$(( $(date +%s) - start )) s] $*"; }

stamp="$venv/.stack-$(echo "$pins" | tr ' =' '_-')"
if [ ! -f "$stamp" ]; then
    say "creating $venv with $pins (CUDA wheels from PyPI: a few minutes)"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
    "$venv/bin/python" -m pip install -q $pins peft pytest pytest-benchmark ninja numpy safetensors hypothesis
    touch "$stamp"
fi
py="$venv/bin/python"
$py -c "import torch, triton, transformers; print('torch', torch.__version__, 'CUDA', torch.version.cuda, '| triton', triton.__version__, '| transformers', transformers.__version__)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C "$work/src"
cd "$work/src"

say "building the extension with CUDA (MAX_JOBS=${MAX_JOBS:-$(nproc)})"
if ! MAX_JOBS=${MAX_JOBS:-$(nproc)} $py -m pip install -v --no-deps --no-build-isolation -e . > "$work/build.log" 2>&1; then
    tail -50 "$work/build.log"; echo "cuda-build-check: pip install failed"; exit 1
fi
grep "masked_dora:" "$work/build.log" | sort -u

say "import and registration check (fresh process)"
env -u TRITON_INTERPRET $py - <<'PYEOF'
import torch
import masked_dora
from masked_dora import _C

status = masked_dora.backend_status()
print("backend_status:", status)
assert status["extension"] == "loaded", status
assert _C.with_cuda == 1, "the extension was built without its CUDA kernels (see the build log above)"
assert _C.cuda_archs == "80,90" and _C.cuda_ptx_arch == "90", (_C.cuda_archs, _C.cuda_ptx_arch)
assert _C.torch_version == torch.__version__, (_C.torch_version, torch.__version__)
expected = {"row_norm_kernel": ("CUDA",), "dora_linear_kernel": ("CPU", "CUDA"),
            "dora_linear_backward_kernel": ("CPU", "CUDA"), "compact_linear_kernel": ("CPU", "CUDA")}
for name, keys in expected.items():
    for key in keys:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"masked_dora::{name}", key), (name, key)
    print(f"  {name}: registered for {', '.join(keys)}")
assert not torch.cuda.is_initialized(), "importing masked_dora initialised CUDA"
print("extension: C++ + CUDA, sm", _C.cuda_archs, "+ PTX", _C.cuda_ptx_arch, "| CUDA untouched")
PYEOF

# the multi-process tests (torchrun, accelerate launch: 2 workers each) last: CI's other core runs `make test`,
# which reaches its own test_distributed.py early (files run in name order); run at the same time, the two
# suites' workers crowded 2 cores (4 to 6 busy processes) and made the critical path minutes longer
say "CPU test suite on this stack (the multi-process tests last)"
# the extension was just built with CUDA here, so tests/test_cuda_sources.py's nvcc compile checks (make test runs
# them beside this against its own torch) skip here, saying why
MASKED_DORA_CI_BUILT_WITH_CUDA=1 $py -m pytest -q tests -p no:cacheprovider --durations=15 \
    --ignore=tests/test_distributed.py
say "the multi-process tests on this stack"
$py -m pytest -q tests/test_distributed.py -p no:cacheprovider
say "done"

#!/usr/bin/env bash
# CI's second core (.ci/run starts this beside `make install` + `make test`, which keep the first one busy):
# the CUDA stack check (.ci/cuda_build_check.sh), then, once `make install` has made .venv, the wheel check
# (.ci/wheel_check.sh: a user's wheel with the extension, built and imported from the wheel alone), the
# quantized-base tests with bitsandbytes, and the tests marked `second_core` (packages only .venv has, DeepSpeed's
# launches and TRL, and some multi-process launches, to balance the cores; `make test` skips them under
# MASKED_DORA_CI_SECOND_CORE_ELSEWHERE=1). The CUDA stack check ends minutes before `make test` does, so these run
# on the core it frees instead of on the critical path.
#
#   bash .ci/second_core.sh READY_FILE     # what needs .venv starts once READY_FILE exists (.ci/run touches it)
#
# Exit status: 0 if every check passed, else 1; each one's log is printed, with its verdict, as it ends.
set -uo pipefail
cd "$(dirname "$0")/.."
ready=$1
status=0
start=$(date +%s)
say() { echo "== second core [$(( $(date +%s) - start )) s] $*"; }
bash .ci/cuda_build_check.sh || { echo "== cuda-build-check FAILED (exit $?)"; status=1; }
while [ ! -e "$ready" ]; do sleep 5; done
say "wheel check (.ci/wheel_check.sh), on the core the CUDA stack check freed"
MAX_JOBS=1 bash .ci/wheel_check.sh || { echo "== wheel check FAILED (exit $?)"; status=1; }
# the real QLoRA bases: bitsandbytes' 4- and 8-bit layers and torchao's quantized weights (tests/test_quantized_base*.py
# skip those tests without them), from a side directory rather than .venv: installed there, every process importing
# peft would import them, and through them torch's compiler (seconds for each of the suites' subprocesses)
say "the quantized-base tests with bitsandbytes and torchao (installed beside .venv)"
side=$(mktemp -d)
if .venv/bin/python -m pip install -q --target "$side" --no-deps "bitsandbytes>=0.50" "torchao>=0.18"; then
    PYTHONPATH="$side" .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_quantized_base.py \
        tests/test_quantized_base_training.py tests/test_quantized_base_torchao.py \
        || { echo "== quantized-base tests FAILED"; status=1; }
else
    echo "== installing bitsandbytes and torchao FAILED"; status=1
fi
rm -rf "$side"
marked=$(grep -l "second_core" tests/test_*.py)
say "the second_core tests ($(echo $marked))"
.venv/bin/python -m pytest -q -p no:cacheprovider -m second_core $marked \
    || { echo "== second_core tests FAILED"; status=1; }
say "done"
exit "$status"

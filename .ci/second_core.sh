#!/usr/bin/env bash
# CI's second core (.ci/run starts this beside `make install` + `make test`, which keep the first one busy):
# the CUDA stack check (.ci/cuda_build_check.sh), then the wheel check (.ci/wheel_check.sh: a user's wheel
# with the extension, built and imported from the wheel alone), once `make install` has made .venv. The CUDA
# stack check ends minutes before `make test` does, so the wheel check runs on the core it frees instead of
# after `make test`, on the critical path.
#
#   bash .ci/second_core.sh READY_FILE     # the wheel check starts once READY_FILE exists (.ci/run touches it)
#
# Exit status: 0 if both passed, else 1; each one's log is printed, with its verdict, as it ends.
set -uo pipefail
cd "$(dirname "$0")/.."
ready=$1
status=0
bash .ci/cuda_build_check.sh || { echo "== cuda-build-check FAILED (exit $?)"; status=1; }
while [ ! -e "$ready" ]; do sleep 5; done
echo "== wheel check (.ci/wheel_check.sh), on the core the CUDA stack check freed"
MAX_JOBS=1 bash .ci/wheel_check.sh || { echo "== wheel check FAILED (exit $?)"; status=1; }
exit "$status"

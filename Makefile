# Two commands: `make run` (set up + federated simulation on the embedded synthetic cohort)
# and `make test` (set up + test suite). Both reuse .venv/ once it is built.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup clean benchmarks-summary mutation

setup: $(STAMP)

# torch first, pinned: its CPU wheel is on disk; letting pip choose would pull a CUDA build.
# flwr 1.42.0 cannot resolve here (certifi floor): install 1.41.0 with its extras, overlay 1.42.0.
$(STAMP): pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet "flwr[simulation]==1.41.0" "opacus==1.6.0" "wfdb>=4.1" "numpy>=1.26" \
	    "scipy>=1.11" "pandas>=2.0" "pydantic>=2.5" "scikit-learn>=1.4" "grpcio>=1.60" "matplotlib>=3.8" \
	    "tqdm>=4.66" "safetensors>=0.4" "pytest>=8" "hypothesis>=6.100" "pydicom>=2.4" "edfio>=0.4" "defusedxml>=0.7.1"
	$(BIN)/pip install --quiet --no-deps "flwr==1.42.0" "uv>=0.13.5,<0.14"
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python simulation/run.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

# benchmarks/README.md (one table per issue-5 section) from benchmarks/results/*.json; runs no benchmark.
# Needs only matplotlib: the .venv of `make setup` if present, else $(PY).
benchmarks-summary:
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PY)) -m benchmarks.summarise

# Mutation testing of the modules the privacy and fault guarantees rest on, each group driven by its fast tests
# (hours on 2 cores, incremental afterwards; not in CI). Writes benchmarks/results/mutation.md and fails on a
# surviving mutant that benchmarks/mutation_equivalent.toml does not explain.
mutation: $(STAMP)
	$(BIN)/pip install --quiet "mutmut==3.8.1"
	nice $(BIN)/python -m benchmarks.mutation run
	$(BIN)/python -m benchmarks.mutation report

clean:
	rm -rf $(VENV)

# genrec: `make run` sets everything up and runs the demo pipeline; `make test` runs the test suite.
# Both create .venv on first use (torch from its CPU build first, then every pinned dependency) and
# reuse it afterwards: the install step re-runs only when pyproject.toml or constraints.txt change.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CACHE  := $(CURDIR)/.cache
export SPARK_LOCAL_IP ?= 127.0.0.1
export HF_HUB_OFFLINE ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export TORCH_EXTENSIONS_DIR ?= $(CACHE)/torch_extensions
CONFIG ?= configs/demo.yaml
# Where torch's CPU build comes from: by default pip's own configuration (on the project's machines a
# local wheel folder). Elsewhere: make run TORCH_PIP_ARGS="--index-url <PyTorch's CPU wheel index>"
TORCH_PIP_ARGS ?=

SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
# pip on the project's machines warns about unreachable extra indexes; hide only that line.
QUIET_PIP = 2>&1 | { grep -v "^WARNING: Location" || true; }

.PHONY: run test install compile lint bench-sessionize ui clean lock help

help:
	@echo "make run      create the environment (first time) and run the demo pipeline end to end"
	@echo "make test     create the environment (first time) and run the test suite"
	@echo "make compile  recompile pipelines/genrec_pipeline.yaml"
	@echo "make ui       start the MLflow UI on http://127.0.0.1:5000"
	@echo "make bench-sessionize   time the Spark job on 1M/10M/30M simulated events (long)"

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing torch==2.13.0 (CPU build) ..."
	$(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) torch==2.13.0 $(QUIET_PIP)
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	@echo "installing genrec and its pinned dependencies (constraints.txt) ..."
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]' $(QUIET_PIP)
	@# from a file, not -c: importing GE under `python -c` makes pyspark exit 0 early (see NOTES.md)
	@echo 'import genrec, pyspark, great_expectations, mlflow, kfp, torch; print("imports ok")' > $(VENV)/check_imports.py
	$(BIN)/python $(VENV)/check_imports.py
	@touch $(STAMP)

run: install
	$(BIN)/genrec run --config $(CONFIG)

test: install
	$(BIN)/python -m pytest -q

compile: install
	$(BIN)/genrec compile

ui: install
	$(BIN)/genrec ui --config $(CONFIG)

bench-sessionize: install
	$(BIN)/python bench/sessionize_scaling.py

lock:
	@echo "re-resolve constraints.txt from pyproject.toml (needs the registry)"
	rm -rf /tmp/genrec-lock && $(PYTHON) -m venv /tmp/genrec-lock
	/tmp/genrec-lock/bin/pip install --quiet torch==2.13.0 && /tmp/genrec-lock/bin/pip install --quiet '.[dev]' "pandas<3"
	/tmp/genrec-lock/bin/pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu$$/torch==2.13.0/' > constraints.txt

clean:
	rm -rf work .pytest_cache

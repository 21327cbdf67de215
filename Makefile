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

.PHONY: run test install compile infra-templates lint bench-sessionize ui clean lock help wheelhouse wheelhouse-gpu image image-gpu e2e-docker \
	mlflow-image mlflow-up mlflow-down image-spark bad-inputs-doc

help:
	@echo "make run      create the environment (first time) and run the demo pipeline end to end"
	@echo "make test     create the environment (first time) and run the test suite"
	@echo "make compile  recompile pipelines/genrec_pipeline.yaml"
	@echo "make bad-inputs-doc   rewrite README's table of bad inputs from tests/bad_input_corpus.py"
	@echo "make ui       start the MLflow UI on http://127.0.0.1:5000 over the work folder's sqlite store"
	@echo "make mlflow-up    start the team server here: PostgreSQL + object store + mlflow server with logins (mlflow/README.md)"
	@echo "make mlflow-image build the MLflow server image \$$(MLFLOW_IMAGE)"
	@echo "make image    build the CPU runtime image \$$(IMAGE) (make image-gpu: \$$(GPU_IMAGE); make image-spark: \$$(SPARK_IMAGE))"
	@echo "make e2e-docker   build the CPU image and run the whole pipeline in its containers (kfp.local DockerRunner)"
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

infra-templates: install
	$(BIN)/python -m pipelines.k8s_templates

bad-inputs-doc: install
	$(BIN)/python tests/bad_input_corpus.py

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
	rm -rf work .pytest_cache build  # build/: setuptools reuses build/lib, so a stale module there would ride along in the next wheel

# ---- images (docker/) -----------------------------------------------------------------------------------------------
# IMAGE / GPU_IMAGE: the tags built here and named by `genrec compile --image/--gpu-image`.
# BASE_IMAGE: empty = the Dockerfiles' pinned public base; where registries are out of reach, a local Debian bookworm
#   image with Python 3.11 (and Java 17 for the CPU image), e.g. the one ../shared/scripts/local-base-image builds.
# OFFLINE=1: fill docker/wheelhouse from this machine's pip first and build without any package index.
VERSION    := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE      ?= ghcr.io/genrec/genrec:$(VERSION)
GPU_IMAGE  ?= ghcr.io/genrec/genrec-gpu:$(VERSION)
MLFLOW_IMAGE ?= ghcr.io/genrec/genrec-mlflow:$(VERSION)
SPARK_IMAGE ?= ghcr.io/genrec/genrec-spark:$(VERSION)
BASE_IMAGE ?=
OFFLINE    ?=
WHEELHOUSE := docker/wheelhouse
# The legacy builder where the docker CLI has no buildx plugin; the Dockerfiles need no BuildKit feature.
export DOCKER_BUILDKIT ?= $(if $(shell docker buildx version 2>/dev/null),1,0)
DOCKER_BUILD = docker build --network host $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) \
	$(if $(OFFLINE),--build-arg PIP_NO_INDEX=1) --build-arg GIT_COMMIT=$$(git rev-parse HEAD 2>/dev/null || echo unknown)

wheelhouse: $(WHEELHOUSE)/.complete

$(WHEELHOUSE)/.complete: pyproject.toml constraints.txt docker/requirements.py | $(STAMP)
	@echo "filling $(WHEELHOUSE) with every dependency as a wheel (and DeepSpeed's source, built in the image) ..."
	@mkdir -p build
	$(BIN)/python docker/requirements.py pyproject.toml --exclude torch > build/requirements.txt
	$(BIN)/python docker/requirements.py pyproject.toml --extra server >> build/requirements.txt
	$(BIN)/python -m pip wheel --quiet $(TORCH_PIP_ARGS) -c constraints.txt -w $(WHEELHOUSE) torch==2.13.0 setuptools wheel packaging \
		-r build/requirements.txt $(QUIET_PIP)
	$(BIN)/python -m pip download --quiet --no-deps --no-binary deepspeed -c constraints.txt -d $(WHEELHOUSE) deepspeed $(QUIET_PIP)
	@touch $@

image: $(if $(OFFLINE),wheelhouse)
	@echo "building $(IMAGE) from docker/Dockerfile ..."
	$(DOCKER_BUILD) -f docker/Dockerfile -t $(IMAGE) .
	docker run --rm --network host -v "$(CURDIR)/docker/smoke.py:/tmp/smoke.py:ro" $(IMAGE) python /tmp/smoke.py --expect cpu

wheelhouse-gpu: docker/wheelhouse-gpu/.complete

docker/wheelhouse-gpu/.complete: constraints.txt | $(STAMP)
	@echo "downloading torch's CUDA build for this platform from PyPI into docker/wheelhouse-gpu (about 2.6 GB) ..."
	$(BIN)/python -m pip download --quiet --isolated $(if $(PIP_CERT),--cert $(PIP_CERT)) --only-binary=:all: \
		-d docker/wheelhouse-gpu torch==2.13.0 $(QUIET_PIP)
	@touch $@

image-gpu: $(if $(OFFLINE),wheelhouse wheelhouse-gpu)
	@echo "building $(GPU_IMAGE) from docker/Dockerfile.gpu ..."
	@# its own context, streamed: the CUDA wheels (GBs) stay out of the CPU image's context (.dockerignore)
	tar -c --exclude=__pycache__ pyproject.toml constraints.txt README.md src spark_jobs components pipelines \
		docker/Dockerfile.gpu docker/requirements.py docker/wheelhouse docker/wheelhouse-gpu \
		| $(DOCKER_BUILD) -f docker/Dockerfile.gpu -t $(GPU_IMAGE) -
	docker run --rm --network host -v "$(CURDIR)/docker/smoke.py:/tmp/smoke.py:ro" $(GPU_IMAGE) python /tmp/smoke.py --expect cuda

# The driver/executor image of sessionize's SparkApplication: $(IMAGE) + Spark's pod entry point + the s3a jars
# (from Maven Central, or MAVEN=<a mirror>; not reachable from the project's build machines, see NOTES).
image-spark:
	@echo "building $(SPARK_IMAGE) from docker/Dockerfile.spark on $(IMAGE) ..."
	$(DOCKER_BUILD) -f docker/Dockerfile.spark --build-arg GENREC_IMAGE=$(IMAGE) $(if $(MAVEN),--build-arg MAVEN=$(MAVEN)) \
		-t $(SPARK_IMAGE) .
	docker run --rm --network host --entrypoint sh $(SPARK_IMAGE) -c 'ls "$$(python -c "import os, pyspark; print(os.path.dirname(pyspark.__file__))")"/jars | grep -E "^(hadoop-aws|bundle)-"'

mlflow-image: $(if $(OFFLINE),wheelhouse)
	@echo "building $(MLFLOW_IMAGE) from mlflow/Dockerfile ..."
	$(DOCKER_BUILD) -f mlflow/Dockerfile -t $(MLFLOW_IMAGE) .
	docker run --rm --network host --entrypoint python $(MLFLOW_IMAGE) -c \
		"import mlflow, psycopg2, boto3, flask_wtf; assert mlflow.__version__ == '$$(sed -n 's/^mlflow==//p' constraints.txt)'; print('mlflow', mlflow.__version__)"

# ---- the team's MLflow server on this machine (mlflow/README.md): PostgreSQL + object store + mlflow server ---------
# Passwords come from the environment (the README lists them). MLFLOW_PORT: the server's port on 127.0.0.1.
MLFLOW_PORT ?= 5000
mlflow-up: install
	$(BIN)/python mlflow/local_stack.py up --port $(MLFLOW_PORT)

mlflow-down: install
	$(BIN)/python mlflow/local_stack.py down

# The whole pipeline, every task in its container from $(IMAGE), tracking to an MLflow server on 127.0.0.1 that this
# target starts and stops; ends with the run's summary and loads the registered model on this machine.
E2E_CONFIG ?= configs/tiny.yaml
e2e-docker: image install
	$(BIN)/python docker/e2e.py --image $(IMAGE) --config $(E2E_CONFIG)

# One command per task. `make install` once, then `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_EXTRAS ?= cpu,dev

.PHONY: help install services format lint imports typecheck test test-unit test-fast deploy-check demo bench bench-quick chaos clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

install:  ## virtualenv with the CPU vLLM build and the dev tools
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(PIP_EXTRAS)]'
	VENV=$(VENV) bash scripts/llamafactory-env.sh
	bash scripts/img2dataset-venv.sh >/dev/null  # img2dataset's own venv, for the tests of its output

services:  ## start local PostgreSQL and Redis if they are not running (Debian packages)
	bash scripts/services.sh

format:  ## ruff's fixes and formatting, in place
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

lint:  ## ruff, the layer contracts (import-linter) and mypy --strict
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(MAKE) imports
	$(MAKE) typecheck

imports:  ## the layer contracts of docs/ARCHITECTURE.md (pyproject.toml, [tool.importlinter])
	bash scripts/package-links.sh >/dev/null
	PYTHONPATH=build/pkg $(VENV)/bin/lint-imports

typecheck:  ## mypy --strict on the package as installed (scripts/package-links.sh)
	bash scripts/package-links.sh >/dev/null
	$(PY) -m mypy

test:  ## the whole suite: unit, integration (real Redis/PostgreSQL/S3), engine (real vLLM CPU), chaos (short)
	$(PY) -m pytest

test-unit:  ## the unit tests alone: no services, no engine
	$(PY) -m pytest tests/unit

test-fast:  ## everything but the real-vLLM engine tests
	$(PY) -m pytest -m "not vllm"

deploy-check:  ## validate docker-compose.yml and infra/k8s offline (schemas; no Docker engine, no cluster)
	$(PY) -m pytest tests/integration/test_deploy_config.py

demo:  ## everything on the tiny local model, no servers
	$(VENV)/bin/vlmbatch demo

bench-quick:  ## the control-plane and pipeline benchmarks, short
	$(PY) bench/control_plane.py --quick
	$(PY) bench/pipeline_vs_raw.py --quick

chaos:  ## the full chaos suite (see README)
	$(PY) tests/chaos/run_chaos.py --jobs 2000 --workers 3

clean:  ## caches and build outputs
	rm -rf .pytest_cache .mypy_cache .ruff_cache build *.egg-info

# reftrain: `make run` (the whole loop on real data) and `make test` (the suite) do all set-up.
# Paths are absolute from this file, so `make -C <clone> test` or `make -f <clone>/Makefile test`
# works from any folder.
SHELL := /bin/bash
.DEFAULT_GOAL := help
ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
VENV ?= $(ROOT)/.venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
STACK := $(ROOT)/deploy/local/stack.sh
PYTHON3 ?= python3
# CI and `make test` leave out the long scenarios (`make test-all` runs everything).
PYTEST_ARGS ?= -m 'not slow and not compose'

.PHONY: help deps venv lock up down status env test test-all test-unit lint typecheck run report bench faults plots clean reset

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  make %-12s %s\n", $$1, $$2}'

# The venv is made from the hashed lock (requirements.lock, made by `make lock`) with uv, which is
# itself installed from a hashed pin; `pip install --require-hashes -r requirements.lock` works too.
$(VENV)/.installed: $(ROOT)/pyproject.toml $(ROOT)/requirements.lock
	@$(PYTHON3) -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)' \
	  || { echo "reftrain needs Python 3.11 or 3.12 as $(PYTHON3) (set PYTHON3=/path/to/python3.11)"; exit 1; }
	$(PYTHON3) -m venv $(VENV)
	$(VENV)/bin/pip install -q --require-hashes -r $(ROOT)/deploy/local/uv.lock.txt
	$(UV) pip install -q --python $(PY) --require-hashes -r $(ROOT)/requirements.lock
	$(UV) pip install -q --python $(PY) --no-deps -e $(ROOT)
	touch $@

venv: $(VENV)/.installed ## create the virtualenv from the hashed lock file

deps: ## install the Debian packages the stack and tests need (PostgreSQL, kcat, Maven, ...), saying which first
	$(STACK) deps

lock: venv ## re-resolve requirements.lock (from pyproject.toml's pins) and uv.lock.txt, with hashes
	cd $(ROOT) && $(UV) pip compile pyproject.toml --extra ml --extra report --extra dev --generate-hashes \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 -o requirements.lock -q
	cd $(ROOT) && $(UV) pip compile deploy/local/uv.in --generate-hashes --python-version 3.11 \
	  -o deploy/local/uv.lock.txt -q

# BROKERS=3: a 3-node KRaft cluster (RF 3, min.insync.replicas 2) in place of the single broker;
# LAKE=s3: the lake on a local S3 API (S3Proxy) instead of a folder (docs/scaling.md).
BROKERS ?=
LAKE ?=
STACK_OPTS = $(if $(BROKERS),BROKERS=$(BROKERS)) $(if $(LAKE),LAKE=$(LAKE))
up: venv ## start the local stack (Kafka, Apicurio Registry, PostgreSQL); data kept in .local/ (BROKERS=3, LAKE=s3)
	PYTHON=$(PY) $(STACK_OPTS) $(STACK) up

down: ## stop the local stack (data kept)
	$(STACK_OPTS) $(STACK) down

status: ## is the local stack up?
	$(STACK_OPTS) $(STACK) status

env: ## print the variables that point at the local stack
	@$(STACK_OPTS) $(STACK) env

# Two pytest workers (xdist, one test file per worker, in collection order: tests/conftest.py puts the
# longest files first, --no-loadscope-reorder keeps that): most tests wait on a broker or a service
# process, so two workers on two cores nearly halve the wall time. The stack is started once, here,
# before pytest (a stack that cannot start ends `make test` at once, with its one ERROR line).
PYTEST_WORKERS ?= 2
test: venv deps ## the suite against the real local stack (started and stopped here); long scenarios left out
	PYTHON=$(PY) $(STACK) fetch
	cd $(ROOT) && PYTHON=$(PY) $(STACK) with $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-all: venv deps ## every test: the suite with the slow scenarios, then the compose stack (make compose-test)
	PYTHON=$(PY) $(STACK) fetch
	cd $(ROOT) && PYTHON=$(PY) $(STACK) with $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder -m 'not compose'
	$(MAKE) -f $(ROOT)/Makefile compose-test

test-unit: venv ## unit and contract tests only (no broker)
	cd $(ROOT) && $(PY) -m pytest tests/unit tests/contract $(PYTEST_ARGS)

lint: venv ## ruff
	cd $(ROOT) && $(VENV)/bin/ruff check reftrain services tests bench ops deploy/init

typecheck: venv ## mypy
	cd $(ROOT) && $(VENV)/bin/mypy reftrain services ops

RUN_ARGS ?=
REPORT_ARGS ?=
run: venv deps ## the whole loop on the bundled real data: stack, services, replay, report, plots, clean stop
	cd $(ROOT) && PYTHON=$(PY) $(PY) -m ops.run $(RUN_ARGS)

KILLS ?= coordinator,inference,trainer
.PHONY: run-kill
run-kill: venv deps ## make run with kill -9 of $$KILLS mid-run (each restarted); every report check must still pass
	cd $(ROOT) && PYTHON=$(PY) $(PY) -m ops.run --kill $(KILLS) $(RUN_ARGS)

report: venv ## the report of a running stack ($$TOPIC_PREFIX), or REPORT_ARGS="--run reports/<run>"
	cd $(ROOT) && $(PY) -m ops.report $(REPORT_ARGS)

BACKTEST_ARGS ?=
.PHONY: backtest
backtest: venv ## offline walk-forward of a training adapter on the bundled files (no stack); BACKTEST_ARGS="--adapter ... --limit N"
	$(PY) -m ops.backtest $(BACKTEST_ARGS)

bench: venv ## benchmarks with their anchors, then one table of #16's figures + bench/results.json
	PYTHON=$(PY) $(STACK) up
	cd $(ROOT) && eval "$$($(STACK) env)"; $(PY) bench/run_all.py $(BENCH_ARGS)

FAULT_ARGS ?=
faults: venv deps ## fault-injection campaign, full size, on a private stack (table -> docs/reliability.md)
	cd $(ROOT) && PYTHON=$(PY) $(PY) -m ops.faults --size full $(if $(BROKERS),--brokers $(BROKERS)) $(if $(LAKE),--lake $(LAKE)) $(FAULT_ARGS)

clean: ## remove caches (keeps the venv and stack data)
	cd $(ROOT) && rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis reports

reset: down ## stop the stack and delete its data
	$(STACK) reset

# ---- containers (docs/compose.md): offline images, the compose stack, its test ------------------
.PHONY: images compose-up compose-test compose-down
# The engine: `engine.sh with` starts dockerd when none answers and stops it after the command (only
# the one it started); compose-up leaves it running for compose-down to stop.
ENGINE := $(ROOT)/deploy/docker/engine.sh
images: venv ## build every image of the compose stack here, without Docker Hub (engine started and stopped if needed)
	PYTHON=$(PY) $(ENGINE) with $(ROOT)/deploy/docker/offline/images.sh

compose-up: venv ## docker compose up on the offline images (built first), wait until every container is healthy
	PYTHON=$(PY) $(ROOT)/deploy/docker/offline/images.sh
	$(ROOT)/deploy/docker/compose.sh up

# REFTRAIN_COMPOSE_EXCERPTS: where the test writes the outputs the README quotes (ps, scale-out, kcat)
REFTRAIN_COMPOSE_EXCERPTS ?= $(ROOT)/reports/compose-excerpts.txt
compose-test: venv ## the compose stack for real: images, replay, checks, 3 trainers, a kill, down -v (minutes)
	cd $(ROOT) && PYTHON=$(PY) REFTRAIN_COMPOSE_EXCERPTS=$(REFTRAIN_COMPOSE_EXCERPTS) $(ENGINE) with \
	  bash -c 'deploy/docker/offline/images.sh && "$$PYTHON" -m pytest tests/compose -m compose -s -p no:cacheprovider'

compose-down: ## docker compose down -v, and stop the Docker engine if compose-up started it
	$(ROOT)/deploy/docker/compose.sh down

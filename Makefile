# reftrain: `make run` (the whole loop on real data) and `make test` (the suite) do all set-up.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
STACK := deploy/local/stack.sh
PYTEST_ARGS ?= -m 'not slow'

.PHONY: help venv up down status env test test-unit lint typecheck run report bench faults plots clean reset

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@command -v python3 >/dev/null || { echo "python3 (3.11) is required"; exit 1; }
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[ml,report,dev]'
	touch $@

venv: $(VENV)/.installed ## create the virtualenv with pinned dependencies

up: venv ## start the local stack (Kafka, Apicurio Registry, PostgreSQL); data kept in .local/
	PYTHON=$(PY) $(STACK) up

down: ## stop the local stack (data kept)
	$(STACK) down

status: ## is the local stack up?
	$(STACK) status

env: ## print the variables that point at the local stack
	@$(STACK) env

test: venv ## the whole suite against the real local stack (started and stopped here)
	PYTHON=$(PY) $(STACK) fetch
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: venv ## unit and contract tests only (no broker)
	$(PY) -m pytest tests/unit tests/contract $(PYTEST_ARGS)

lint: venv ## ruff
	$(VENV)/bin/ruff check reftrain services tests bench ops deploy/init

typecheck: venv ## mypy
	$(VENV)/bin/mypy reftrain services ops

RUN_ARGS ?=
REPORT_ARGS ?=
run: venv ## the whole loop on the bundled real data: stack, services, replay, report, plots, clean stop
	PYTHON=$(PY) $(PY) -m ops.run $(RUN_ARGS)

report: venv ## the report of a running stack ($$TOPIC_PREFIX), or REPORT_ARGS="--run reports/<run>"
	$(PY) -m ops.report $(REPORT_ARGS)

BACKTEST_ARGS ?=
.PHONY: backtest
backtest: venv ## offline walk-forward of a training adapter on the bundled files (no stack); BACKTEST_ARGS="--adapter ... --limit N"
	$(PY) -m ops.backtest $(BACKTEST_ARGS)

bench: venv ## benchmarks with their anchors (ratios printed)
	PYTHON=$(PY) $(STACK) up
	eval "$$($(STACK) env)"; for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

FAULT_ARGS ?=
faults: venv ## fault-injection campaign, full size, on a private stack (table -> docs/reliability.md)
	PYTHON=$(PY) $(PY) -m ops.faults --size full $(FAULT_ARGS)

clean: ## remove caches (keeps the venv and stack data)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis reports

reset: down ## stop the stack and delete its data
	$(STACK) reset

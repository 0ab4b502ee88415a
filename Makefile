# ConsentTrace: one entry point for humans and CI.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
SERVICES := consent registry lineage deletion

.PHONY: help install dev demo walkthrough stop status test test-unit lint format schemas asyncapi bench bench-all bench-quick fuzz clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip==26.3

install: $(VENV)/.installed  ## install everything for development (pinned by requirements.lock)

$(VENV)/.installed: pyproject.toml requirements.lock | $(BIN)/python
	$(BIN)/pip install --quiet -c requirements.lock -e ".[dev]"
	@touch $@

dev: install  ## start the embedded stack (Tansu + local Postgres + the four services)
	$(BIN)/python -m services.runtime.devstack up

SEED    ?= 2024
MEMBERS ?= 20000

demo: install  ## the 2024 case study on a fresh embedded stack, and its report (SEED=…, MEMBERS=…)
	$(BIN)/python -m services.runtime.devstack down
	$(BIN)/python -m services.runtime.devstack up --fresh
	$(BIN)/python -m services.runtime.casestudy --seed $(SEED) --members $(MEMBERS)

walkthrough: dev  ## walk one consent withdrawal through the four services
	$(BIN)/python -m services.runtime.walkthrough

stop:  ## stop everything `make dev` started
	$(BIN)/python -m services.runtime.devstack down

status:  ## show the embedded stack's processes and readiness
	$(BIN)/python -m services.runtime.devstack status

test: install  ## the full suite: unit, integration (real broker + Postgres), end to end
	$(BIN)/pytest -q

test-unit: install  ## unit tests only (no broker, no database)
	$(BIN)/pytest -q tests/unit

lint: install  ## ruff and mypy, as CI runs them
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy contracts services bench

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

schemas: install  ## regenerate contracts/schemas and contracts/asyncapi from the code
	$(BIN)/python -m contracts.generate
	@for s in $(SERVICES); do \
	  $(BIN)/faststream docs gen --yaml --factory services.$$s.app:asyncapi_app \
	    --out contracts/asyncapi/$$s.yaml >/dev/null && echo "wrote contracts/asyncapi/$$s.yaml"; \
	done

bench: install  ## withdrawal → model flag latency and throughput on the embedded stack
	$(BIN)/python bench/withdrawal_latency.py

fuzz: install  ## longer hostile-input run: schemathesis on every HTTP operation, random seed
	FUZZ_MAX_EXAMPLES=$${FUZZ_MAX_EXAMPLES:-200} FUZZ_RANDOM=1 $(BIN)/pytest -q \
	  tests/integration/test_hostile_http.py -k fuzzing --timeout=0

bench-all: install  ## the whole benchmark set at full size, then bench/results/summary-*.md and .svg
	$(BIN)/python bench/run_all.py

bench-quick: install  ## the whole benchmark set at small sizes (minutes, not hours)
	$(BIN)/python bench/run_all.py --quick

clean: stop
	rm -rf .dev

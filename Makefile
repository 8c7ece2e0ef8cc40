# Converge: every target creates the virtual environment from the lock file when it is missing or stale.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME := $(CURDIR)/.dagster_home

.PHONY: install demo test ui check lint format bench bench-streaming bench-collector bench-identity bench-profiles bench-governance bench-floor lock clean

$(BIN)/.installed: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

install: $(BIN)/.installed

# The official Segment Node SDK the collector tests send with, from the committed lock (installed here, not
# by the test: tests download nothing).
NODE_CLIENT := tests/collector_tests/node
$(NODE_CLIENT)/node_modules/.installed: $(NODE_CLIENT)/package-lock.json $(NODE_CLIENT)/package.json
	cd $(NODE_CLIENT) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: install  ## generate demo data, materialize every asset through Dagster, print the summary
	$(BIN)/converge demo --reset --people $${PEOPLE:-5000}

test: install $(NODE_CLIENT)/node_modules/.installed  ## the whole suite
	$(BIN)/pytest

ui: install  ## Dagster webserver + daemon on 127.0.0.1:3000 with the instance from dagster.yaml
	mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000 -m jobs.definitions

check: install  ## lint, format check and types
	$(BIN)/ruff check pipelines assets jobs collector tests benchmarks
	$(BIN)/ruff format --check pipelines assets jobs collector tests benchmarks
	$(BIN)/mypy

format: install
	$(BIN)/ruff format pipelines assets jobs collector tests benchmarks
	$(BIN)/ruff check --fix pipelines assets jobs collector tests benchmarks

bench: install  ## every benchmark below -> docs/benchmarks.md
	$(BIN)/python -m benchmarks.pipeline $${BENCH_PEOPLE:-10000 100000}
	$(BIN)/python -m benchmarks.streaming --events $${BENCH_STREAM_EVENTS:-200000}
	$(BIN)/python -m benchmarks.collector
	$(BIN)/python -m benchmarks.identity $${BENCH_IDENTITY_PEOPLE:-100000 1000000}
	$(BIN)/python -m benchmarks.profiles --people $${BENCH_PROFILES_PEOPLE:-1000000}
	$(BIN)/python -m benchmarks.governance --people $${BENCH_GOVERNANCE_PEOPLE:-1000000}
	$(BIN)/python -m benchmarks.floor

bench-floor: install  ## floors: the writes (and for traits the reads) the streaming and traits goals require, alone, against those goals
	$(BIN)/python -m benchmarks.floor

bench-governance: install  ## right to be forgotten: one request and a batch of 1,000 against 1M people
	$(BIN)/python -m benchmarks.governance --people $${BENCH_GOVERNANCE_PEOPLE:-1000000} --batch $${BENCH_GOVERNANCE_BATCH:-1000}

bench-profiles: install  ## traits and audiences: 1,000 touched people out of 1M, incremental vs full refresh
	$(BIN)/python -m benchmarks.profiles --people $${BENCH_PROFILES_PEOPLE:-1000000}

bench-collector: install  ## collector: durable events/s and request latency from a Node.js load generator
	$(BIN)/python -m benchmarks.collector

bench-streaming: install  ## streaming: events/s vs a plain JSON->Parquet copy (files, Kafka), latency at 1,000 events/s, SIGKILL run
	$(BIN)/python -m benchmarks.streaming --events $${BENCH_STREAM_EVENTS:-200000}

bench-identity: install  ## identity resolution: full rebuild, incremental, Splink DuckDB reference at 100k and 1M people
	$(BIN)/python -m benchmarks.identity $${BENCH_IDENTITY_PEOPLE:-100000 1000000}

lock:  ## re-resolve requirements.lock from pyproject.toml (needs uv: pip install uv)
	uv pip compile pyproject.toml --extra dev --python-version 3.11 --generate-hashes -o requirements.lock

clean:
	rm -rf lakehouse .dagster_home .pytest_cache

# The two commands a newcomer needs: `make run` and `make test`. Both set everything up.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed

RUN_DIR ?= build/run
EVENTS ?= 100000

.PHONY: help install run run-streaming emulator bq-emulator bq-emulator-probe contract test test-fast lint format bench clean

help:
	@echo "make run    generate $(EVENTS) events, run the pipeline twice into DuckDB, reconcile"
	@echo "make run-streaming  the same through Google's Pub/Sub emulator, streaming, until idle"
	@echo "make emulator       run a Pub/Sub emulator on 127.0.0.1:8085 in the foreground"
	@echo "make run-outbox     PostgreSQL outbox -> relay (killed and restarted) -> pipeline -> reconcile"
	@echo "make test   lint and the whole test suite"
	@echo "make test-fast  lint and the tests that need no emulator (the inner loop)"
	@echo "make lint   ruff and mypy"
	@echo "make bench  the benchmarks of BENCHMARKS.md (long; not part of make test)"
	@echo "make bq-emulator-probe  what the local BigQuery emulator supports, feature by feature"
	@echo "make contract  after editing pipeline/contract.py: regenerate the files derived from it"
	@echo "make clean  remove build outputs (keeps .venv)"

install: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

# Generate events with duplicates, conflicts, late and malformed lines; run the batch pipeline
# into a fresh DuckDB file; run it again on the same input (it must change nothing); reconcile
# the tables against the ground truth. Exits non-zero on any mismatch.
run: install
	rm -rf $(RUN_DIR) && mkdir -p $(RUN_DIR)
	$(PY) -m pipeline.tools.generate --out $(RUN_DIR)/events --events $(EVENTS)
	@echo "--- first run"
	$(PY) -m pipeline --input_files='$(RUN_DIR)/events/events-*.jsonl' \
		--warehouse=duckdb:$(RUN_DIR)/warehouse.duckdb
	@echo "--- second run, same input: nothing may change"
	$(PY) -m pipeline --input_files='$(RUN_DIR)/events/events-*.jsonl' \
		--warehouse=duckdb:$(RUN_DIR)/warehouse.duckdb
	@echo "--- reconcile"
	$(PY) -m pipeline.tools.reconcile --warehouse duckdb:$(RUN_DIR)/warehouse.duckdb \
		--truth $(RUN_DIR)/events/truth.jsonl
	@echo "Tables are in $(RUN_DIR)/warehouse.duckdb"

# Streaming: emulator, topic and subscription, generated events published at least once with
# duplicate publishes, the pipeline reading the subscription until idle, then reconcile.
run-streaming: install
	$(PY) -m pipeline.tools.local_streaming --out build/streaming --events 3000

emulator: install
	$(PY) -m pipeline.tools.pubsub_emulator --port 8085

# A local BigQuery (local-bigquery on DuckDB, in its own Python 3.13 venv under .bq-emulator/)
# for the BigQuery warehouse tests; see scripts/bq_emulator/install.sh.
bq-emulator:
	scripts/bq_emulator/install.sh

# What the local BigQuery supports, feature by feature (PASS or FAIL with what it observed): run
# it after upgrading the emulator. A FAIL is information, not an error of this project: the known
# ones are listed in docs/BIGQUERY.md, so the target reports them and succeeds.
bq-emulator-probe: install bq-emulator
	-$(PY) scripts/bq_emulator/probe.py

# After editing the event contract (pipeline/contract.py): write the files derived from it that
# live outside the package (the BigQuery JSON schemas Terraform reads). A test fails when they
# drift. docs/CONTRACT.md.
contract: install
	$(PY) -m pipeline.tools.schemas

# Benchmarks (not part of make test): about 45 minutes on a 2-core machine (BENCHMARKS.md);
# BENCH_ARGS=--quick runs the same shape at a tenth of the sizes. Results:
# build/bench/results.json, BENCHMARKS.md.
bench: install bq-emulator
	$(PY) -m bench.run $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# Two workers: the suite waits mostly on emulators and the DirectRunner, one process each.
# Four workers on two cores: most of the suite waits (on the emulators, subprocesses, idle timers
# of streaming runs), so twice as many workers as cores finish it sooner; worksteal keeps the long
# tests from ending up on one worker. The times: BENCHMARKS.md, Results.
test: lint bq-emulator tf-tools
	$(PY) -m pytest -n 4 --dist worksteal

# The inner loop: lint and the tests that need no service and are not long proofs (unit,
# contract, DuckDB end to end). make test is what CI runs.
test-fast: lint tf-tools
	$(PY) -m pytest -n 4 --dist worksteal -m "not service and not slow"

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache

# Dataflow Flex Template (image, template, launch, launch-batch) and Terraform checks.
include make/dataflow.mk

# The outbox producer: PostgreSQL service + relay to Pub/Sub, proven end to end (run-outbox).
include make/outbox.mk

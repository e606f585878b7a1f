# The outbox producer (producer/): a payments service that writes its events into an outbox
# table in the same PostgreSQL transaction as its business rows, and a relay that publishes them
# to Pub/Sub at least once. Included by the Makefile; docs/OUTBOX.md explains the design.
#
#   make run-outbox      the proof: PostgreSQL + the Pub/Sub emulator, the service records
#                        payments (retried requests, rolled-back ones), a relay killed with
#                        kill -9 between publish and mark, two relays restarted, the streaming
#                        pipeline into DuckDB until idle, reconcile against PostgreSQL. Exits
#                        non-zero on any mismatch. About a minute.
#   make postgres        a throwaway PostgreSQL on 127.0.0.1:$(POSTGRES_PORT) in the foreground,
#                        for your own experiments (prints its DSN; Ctrl-C removes it)
#   make test-outbox     only the outbox tests (make test runs them too)
#
# Needs the PostgreSQL 15 server binaries (/usr/lib/postgresql/15/bin, or PG_BIN=...) and, as
# for run-streaming, the Google Cloud CLI with its Pub/Sub emulator and Java.
#
# Variables (command line or environment):
#
#   OUTBOX_DIR        build/outbox: working folder, recreated (warehouse.duckdb, truth.jsonl,
#                     relay-*.log stay there)
#   OUTBOX_PAYMENTS   300: payments created (about 1.9 events each: PENDING, POSTED, REVERSED)
#   OUTBOX_ARGS       (empty) more options of `python -m producer.demo`, e.g.
#                     OUTBOX_ARGS='--lease-seconds=10 --kill-after-batches=5 --seed=3'
#   POSTGRES_PORT     5433: port of `make postgres`
#   PG_BIN            /usr/lib/postgresql/15/bin: where initdb and postgres are
#   PY                .venv/bin/python (the Makefile's, when included)

OUTBOX_DIR ?= build/outbox
OUTBOX_PAYMENTS ?= 300
OUTBOX_ARGS ?=
POSTGRES_PORT ?= 5433
PY ?= .venv/bin/python

.PHONY: run-outbox postgres test-outbox

run-outbox: install
	$(PY) -m producer.demo --out $(OUTBOX_DIR) --payments $(OUTBOX_PAYMENTS) $(OUTBOX_ARGS)

postgres: install
	$(PY) -m producer.local_postgres --port $(POSTGRES_PORT)

test-outbox: install
	$(PY) -m pytest tests/test_outbox_service.py tests/test_outbox_relay.py \
		tests/test_outbox_end_to_end.py

"""Helpers shared by the tests: event lines, running the whole pipeline on given lines (bounded)
against a real warehouse, and reading the resulting tables."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.metrics import RunSummary, read_counters
from pipeline.run import build_pipeline
from pipeline.sinks.warehouse import Warehouse, WarehouseFactory
from pipeline.tables import DATA_TABLES
from pipeline.tools.reconcile import Report, check_invariants
from tests.warehouses import EmulatorWarehouse, another_run

# Columns that record *when* a row was written; everything else must be identical across runs.
AUDIT_COLUMNS = ("ingested_at", "updated_at", "arrival_time")


def event_line(
    event_id: str,
    *,
    transaction_id: str = "txn-1",
    account_id: str = "acct-1",
    amount: Any = "10.00",
    currency: str = "USD",
    status: str = "PENDING",
    event_time: str = "2026-01-01T00:00:10Z",
    **extra: Any,
) -> bytes:
    """One JSON line of the contract; amount may be a str, or a raw number given as Decimal."""
    fields: dict[str, Any] = {
        "event_id": event_id,
        "transaction_id": transaction_id,
        "account_id": account_id,
        "amount": amount,
        "currency": currency,
        "status": status,
        "event_time": event_time,
        **extra,
    }
    parts = []
    for key, value in fields.items():
        rendered = str(value) if isinstance(value, Decimal) else json.dumps(value)
        parts.append(f"{json.dumps(key)}: {rendered}")
    return ("{" + ", ".join(parts) + "}").encode("utf-8")


def pipeline_options(**overrides: Any) -> PipelineOptions:
    args = {
        "runner": "DirectRunner",
        **(
            {}
            if {"input_subscription", "input_topic"} & overrides.keys()
            else {"input_files": "unused-when-records-are-given"}
        ),
        "window_size_seconds": 60,
        "dedup_ttl_seconds": 3600,
        "max_batch_rows": 50,
        "merge_retry_delay_seconds": 0.01,
        **overrides,
    }
    flags = []
    for key, value in args.items():
        if value is True:
            flags.append(f"--{key}")
        elif value is not False:
            flags.append(f"--{key}={value}")
    return PipelineOptions(flags)


def run_lines(
    lines: Sequence[bytes],
    factory: WarehouseFactory,
    **overrides: Any,
) -> RunSummary:
    """Run the whole pipeline on ``lines`` as bounded input into the given warehouse, as a
    separately launched run (BigQuery scopes job ids by run). On the BigQuery emulator, where a
    batch costs about a second of jobs, batches default to 500 rows instead of 50."""
    if isinstance(factory, EmulatorWarehouse):
        overrides.setdefault("max_batch_rows", 500)
    options = pipeline_options(**overrides)
    pipeline = beam.Pipeline(options=options)
    records = pipeline | "Lines" >> beam.Create(list(lines)).with_output_types(bytes)
    build_pipeline(pipeline, options, warehouse=another_run(factory), records=records)
    result = pipeline.run()
    result.wait_until_finish()
    return RunSummary(read_counters(result))


def read_tables(
    factory: WarehouseFactory, drop: Iterable[str] = AUDIT_COLUMNS
) -> dict[str, list[dict[str, Any]]]:
    warehouse: Warehouse = factory()
    try:
        warehouse.create_tables()
        return {
            table.name: [
                {k: v for k, v in row.items() if k not in drop}
                for row in warehouse.fetch_rows(table.name)
            ]
            for table in DATA_TABLES
        }
    finally:
        warehouse.close()


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(dt.UTC)


def assert_exact(factory: WarehouseFactory, event_ids: Sequence[str]) -> dict[str, list[dict]]:
    """The ledger holds exactly ``event_ids`` and the tables agree with it (reconcile's
    invariants); returns the tables."""
    tables = read_tables(factory)
    assert sorted(r["event_id"] for r in tables["transaction_events"]) == sorted(event_ids)
    report = Report()
    check_invariants(tables, report)
    assert report.problems == [], report.problems
    return tables

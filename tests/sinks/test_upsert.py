"""The upsert composites with TestPipeline: batching puts every row in exactly one batch, and
the sink merges what it is given into a real DuckDB file."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to

from pipeline.dead_letters import STAGE_PARSE, make_dead_letter
from pipeline.events import Event, LedgerCandidate
from pipeline.sinks.upsert import BatchForMerge, UpsertDeadLetters, UpsertLedger
from pipeline.sinks.warehouse import WarehouseFactory
from pipeline.tools.reconcile import window_of
from tests.helpers import read_tables

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _candidate(i: int) -> LedgerCandidate:
    event = Event(
        f"e{i:03d}", f"t{i % 7}", "a1", Decimal(i), "USD", "POSTED", T0 + dt.timedelta(hours=i)
    )
    return LedgerCandidate(event, True, *window_of(event.event_time, 60))


def test_bounded_batches_are_per_day_bounded_in_size_and_complete() -> None:
    rows = list(range(100))

    def check(batches: list[tuple[str, list[int]]]) -> None:
        flat = sorted(r for _, batch in batches for r in batch)
        if flat != rows:
            raise BeamAssertException("a row is missing or repeated")
        if any(len(batch) > 7 for _, batch in batches):
            raise BeamAssertException("a batch is larger than max_rows")
        if any({r % 3 for r in batch} != {int(key)} for key, batch in batches):
            raise BeamAssertException("a batch mixes keys")
        if any(batch != sorted(batch) for _, batch in batches):
            raise BeamAssertException("a batch is not in sort order")

    with TestPipeline() as p:
        batches = (
            p
            | beam.Create(rows)
            | BatchForMerge(
                key=lambda r: str(r % 3), sort_key=lambda r: r, max_rows=7, flush_seconds=1
            )
        )
        assert_that(batches, check)


def test_upsert_ledger_merges_and_reports(duckdb_warehouse: WarehouseFactory) -> None:
    warehouse = duckdb_warehouse
    candidates = [_candidate(i) for i in range(60)]
    with TestPipeline() as p:
        outcomes = (
            p
            | beam.Create(candidates + candidates[:10]).with_output_types(LedgerCandidate)
            | UpsertLedger(warehouse, max_batch_rows=8)
        )
        assert_that(
            outcomes | beam.Map(lambda o: o.inserted) | beam.CombineGlobally(sum),
            equal_to([60]),
        )
    assert [r["event_id"] for r in read_tables(warehouse)["transaction_events"]] == [
        c.event.event_id for c in candidates
    ]


def test_upsert_dead_letters_is_idempotent(duckdb_warehouse: WarehouseFactory) -> None:
    warehouse = duckdb_warehouse
    rows = [
        make_dead_letter(STAGE_PARSE, "payload: not JSON", f"bad {i}".encode()) for i in range(5)
    ]
    for _ in range(2):
        with TestPipeline() as p:
            _ = p | beam.Create(rows + rows) | UpsertDeadLetters(warehouse)
    assert len(read_tables(warehouse)["dead_letters"]) == 5


@pytest.mark.parametrize("bad", [{"max_rows": 0}, {"flush_seconds": 0}])
def test_invalid_batching_is_refused(bad: dict[str, float]) -> None:
    args: dict[str, object] = {"key": str, "sort_key": str, "max_rows": 10, "flush_seconds": 1}
    with pytest.raises(ValueError):
        BatchForMerge(**(args | bad))  # type: ignore[arg-type]

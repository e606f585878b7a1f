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
from pipeline.sinks.upsert import BatchByEventDay, BatchForMerge, UpsertDeadLetters, UpsertLedger
from pipeline.sinks.warehouse import WarehouseFactory
from pipeline.tools.reconcile import window_of
from tests.helpers import read_tables

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _candidate(i: int) -> LedgerCandidate:
    return _candidate_at(i, T0 + dt.timedelta(hours=i))


def _candidate_at(i: int, event_time: dt.datetime) -> LedgerCandidate:
    event = Event(f"e{i:03d}", f"t{i % 7}", "a1", Decimal(i), "USD", "POSTED", event_time)
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


@pytest.mark.parametrize("slice_seconds", [45, 900, 3600, 86400])
def test_bounded_ledger_batches_stay_within_one_slice_of_event_time(slice_seconds: int) -> None:
    # Every 37 min 13 s for about two and a half days, from before a midnight, in a zone west of
    # UTC: batches must follow UTC slices, never span two UTC days, and hold every row once.
    start = dt.datetime(2025, 12, 31, 22, 5, 3, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    candidates = [
        _candidate_at(i, start + dt.timedelta(minutes=37 * i, seconds=13 * i, microseconds=i))
        for i in range(100)
    ]

    def slice_of(candidate: LedgerCandidate) -> str:
        # Independent of the sink's arithmetic: floor of the POSIX time.
        seconds = int(candidate.event.event_time.timestamp())
        floor = dt.datetime.fromtimestamp(seconds - seconds % slice_seconds, dt.UTC)
        return floor.strftime("%Y-%m-%dT%H:%M:%SZ")

    def check(batches: list[tuple[str, list[LedgerCandidate]]]) -> None:
        ids = sorted(c.event.event_id for _, batch in batches for c in batch)
        if ids != sorted(c.event.event_id for c in candidates):
            raise BeamAssertException("a row is missing or repeated")
        for key, batch in batches:
            if {slice_of(c) for c in batch} != {key}:
                raise BeamAssertException(f"batch {key} holds rows of other slices")
            if len(batch) > 4:
                raise BeamAssertException("a batch is larger than max_rows")
            times = [c.event.event_time for c in batch]
            if times != sorted(times):
                raise BeamAssertException("a batch is not in event-time order")
        expected_keys = {slice_of(c) for c in candidates}
        if {key for key, _ in batches} != expected_keys:
            raise BeamAssertException("the batches' slices are not the input's")

    with TestPipeline() as p:
        batches = (
            p
            | beam.Create(candidates).with_output_types(LedgerCandidate)
            | BatchByEventDay(max_rows=4, flush_seconds=1, slice_seconds=slice_seconds)
        )
        assert_that(batches, check)


@pytest.mark.parametrize("slice_seconds", [0, 7, 86401, 172800])
def test_slices_that_do_not_divide_a_day_are_refused(
    slice_seconds: int, duckdb_warehouse: WarehouseFactory
) -> None:
    with pytest.raises(ValueError, match="must divide 86400"):
        BatchByEventDay(max_rows=10, flush_seconds=1, slice_seconds=slice_seconds)
    with pytest.raises(ValueError, match="must divide 86400"):
        UpsertLedger(duckdb_warehouse, slice_seconds=slice_seconds)


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

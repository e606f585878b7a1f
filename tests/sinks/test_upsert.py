"""The upsert composites with TestPipeline: batching puts every row in exactly one batch, and
the dead-letter sink merges what it is given into a real DuckDB file (the ledger's staged sink:
test_merge_cycles.py)."""

from __future__ import annotations

import datetime as dt

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that

from pipeline.dead_letters import STAGE_PARSE, DeadLetter, make_dead_letter
from pipeline.sinks.upsert import BatchByArrivalDay, BatchForMerge, UpsertDeadLetters
from pipeline.sinks.warehouse import WarehouseFactory
from tests.helpers import read_tables


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
def test_bounded_dead_letter_batches_stay_within_one_slice_of_arrival_time(
    slice_seconds: int,
) -> None:
    # Every 37 min 13 s for about two and a half days, from before a midnight, in a zone west of
    # UTC: batches must follow UTC slices, never span two UTC days, and hold every row once.
    start = dt.datetime(2025, 12, 31, 22, 5, 3, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    rows = [
        make_dead_letter(
            STAGE_PARSE,
            "payload: not JSON",
            f"bad {i}".encode(),
            arrival_time=start + dt.timedelta(minutes=37 * i, seconds=13 * i, microseconds=i),
        )
        for i in range(100)
    ]

    def slice_of(row: DeadLetter) -> str:
        # Independent of the sink's arithmetic: floor of the POSIX time.
        seconds = int(row.arrival_time.timestamp())
        floor = dt.datetime.fromtimestamp(seconds - seconds % slice_seconds, dt.UTC)
        return floor.strftime("%Y-%m-%dT%H:%M:%SZ")

    def check(batches: list[tuple[str, list[DeadLetter]]]) -> None:
        ids = sorted(r.dead_letter_id for _, batch in batches for r in batch)
        if ids != sorted(r.dead_letter_id for r in rows):
            raise BeamAssertException("a row is missing or repeated")
        for key, batch in batches:
            if {slice_of(r) for r in batch} != {key}:
                raise BeamAssertException(f"batch {key} holds rows of other slices")
            if len(batch) > 4:
                raise BeamAssertException("a batch is larger than max_rows")
            times = [r.arrival_time for r in batch]
            if times != sorted(times):
                raise BeamAssertException("a batch is not in arrival-time order")
        if {key for key, _ in batches} != {slice_of(r) for r in rows}:
            raise BeamAssertException("the batches' slices are not the input's")

    with TestPipeline() as p:
        batches = (
            p
            | beam.Create(rows).with_output_types(DeadLetter)
            | BatchByArrivalDay(max_rows=4, flush_seconds=1, slice_seconds=slice_seconds)
        )
        assert_that(batches, check)


@pytest.mark.parametrize("slice_seconds", [0, 7, 86401, 172800])
def test_slices_that_do_not_divide_a_day_are_refused(
    slice_seconds: int, duckdb_warehouse: WarehouseFactory
) -> None:
    with pytest.raises(ValueError, match="must divide 86400"):
        BatchByArrivalDay(max_rows=10, flush_seconds=1, slice_seconds=slice_seconds)
    with pytest.raises(ValueError, match="must divide 86400"):
        UpsertDeadLetters(duckdb_warehouse, slice_seconds=slice_seconds)


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

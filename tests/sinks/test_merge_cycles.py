"""Staged appends and merge cycles (``stage_events``, ``merge_staged``): a cycle merges exactly
what was staged before it, set-based; appends that repeat, a cycle run twice and a conflicting
version staged later end in the same exact tables on both warehouses. On DuckDB (a day of event
time at a time), a cycle that dies before it clears staging and rows staged while a cycle runs
too, through the connection seam; BigQuery's own cases are in test_bigquery_cycles.py."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import apache_beam as beam
import duckdb
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to

from pipeline.events import Event, LedgerCandidate
from pipeline.sinks.duckdb import DuckDBWarehouse
from pipeline.sinks.upsert import StageAndMergeLedger
from pipeline.sinks.warehouse import WarehouseFactory
from pipeline.tools.reconcile import window_of
from tests.faults import FaultyConnection, InjectedFault
from tests.helpers import assert_exact
from tests.warehouses import duckdb_factory

T0 = dt.datetime(2026, 1, 1, 22, tzinfo=dt.UTC)


def _candidate(i: int, minutes: int, amount: str = "1.25", primary: bool = True) -> LedgerCandidate:
    event_time = T0 + dt.timedelta(minutes=minutes)
    event = Event(
        f"e{i:03d}", f"t{i % 5}", f"a{i % 3}", Decimal(amount), "EUR", "POSTED", event_time
    )
    return LedgerCandidate(event, primary, *window_of(event_time, 600))


# Every 25 minutes across midnight: three hours, two UTC days.
ROWS = [_candidate(i, 25 * i) for i in range(8)]


class Observed:
    """The connection seam: a real connection that records the ledger MERGEs it runs, and runs
    ``during`` once, just before the first of them (inside the cycle's first transaction)."""

    def __init__(self, during: Callable[[], None] | None = None) -> None:
        self.ledger_merges = 0
        self._during = during

    def __call__(self, path: str) -> Any:
        def fails(sql: str) -> bool:
            if "MERGE INTO transaction_events" in sql:
                self.ledger_merges += 1
                if self._during is not None:
                    during, self._during = self._during, None
                    during()
            return False

        return FaultyConnection(duckdb.connect(path), fails)


def _staged(path: str) -> int:
    with duckdb.connect(path) as con:
        row = con.execute("SELECT count(*) FROM staged_events").fetchone()
    return int(row[0]) if row else 0


def _exact(path: str, event_ids: Sequence[str]) -> dict[str, list[dict]]:
    return assert_exact(duckdb_factory(path), event_ids)


def test_a_cycle_merges_each_day_of_event_time_with_one_ledger_statement(tmp_path: Path) -> None:
    path = str(tmp_path / "w.duckdb")
    observed = Observed()
    warehouse = DuckDBWarehouse(path, connect=observed)
    warehouse.create_tables()
    warehouse.stage_events(ROWS[::-1])  # one append, across midnight, out of order
    warehouse.stage_events(ROWS[:3])  # and again, in another
    outcome = warehouse.merge_staged()
    assert (outcome.inserted, outcome.duplicates, outcome.used_fallback) == (len(ROWS), 3, False)
    assert observed.ledger_merges == 2  # set-based: one per UTC day, whatever the rows
    assert _staged(path) == 0
    _exact(path, [c.event.event_id for c in ROWS])
    warehouse.close()


def test_repeated_appends_and_a_second_cycle_change_nothing(warehouse: WarehouseFactory) -> None:
    writer = warehouse()
    writer.create_tables()
    for _ in range(3):  # a retried bundle appends the same rows again
        writer.stage_events(ROWS)
    first = writer.merge_staged()
    assert (first.inserted, first.duplicates) == (len(ROWS), 2 * len(ROWS))
    tables = assert_exact(warehouse, [c.event.event_id for c in ROWS])
    again = writer.merge_staged()  # nothing staged: no change
    assert (again.inserted, again.duplicates, again.windows_upserted) == (0, 0, 0)
    writer.stage_events(ROWS)  # a replay, a later run
    replayed = writer.merge_staged()
    assert (replayed.duplicates, replayed.transactions_upserted) == (len(ROWS), 0)
    assert assert_exact(warehouse, [c.event.event_id for c in ROWS]) == tables
    writer.close()


def test_a_conflicting_version_staged_later_becomes_a_dead_letter(
    warehouse: WarehouseFactory,
) -> None:
    writer = warehouse()
    writer.create_tables()
    writer.stage_events(ROWS)
    writer.merge_staged()
    other = _candidate(0, 0, amount="99.00", primary=False)
    writer.stage_events([other])
    outcome = writer.merge_staged()
    assert (outcome.conflicts, outcome.dead_letters_inserted) == (1, 1)
    tables = assert_exact(warehouse, [c.event.event_id for c in ROWS])
    letters = {r["event_id"]: r["error"] for r in tables["dead_letters"]}
    assert letters.keys() == {"e000"}
    assert "already holds this event_id with a different amount" in letters["e000"]
    ledger = {r["event_id"]: r for r in tables["transaction_events"]}
    assert ledger["e000"]["amount"] == Decimal("1.25")  # the ledger's version stands
    writer.stage_events([other])  # refused again (a replay): no second dead letter
    assert writer.merge_staged().dead_letters_inserted == 0
    writer.close()


def test_rows_staged_while_a_cycle_runs_wait_for_the_next_one(tmp_path: Path) -> None:
    path = str(tmp_path / "w.duckdb")
    later = [_candidate(100 + i, 3 * i) for i in range(4)]
    other_worker = DuckDBWarehouse(path)

    def stage_meanwhile() -> None:
        other_worker.stage_events(later)  # committed after the cycle took its rows

    warehouse = DuckDBWarehouse(path, connect=Observed(during=stage_meanwhile))
    warehouse.create_tables()
    warehouse.stage_events(ROWS)
    assert warehouse.merge_staged().inserted == len(ROWS)
    assert _staged(path) == len(later), "the cycle cleared only the rows it merged"
    assert warehouse.merge_staged().inserted == len(later)
    assert _staged(path) == 0
    _exact(path, [c.event.event_id for c in ROWS + later])
    other_worker.close()
    warehouse.close()


def test_a_cycle_that_dies_before_clearing_staging_is_merged_again_harmlessly(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "w.duckdb")

    def dies_clearing(target: str) -> FaultyConnection:
        return FaultyConnection(duckdb.connect(target), lambda sql: "DELETE FROM staged" in sql)

    dying = DuckDBWarehouse(path, connect=dies_clearing)
    dying.create_tables()
    dying.stage_events(ROWS)
    with pytest.raises(InjectedFault):
        dying.merge_staged()
    dying.close()
    assert _staged(path) == len(ROWS)  # merged, not cleared
    tables = _exact(path, [c.event.event_id for c in ROWS])
    warehouse = DuckDBWarehouse(path)
    again = warehouse.merge_staged()
    assert (again.inserted, again.duplicates) == (0, len(ROWS))
    assert _staged(path) == 0
    assert _exact(path, [c.event.event_id for c in ROWS]) == tables
    warehouse.close()


def test_the_composite_merges_each_interval_and_at_the_end(tmp_path: Path) -> None:
    """Unbounded input: a cycle after each interval of processing time, and one when the input
    ends; every row lands once."""
    path = str(tmp_path / "w.duckdb")
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    stream = (
        TestStream()
        .add_elements(ROWS[:4])
        .advance_processing_time(11)
        .add_elements(ROWS[4:])
        .advance_processing_time(11)
        .add_elements(ROWS[:2])  # redelivered copies, merged by the last cycle
        .advance_watermark_to_infinity()
    )
    with TestPipeline(options=options) as p:
        outcomes = p | stream | StageAndMergeLedger(duckdb_factory(path), merge_interval_seconds=10)
        assert_that(
            outcomes | beam.Map(lambda o: (o.inserted, o.duplicates)),
            equal_to([(4, 0), (4, 0), (0, 2)]),
        )
    assert _staged(path) == 0
    _exact(path, [c.event.event_id for c in ROWS])


def test_an_interval_under_a_second_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        StageAndMergeLedger(duckdb_factory(str(tmp_path / "w.duckdb")), merge_interval_seconds=0)


def test_rows_staged_with_another_window_size_do_not_break_a_cycle(
    warehouse: WarehouseFactory,
) -> None:
    """Rows staged by a run with another --window_size_seconds give one window_start two ends;
    the totals statement meets one source row per target row all the same."""
    writer = warehouse()
    writer.create_tables()
    ten_minutes = _candidate(0, 0)
    one_minute = _candidate(3, 0)._replace(
        window_end=ten_minutes.window_start + dt.timedelta(seconds=60)
    )
    writer.stage_events([ten_minutes, one_minute])
    assert writer.merge_staged().inserted == 2
    (total,) = writer.fetch_rows("account_window_totals")[:1]
    assert total["window_start"] == ten_minutes.window_start
    writer.close()

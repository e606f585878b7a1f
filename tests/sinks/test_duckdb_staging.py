"""The DuckDB sink's staging: a batch becomes the Arrow table of ``stage_events`` column by
column (pipeline/sinks/duckdb/, ``stage_events_table``); it must hold exactly the rows a plain
row-by-row conversion gives, whatever the times (before the epoch, microsecond edges, bounds
shared by many rows)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from pipeline.events import LedgerCandidate
from pipeline.sinks.duckdb.rows import STAGE_EVENTS_SCHEMA, stage_events_table
from tests.strategies import event_times, events

_candidates = st.builds(
    LedgerCandidate,
    event=events,
    primary=st.booleans(),
    # Few distinct bounds, as in a real batch, so the per-value conversion cache is exercised.
    window_start=st.sampled_from(
        [
            dt.datetime(1969, 12, 31, 23, 59, tzinfo=dt.UTC),
            *[dt.datetime(2026, 1, 1, 0, minute, tzinfo=dt.UTC) for minute in range(3)],
        ]
    ),
    window_end=event_times,
    source_time=st.none() | event_times,
)


@given(st.lists(_candidates, min_size=1, max_size=30))
def test_staged_columns_hold_exactly_the_rows_of_the_batch(
    batch: list[LedgerCandidate],
) -> None:
    rows = [
        {
            **candidate.event._asdict(),
            "is_primary": candidate.primary,
            "window_start": candidate.window_start,
            "window_end": candidate.window_end,
        }
        for candidate in batch
    ]
    expected = pa.Table.from_pylist(rows, schema=STAGE_EVENTS_SCHEMA)
    assert stage_events_table(batch).equals(expected)

"""Streaming semantics with TestStream on the DirectRunner (--streaming), end to end into DuckDB:
cross-window duplicates, out-of-order events, late events within and beyond allowed lateness, and
a duplicate that arrives after its dedup state expired. Ledger and totals stay exact throughout.

TestStream drives two clocks: the watermark (event time) and the processing-time clock, which
starts at the epoch on the DirectRunner. The dedup TTL and the sink's flush timer are set in wall
time, so a test that wants them to fire advances processing time past "now + TTL".

These are pipeline semantics, so they run on DuckDB only; the warehouse contract itself runs on
both warehouses (tests/sinks/test_warehouse_contract.py). Outcomes are asserted on the
pipeline's own outputs (``assert_that`` on the dedup verdicts and on
the sink's MergeOutcomes), not on Beam metrics: the streaming DirectRunner of Beam 2.77 loses
counter updates of every bundle after the first per step and thread (its StateSampler caches the
first bundle's MetricsContainer in ``scoped_state``), so its metrics undercount.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from decimal import Decimal

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from pipeline.run import build_pipeline
from pipeline.sinks.warehouse import MergeOutcome, WarehouseFactory
from tests.helpers import assert_exact, event_line, pipeline_options, utc

T0 = utc("2026-01-01T00:00:00Z").timestamp()


def at(seconds: float) -> str:
    """RFC 3339 for T0 + seconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(T0 + seconds))


def line(event_id: str, seconds: float, **fields: object) -> TimestampedValue:
    """A record published at its event time (as with the event_time attribute)."""
    return TimestampedValue(event_line(event_id, event_time=at(seconds), **fields), T0 + seconds)  # type: ignore[arg-type]


def _sum_outcomes(outcomes: list[MergeOutcome]) -> MergeOutcome:
    return MergeOutcome(
        *(sum(getattr(o, f.name) for o in outcomes) for f in dataclasses.fields(MergeOutcome))
    )


def run_stream(
    stream: TestStream,
    factory: WarehouseFactory,
    *,
    primaries: Sequence[str],
    others: Sequence[str] = (),
    merged: Callable[[MergeOutcome], bool] = lambda _: True,
    **overrides: object,
) -> None:
    """Run the pipeline on ``stream``; check which event_ids dedup passed on as primary and as
    other versions, and the sum of the sink's outcomes."""
    options = pipeline_options(streaming=True, **overrides)
    with TestPipeline(options=options) as pipeline:
        records = pipeline | "Stream" >> stream
        outputs = build_pipeline(pipeline, options, warehouse=factory, records=records)
        assert_that(
            outputs.candidates | beam.Map(lambda c: (c.event.event_id, c.primary)),
            equal_to([(i, True) for i in primaries] + [(i, False) for i in others]),
            label="CheckDedupVerdicts",
        )

        def check_merged(outcomes: list[MergeOutcome]) -> None:
            total = _sum_outcomes(outcomes)
            if not merged(total):
                raise BeamAssertException(f"unexpected sink outcome {total}")

        assert_that(outputs.merged, check_merged, label="CheckMergeOutcomes")


def new_stream() -> TestStream:
    return TestStream(coder=BytesCoder()).advance_watermark_to(T0)


def finish(stream: TestStream) -> TestStream:
    """Let the sink's flush timers fire (processing time past any buffering), then end the
    stream, so the sink's outcomes are emitted before the watermark closes the global window."""
    return stream.advance_processing_time(
        int(time.time()) + 10 * 3600
    ).advance_watermark_to_infinity()


def test_duplicates_in_other_windows_are_dropped(duckdb_warehouse: WarehouseFactory) -> None:
    stream = (
        new_stream()
        .add_elements([line("e1", 10), line("e2", 20, transaction_id="t2")])
        .advance_watermark_to(T0 + 300)
        # Redelivered copies, minutes later: other windows of arrival and of the watermark.
        .add_elements([TimestampedValue(event_line("e1", event_time=at(10)), T0 + 301)])
        .advance_watermark_to(T0 + 900)
        .add_elements([TimestampedValue(event_line("e1", event_time=at(10)), T0 + 901)])
    )
    stream = finish(stream)
    run_stream(stream, duckdb_warehouse, primaries=["e1", "e2"], merged=lambda o: o.inserted == 2)
    tables = assert_exact(duckdb_warehouse, ["e1", "e2"])
    assert [r["event_count"] for r in tables["account_window_totals"]] == [2]


def test_out_of_order_events_of_one_transaction(duckdb_warehouse: WarehouseFactory) -> None:
    stream = (
        new_stream()
        .add_elements([line("e3", 130, status="REVERSED")])
        .add_elements([line("e2", 70, status="POSTED")])
        .add_elements([line("e1", 10, status="PENDING")])
    )
    stream = finish(stream)
    run_stream(stream, duckdb_warehouse, primaries=["e1", "e2", "e3"])
    tables = assert_exact(duckdb_warehouse, ["e1", "e2", "e3"])
    (transaction,) = tables["transactions"]
    assert (transaction["status"], transaction["event_id"]) == ("REVERSED", "e3")
    assert len(tables["account_window_totals"]) == 3


def test_late_events_within_and_beyond_allowed_lateness_land(
    duckdb_warehouse: WarehouseFactory,
) -> None:
    # Window [0, 60) closes for Beam at watermark 60 + 120 = 180.
    stream = (
        new_stream()
        .add_elements([line("on-time", 10, amount="1.00")])
        .advance_watermark_to(T0 + 150)
        .add_elements([line("late-within", 30, transaction_id="t2", amount="2.00")])
        .advance_watermark_to(T0 + 1000)
        .add_elements([line("late-beyond", 40, transaction_id="t3", amount="4.00")])
    )
    stream = finish(stream)
    run_stream(
        stream,
        duckdb_warehouse,
        primaries=["on-time", "late-within", "late-beyond"],
        merged=lambda o: o.inserted == 3,
        allowed_lateness_seconds=120,
    )
    tables = assert_exact(duckdb_warehouse, ["on-time", "late-within", "late-beyond"])
    (window,) = tables["account_window_totals"]
    assert (window["event_count"], window["total_amount"]) == (3, Decimal("7"))


def test_duplicate_after_dedup_state_expired_is_caught_by_the_warehouse(
    duckdb_warehouse: WarehouseFactory,
) -> None:
    ttl = 60
    past_ttl = int(time.time()) + ttl + 600  # the DirectRunner's test clock starts at the epoch
    stream = (
        new_stream()
        .add_elements([line("e1", 10, amount="5.00"), line("e2", 11, amount="1.00")])
        .advance_processing_time(past_ttl)  # flushes the batch and expires the dedup state
        .advance_watermark_to(T0 + 100)
        .add_elements([line("e1", 10, amount="5.00")])  # redelivered after the TTL
    )
    stream = finish(stream)
    run_stream(
        stream,
        duckdb_warehouse,
        # e1 passes dedup twice: its state had expired when the copy came.
        primaries=["e1", "e2", "e1"],
        merged=lambda o: (o.inserted, o.duplicates, o.conflicts) == (2, 1, 0),
        dedup_ttl_seconds=ttl,
    )
    tables = assert_exact(duckdb_warehouse, ["e1", "e2"])
    (window,) = tables["account_window_totals"]
    assert (window["event_count"], window["total_amount"]) == (2, Decimal("6"))


def test_conflicting_version_after_expiry_is_a_dead_letter(
    duckdb_warehouse: WarehouseFactory,
) -> None:
    past_ttl = int(time.time()) + 60 + 600
    stream = (
        new_stream()
        .add_elements([line("e1", 10, amount="5.00")])
        .advance_processing_time(past_ttl)
        .add_elements([line("e1", 10, amount="6.00")])
    )
    stream = finish(stream)
    run_stream(
        stream,
        duckdb_warehouse,
        primaries=["e1", "e1"],
        merged=lambda o: (o.inserted, o.conflicts, o.dead_letters_inserted) == (1, 1, 1),
        dedup_ttl_seconds=60,
    )
    tables = assert_exact(duckdb_warehouse, ["e1"])
    assert tables["transaction_events"][0]["amount"] == Decimal("5")
    (dead,) = tables["dead_letters"]
    assert dead["error"].startswith("conflict:") and "amount" in dead["error"]

"""AssignEventTimeWindows: each event carries the bounds of the fixed window Beam assigns;
WindowByEventTime: the same windows as Beam windows, for windowed steps a user adds."""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to, equal_to_per_window
from apache_beam.transforms.window import (
    FixedWindows,
    GlobalWindows,
    IntervalWindow,
    TimestampedValue,
    WindowFn,
)
from apache_beam.utils.timestamp import Duration, Timestamp

from pipeline.events import Event, LedgerCandidate, parse_event, to_micros
from pipeline.run import build_pipeline
from pipeline.transforms.windows import AssignEventTimeWindows, StampWindowFn, WindowByEventTime
from tests.helpers import event_line, pipeline_options, utc
from tests.warehouses import duckdb_factory


def test_window_bounds_follow_event_time_and_source_time_is_kept() -> None:
    times = [
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:59.999999Z",
        "2026-01-01T00:01:00Z",
        "1969-12-31T23:59:30Z",
    ]
    events = [parse_event(event_line(f"e{i}", event_time=t)) for i, t in enumerate(times)]
    with TestPipeline() as p:
        # Arrival (source) timestamps one hour after the event times: windows ignore them.
        candidates = (
            p
            | beam.Create(
                [TimestampedValue((e, True), to_micros(e.event_time) / 1e6 + 3600) for e in events]
            )
            | AssignEventTimeWindows(window_size_seconds=60)
        )
        assert_that(
            candidates,
            equal_to(
                [
                    LedgerCandidate(
                        events[0],
                        True,
                        utc("2026-01-01T00:00:00Z"),
                        utc("2026-01-01T00:01:00Z"),
                        arrived(events[0]),
                    ),
                    LedgerCandidate(
                        events[1],
                        True,
                        utc("2026-01-01T00:00:00Z"),
                        utc("2026-01-01T00:01:00Z"),
                        arrived(events[1]),
                    ),
                    LedgerCandidate(
                        events[2],
                        True,
                        utc("2026-01-01T00:01:00Z"),
                        utc("2026-01-01T00:02:00Z"),
                        arrived(events[2]),
                    ),
                    LedgerCandidate(
                        events[3],
                        True,
                        utc("1969-12-31T23:59:00Z"),
                        utc("1970-01-01T00:00:00Z"),
                        arrived(events[3]),
                    ),
                ]
            ),
        )


def test_candidates_stay_in_the_global_window_with_their_source_timestamp() -> None:
    event = parse_event(event_line("e1", event_time="2026-01-01T00:00:30Z"))
    arrival = to_micros(event.event_time) / 1e6 + 3600
    with TestPipeline() as p:
        candidates = (
            p
            | beam.Create([TimestampedValue((event, True), arrival)])
            | AssignEventTimeWindows(window_size_seconds=60)
            | beam.Map(
                lambda c, t=beam.DoFn.TimestampParam, w=beam.DoFn.WindowParam: (c.primary, t, w)
            )
        )
        assert_that(
            candidates, equal_to([(True, Timestamp(arrival), GlobalWindows().assign(None)[0])])
        )


@pytest.mark.parametrize(("size", "offset"), [(60, 0), (1, 0), (86_400, 0), (3600, 17)])
def test_stamped_bounds_are_the_windows_fixed_windows_assigns(size: int, offset: int) -> None:
    # StampWindowFn computes FixedWindows' bounds on integers; they must be Beam's, for any time
    # a contract event may carry, before and after the epoch.
    windows = FixedWindows(size, offset)
    stamp = StampWindowFn(windows)
    rng = random.Random(size + offset)
    low, high = to_micros(utc("1900-01-01T00:00:00Z")), to_micros(utc("2200-01-01T00:00:00Z"))
    edges = [0, -1, 1, size * 1_000_000, offset * 1_000_000 - 1]
    for micros in [*edges, *(rng.randrange(low, high) for _ in range(2000))]:
        event = parse_event(event_line("e1", event_time="2026-01-01T00:00:00Z"))
        event = event._replace(
            event_time=dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)
        )
        (candidate,) = stamp.process((event, True), Timestamp(micros=0))
        (window,) = windows.assign(WindowFn.AssignContext(Timestamp(micros=micros)))
        assert (to_micros(candidate.window_start), to_micros(candidate.window_end)) == (
            window.start.micros,
            window.end.micros,
        )


def test_window_by_event_time_puts_verdicts_in_the_stamped_windows() -> None:
    times = ["2026-01-01T00:00:10Z", "2026-01-01T00:00:50Z", "2026-01-01T00:01:00Z"]
    events = [parse_event(event_line(f"e{i}", event_time=t)) for i, t in enumerate(times)]
    with TestPipeline() as p:
        counts = (
            p
            | beam.Create([TimestampedValue((e, True), 0) for e in events])
            | WindowByEventTime(window_size_seconds=60, allowed_lateness_seconds=120)
            | beam.Map(lambda timed: timed[0].event_id)
            | beam.CombineGlobally(beam.combiners.ToListCombineFn()).without_defaults()
            | beam.Map(sorted)
        )
        first = IntervalWindow(
            utc("2026-01-01T00:00:00Z").timestamp(), utc("2026-01-01T00:01:00Z").timestamp()
        )
        second = IntervalWindow(first.end, first.end + Duration(seconds=60))
        assert_that(counts, equal_to_per_window({first: [["e0", "e1"]], second: [["e2"]]}))


def test_the_windowed_branch_is_built_only_when_asked_with_the_configured_lateness(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.jsonl").write_text("")
    opts = pipeline_options(input_files=f"{tmp_path}/*.jsonl", allowed_lateness_seconds=120)
    pipeline = beam.Pipeline(options=opts)
    outputs = build_pipeline(pipeline, opts, warehouse=duckdb_factory(str(tmp_path / "w.duckdb")))
    labels = lambda: {t.full_label for t in pipeline.transforms_stack[0].parts}  # noqa: E731
    assert "WindowByEventTime" not in labels()
    windowed = outputs.windowed
    assert "WindowByEventTime" in labels()
    assert outputs.windowed is windowed  # built once
    assert windowed.windowing.windowfn == FixedWindows(60)
    assert windowed.windowing.allowed_lateness == Duration(seconds=120)


def arrived(event: Event) -> dt.datetime:
    return event.event_time + dt.timedelta(hours=1)


@pytest.mark.parametrize(("size", "lateness"), [(0, 0), (86_401, 0), (60, -1)])
def test_invalid_arguments_are_refused(size: int, lateness: int) -> None:
    with pytest.raises(ValueError):
        WindowByEventTime(size, lateness)
    if lateness == 0:
        with pytest.raises(ValueError):
            AssignEventTimeWindows(size)

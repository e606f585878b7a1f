"""AssignEventTimeWindows: each event carries the bounds of the fixed window Beam assigned."""

from __future__ import annotations

import datetime as dt

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from pipeline.events import Event, LedgerCandidate, parse_event, to_micros
from pipeline.transforms.windows import AssignEventTimeWindows
from tests.helpers import event_line, utc


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


def arrived(event: Event) -> dt.datetime:
    return event.event_time + dt.timedelta(hours=1)


@pytest.mark.parametrize(("size", "lateness"), [(0, 0), (86_401, 0), (60, -1)])
def test_invalid_arguments_are_refused(size: int, lateness: int) -> None:
    with pytest.raises(ValueError):
        AssignEventTimeWindows(size, lateness)

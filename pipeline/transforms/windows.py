"""Event-time windows: which fixed window each accepted event belongs to.

Beam's ``FixedWindows`` is the single definition of a window here. Each event is assigned to its
window in event time and the window's bounds are stamped on the row, so the warehouse recomputes
exactly the windows Beam assigned (``account_window_totals`` is keyed by them).

Totals are not summed in Beam: a sum held in the pipeline would count a duplicate that outlived
the dedup state twice, and would be wrong after a partial replay. The sink recomputes each
touched window from the ledger instead, inside the same MERGE transaction, so a total is always
exactly the sum over ``transaction_events``.

That is also why no step here groups by window and nothing is ever dropped for lateness: an
event arriving after its window closed still lands in the ledger and its window is recomputed.
``allowed_lateness`` is set on the windowing strategy of the ``windowed`` PCollection this
composite returns; it matters only to windowed aggregations a user adds on that output (for
example, Beam-side alerts), which Beam would close ``allowed_lateness`` after the watermark
passes the window's end.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.transforms.window import (
    FixedWindows,
    GlobalWindows,
    IntervalWindow,
    TimestampedValue,
)
from apache_beam.utils.timestamp import Duration, Timestamp

from pipeline.events import Event, LedgerCandidate, from_micros, to_micros

MAX_WINDOW_SECONDS = 86_400  # see events.MAX_EVENT_TIME: window ends must stay valid timestamps


# The source times a datetime can hold; a runner's MIN/MAX timestamps are outside.
_SOURCE_MICROS = range(
    to_micros(dt.datetime.min.replace(tzinfo=dt.UTC)),
    to_micros(dt.datetime.max.replace(tzinfo=dt.UTC)) + 1,
)
# (event, primary, source time in microseconds or None): typed, so that Beam encodes it with the
# event's own coder instead of pickling it.
Timed = tuple[Event, bool, int | None]


class ToEventTimeFn(beam.DoFn):
    """Timestamp each verdict with its payload's event_time, keeping the source time."""

    def process(
        self,
        verdict: tuple[Event, bool],
        source_time: Timestamp = beam.DoFn.TimestampParam,  # type: ignore[assignment]
    ) -> Iterator[TimestampedValue]:
        event, primary = verdict
        micros = source_time.micros
        # Outside: a runner's MIN/MAX timestamp, no source position to track.
        source = micros if micros in _SOURCE_MICROS else None
        yield TimestampedValue(
            (event, primary, source), Timestamp(micros=to_micros(event.event_time))
        )


class StampWindowFn(beam.DoFn):
    def process(
        self,
        element: Timed,
        window: IntervalWindow = beam.DoFn.WindowParam,  # type: ignore[assignment]
    ) -> Iterator[LedgerCandidate]:
        event, primary, source = element
        yield LedgerCandidate(
            event,
            primary,
            from_micros(window.start.micros),
            from_micros(window.end.micros),
            None if source is None else from_micros(source),
        )


class AssignEventTimeWindows(beam.PTransform):
    """``(event, primary)`` -> :class:`LedgerCandidate` with its fixed event-time window.

    Each element is first timestamped with its payload's event_time (its incoming timestamp, the
    source time, is kept on the candidate), then windowed. Output is re-windowed into the global
    window so the sink can batch rows of many windows into one MERGE. Ordering is not changed; no
    element is dropped, late or not.
    """

    def __init__(self, window_size_seconds: int, allowed_lateness_seconds: int = 0) -> None:
        super().__init__()
        if not 1 <= window_size_seconds <= MAX_WINDOW_SECONDS:
            raise ValueError(
                f"window_size_seconds must be in 1..{MAX_WINDOW_SECONDS}, got {window_size_seconds}"
            )
        if allowed_lateness_seconds < 0:
            raise ValueError(
                f"allowed_lateness_seconds must be >= 0, got {allowed_lateness_seconds}"
            )
        self._size = window_size_seconds
        self._lateness = allowed_lateness_seconds
        self.windowed: beam.PCollection | None = None

    def expand(self, verdicts: beam.PCollection) -> beam.PCollection:
        self.windowed = (
            verdicts
            | "ToEventTime" >> beam.ParDo(ToEventTimeFn()).with_output_types(Timed)
            | "FixedEventTimeWindows"
            >> beam.WindowInto(
                FixedWindows(self._size), allowed_lateness=Duration(seconds=self._lateness)
            )
        )
        return (
            self.windowed
            | "StampWindowBounds" >> beam.ParDo(StampWindowFn()).with_output_types(LedgerCandidate)
            | "BackToGlobalWindow" >> beam.WindowInto(GlobalWindows())
        )

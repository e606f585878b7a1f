"""Event-time windows: which fixed window each accepted event belongs to.

Beam's ``FixedWindows`` is the single definition of a window here. Each candidate is stamped
with the bounds of the window ``FixedWindows`` assigns to its payload's event_time, so the
warehouse recomputes exactly those windows (``account_window_totals`` is keyed by them).

Totals are not summed in Beam: a sum held in the pipeline would count a duplicate that outlived
the dedup state twice, and would be wrong after a partial replay. The sink recomputes each
touched window from the ledger instead, inside the same MERGE transaction, so a total is always
exactly the sum over ``transaction_events``.

That is also why no step here groups by window and nothing is ever dropped for lateness: an
event arriving after its window closed still lands in the ledger and its window is recomputed.
The sink's path therefore stays in the global window: the bounds are computed in one step, not
by windowing every element into ``FixedWindows`` and back (two ``WindowInto`` steps cost a third
of a batch run on the DirectRunner; BENCHMARKS.md). :class:`WindowByEventTime` puts the verdicts
into those same windows, with ``allowed_lateness``, for windowed steps a user adds (for example
Beam-side alerts); Beam closes those ``allowed_lateness`` after the watermark passes a window.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.transforms.window import FixedWindows, GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from pipeline.events import Event, LedgerCandidate, from_micros, to_micros, window_bound

MAX_WINDOW_SECONDS = 86_400  # see events.MAX_EVENT_TIME: window ends must stay valid timestamps


# The source times a datetime can hold; a runner's MIN/MAX timestamps are outside.
_SOURCE_MICROS = range(
    to_micros(dt.datetime.min.replace(tzinfo=dt.UTC)),
    to_micros(dt.datetime.max.replace(tzinfo=dt.UTC)) + 1,
)
# (event, primary, source time in microseconds or None): typed, so that Beam encodes it with the
# event's own coder instead of pickling it.
Timed = tuple[Event, bool, int | None]


def _source_micros(timestamp: Timestamp) -> int | None:
    micros = timestamp.micros
    # Outside: a runner's MIN/MAX timestamp, no source position to track.
    return micros if micros in _SOURCE_MICROS else None


# GlobalWindow() re-reads a proto constant on every call (1.6 us in Beam 2.77), and the runner
# calls it once per TimestampedValue a DoFn yields (GlobalWindows.assign): 2.4 us an element, in
# each step that re-timestamps. A step that knows its input is in the global window yields the
# WindowedValue itself, with this window built once; Beam's DoFnRunner takes it as it is.
_GLOBAL_WINDOW = (GlobalWindow(),)


def in_global_window(value: Any, micros: int) -> WindowedValue:
    """``value`` timestamped at ``micros`` in the global window: what the runner makes of a
    ``TimestampedValue`` there, without its per-element cost. Only for input in the global
    window."""
    return WindowedValue(value, Timestamp(micros=micros), _GLOBAL_WINDOW)


def _validated(window_size_seconds: int, allowed_lateness_seconds: int = 0) -> None:
    if not 1 <= window_size_seconds <= MAX_WINDOW_SECONDS:
        raise ValueError(
            f"window_size_seconds must be in 1..{MAX_WINDOW_SECONDS}, got {window_size_seconds}"
        )
    if allowed_lateness_seconds < 0:
        raise ValueError(f"allowed_lateness_seconds must be >= 0, got {allowed_lateness_seconds}")


class StampWindowFn(beam.DoFn):
    """(event, primary) -> :class:`LedgerCandidate` with the bounds of its event-time window."""

    def __init__(self, windows: FixedWindows) -> None:
        # FixedWindows.assign's own arithmetic (start = t - (t - offset) % size), on integer
        # microseconds: the same windows without three Timestamp objects per element
        # (tests/transforms/test_windows.py checks them against FixedWindows.assign).
        self._size = windows.size.micros
        self._offset = windows.offset.micros

    def process(
        self,
        verdict: tuple[Event, bool],
        source_time: Timestamp = beam.DoFn.TimestampParam,  # type: ignore[assignment]
    ) -> Iterator[LedgerCandidate]:
        event, primary = verdict
        micros = to_micros(event.event_time)
        start = micros - (micros - self._offset) % self._size
        source = _source_micros(source_time)
        if source is None:
            source_at = None
        elif source == micros:  # file input: timestamped with the event time
            source_at = event.event_time
        else:
            source_at = from_micros(source)
        yield LedgerCandidate(
            event, primary, window_bound(start), window_bound(start + self._size), source_at
        )


class AssignEventTimeWindows(beam.PTransform):
    """``(event, primary)`` -> :class:`LedgerCandidate` with its fixed event-time window.

    The window is the one ``FixedWindows(window_size_seconds)`` assigns to the payload's
    event_time; the element's incoming timestamp (the source time) is kept on the candidate and
    as its timestamp. Elements stay in their window (the dedup's output is in the global window,
    so the sink can batch rows of many windows into one MERGE). Ordering is not changed; no
    element is dropped, late or not.
    """

    def __init__(self, window_size_seconds: int) -> None:
        super().__init__()
        _validated(window_size_seconds)
        self._windows = FixedWindows(window_size_seconds)

    def expand(self, verdicts: beam.PCollection) -> beam.PCollection:
        return verdicts | "StampWindowBounds" >> beam.ParDo(
            StampWindowFn(self._windows)
        ).with_output_types(LedgerCandidate)


class ToEventTimeFn(beam.DoFn):
    """Timestamp each verdict with its payload's event_time, keeping the source time."""

    def process(
        self,
        verdict: tuple[Event, bool],
        source_time: Timestamp = beam.DoFn.TimestampParam,  # type: ignore[assignment]
    ) -> Iterator[TimestampedValue]:
        event, primary = verdict
        yield TimestampedValue(
            (event, primary, _source_micros(source_time)),
            Timestamp(micros=to_micros(event.event_time)),
        )


class WindowByEventTime(beam.PTransform):
    """``(event, primary)`` -> ``(event, primary, source time in microseconds or None)``,
    timestamped with event_time, in the ``FixedWindows`` the candidates are stamped with.

    For windowed steps a user adds on the pipeline's verdicts (``PipelineOutputs.windowed``);
    ``allowed_lateness_seconds`` governs when Beam closes those windows. The pipeline's own
    path does not go through it.
    """

    def __init__(self, window_size_seconds: int, allowed_lateness_seconds: int = 0) -> None:
        super().__init__()
        _validated(window_size_seconds, allowed_lateness_seconds)
        self._size = window_size_seconds
        self._lateness = allowed_lateness_seconds

    def expand(self, verdicts: beam.PCollection) -> beam.PCollection:
        return (
            verdicts
            | "ToEventTime" >> beam.ParDo(ToEventTimeFn()).with_output_types(Timed)
            | "FixedEventTimeWindows"
            >> beam.WindowInto(
                FixedWindows(self._size), allowed_lateness=Duration(seconds=self._lateness)
            )
        )

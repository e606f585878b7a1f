"""DedupByEventId: both implementations give the same verdicts on the same cases."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import (
    BeamAssertException,
    TestWindowedValue,
    assert_that,
    equal_to,
)
from apache_beam.transforms.window import FixedWindows, GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from pipeline.events import Event, parse_event, to_micros
from pipeline.transforms.dedup import ChooseVersionFn, DedupByEventId
from tests.helpers import event_line

STRATEGIES = ["stateful", "grouped"]


def ev(event_id: str, **fields: object) -> Event:
    return parse_event(event_line(event_id, **fields))  # type: ignore[arg-type]


def _stamped(events: Iterable[Event], seconds_apart: int = 0) -> list[TimestampedValue]:
    """Events timestamped at arrival (as Pub/Sub would), ``seconds_apart`` from each other."""
    return [
        TimestampedValue(e, to_micros(e.event_time) / 1e6 + i * seconds_apart)
        for i, e in enumerate(events)
    ]


def run_dedup(events: Sequence[TimestampedValue], strategy: str, check) -> None:  # type: ignore[no-untyped-def]
    with TestPipeline() as p:
        verdicts = (
            p
            | beam.Create(events)
            | "ArrivalWindows" >> beam.WindowInto(FixedWindows(10))
            | DedupByEventId(ttl_seconds=3600, strategy=strategy)
        )
        assert_that(verdicts, check)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_identical_duplicates_in_other_windows_are_dropped(strategy: str) -> None:
    a, b = ev("a"), ev("b", amount="1")
    # The copies of "a" arrive 30 s apart: three different 10 s windows.
    events = _stamped([a, b, ev("a"), ev("a", amount=a.amount)], seconds_apart=30)
    run_dedup(events, strategy, equal_to([(a, True), (b, True)]))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_equal_after_normalisation_counts_as_identical(strategy: str) -> None:
    a = ev("a", amount="10.5", event_time="2026-01-01T00:00:00Z")
    copy = ev("a", amount="10.50", event_time="2026-01-01T01:00:00+01:00")
    run_dedup(_stamped([a, copy]), strategy, equal_to([(a, True)]))


def _one_primary_per_id(expected_versions: Iterable[Event]):  # type: ignore[no-untyped-def]
    expected = set(expected_versions)

    def check(verdicts: list[tuple[Event, bool]]) -> None:
        events = [event for event, _ in verdicts]
        if Counter(events) != Counter(expected):
            raise BeamAssertException(f"versions {events} != {expected}")
        primaries = Counter(event.event_id for event, primary in verdicts if primary)
        if set(primaries.values()) != {1} or set(primaries) != {e.event_id for e in expected}:
            raise BeamAssertException(f"not exactly one primary per event_id: {verdicts}")

    return check


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_conflicting_versions_are_flagged_not_dropped(strategy: str) -> None:
    v1 = ev("a", amount="10")
    v2 = ev("a", amount="11")
    v3 = ev("a", status="POSTED", event_time="2026-01-02T00:00:00Z")
    events = _stamped([v1, v2, v2, v3, v1], seconds_apart=5)
    run_dedup(events, strategy, _one_primary_per_id([v1, v2, v3]))


def test_grouped_path_chooses_the_earliest_version_whatever_the_order() -> None:
    early = ev("a", event_time="2026-01-01T00:00:00Z")
    late = ev("a", event_time="2026-01-01T00:00:01Z")
    for order in ([early, late], [late, early]):
        verdicts = [tv.value for tv in ChooseVersionFn().process(("a", order))]
        assert verdicts == [(early, True), (late, False)]


@pytest.mark.parametrize("windowed_input", [False, True])
def test_grouped_path_emits_in_the_global_window_at_event_time(windowed_input: bool) -> None:
    """After its GroupByKey the verdicts are put back at their event_time, in the global window,
    whatever windows the input came in."""
    early = ev("a", event_time="2026-01-01T00:00:07Z")
    late = ev("a", event_time="2026-01-01T00:00:08Z")

    def at_event_time(verdict: tuple[Event, bool]) -> TestWindowedValue:
        micros = to_micros(verdict[0].event_time)
        return TestWindowedValue(verdict, Timestamp(micros=micros), [GlobalWindow()])

    with TestPipeline() as p:
        events = p | beam.Create(_stamped([late, early, early], seconds_apart=30))
        if windowed_input:
            events = events | "ArrivalWindows" >> beam.WindowInto(FixedWindows(10))
        verdicts = events | DedupByEventId(ttl_seconds=3600, strategy="grouped")
        expected = [at_event_time((early, True)), at_event_time((late, False))]
        assert_that(verdicts, equal_to(expected), reify_windows=True)


@pytest.mark.parametrize("bad", [{"ttl_seconds": 0}, {"ttl_seconds": 10, "strategy": "magic"}])
def test_invalid_arguments_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DedupByEventId(**bad)  # type: ignore[arg-type]

"""The run's progress: the replay safe point, and the idle clock that stops a local run."""

from __future__ import annotations

import datetime as dt

import pytest

from pipeline.progress import RunProgress, observed, observing

T0 = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_safe_point_is_the_oldest_outstanding_message_then_the_newest_settled() -> None:
    progress = RunProgress()
    assert progress.safe_point() is None
    times = [T0 + dt.timedelta(seconds=s) for s in (5, 1, 3)]
    for publish_time in times:
        progress.pulled(publish_time)
    assert progress.safe_point() == T0 + dt.timedelta(seconds=1)
    progress.settled([T0 + dt.timedelta(seconds=1)])
    assert progress.safe_point() == T0 + dt.timedelta(seconds=3)
    progress.settled([T0 + dt.timedelta(seconds=5), T0 + dt.timedelta(seconds=3), None])
    assert progress.outstanding() == 0
    assert progress.safe_point() == T0 + dt.timedelta(seconds=5)


def test_a_copy_pulled_twice_stays_outstanding_until_both_settle() -> None:
    progress = RunProgress()
    progress.pulled(T0)
    progress.pulled(T0)
    progress.settled([T0])
    assert progress.outstanding() == 1 and progress.safe_point() == T0


def test_the_idle_clock_restarts_on_arrivals_and_on_commits() -> None:
    """On the DirectRunner's one worker thread the read does not pull while the sink merges, so
    a commit is activity: the idle time must be counted from it, not from the last arrival."""
    clock = FakeClock()
    progress = RunProgress(clock=clock)
    clock.now += 4
    assert progress.idle_seconds() == 4
    progress.pulled(T0)
    assert progress.idle_seconds() == 0
    clock.now += 30  # the sink merges for half a minute
    assert progress.idle_seconds() == 30
    progress.settled([T0])
    assert progress.idle_seconds() == 0
    clock.now += 2.5
    assert progress.idle_seconds() == 2.5


def test_a_process_observes_one_run_at_a_time_and_none_outside_it() -> None:
    """run.py wires the observer in once (pipeline/progress.py); steps look it up, and find none
    where no local run is observed (a batch run, a Dataflow worker)."""
    assert observed() is None
    with observing() as run:
        assert observed() is run
        with pytest.raises(RuntimeError, match="already observes"), observing():
            pass
        assert observed() is run
    assert observed() is None

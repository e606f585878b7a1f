"""Replay checkpoints and idle detection for Pub/Sub input on the DirectRunner.

Beam's Python DirectRunner acknowledges Pub/Sub messages as soon as it pulls them
(``apache_beam/runners/direct/transform_evaluator.py``, ``_read_from_pubsub``), so a process that
dies loses what it had pulled and not yet merged. Recovery is by replay: the sink records in the
warehouse, after each committed batch, the oldest publish time not yet safely committed (minus a
margin), and the next run seeks its subscription back there before reading. Replaying more than
needed is harmless: every MERGE is idempotent.

"Not yet safely committed" is known exactly inside the one process the DirectRunner uses: this
module keeps, per run, the publish times pulled and not yet *settled*. A message is settled when
its ledger batch or dead letter committed (or its row was staged: staging is durable), or when
dedup dropped it as an identical copy (its twin is then outstanding or committed, and either
holds the checkpoint or is already safe). The safe point is the oldest outstanding publish time
or, when none is outstanding, the newest settled one. A margin (``--replay_margin_seconds``)
covers the instant between the runner's ack and the registration of a message, and out-of-order
delivery.

The same object tells a local run when it may stop (``--exit_when_idle_seconds``): nothing pulled
is unsettled and nothing arrived or committed for the idle time. Counting commits as activity
matters because the DirectRunner runs every step on one worker thread: while the sink merges,
the read does not pull, so a message that became deliverable meanwhile (a redelivery) is pulled
only after the last merge, and an idle clock that counted arrivals alone would already have run
out by then.

On Dataflow none of this runs: Dataflow acknowledges only after a durable commit, and replay is an
operator's seek (see docs/OPERATE.md, Replay and recovery). The observer is wired in once, by
run.py (``observing``), not passed to the steps: the few places that report to it (the source
noting arrivals, dedup settling dropped copies, the sinks settling commits, the outcome
counters) look the observed run up (``observed``), and find none on Dataflow workers.

The same per-run object keeps a tally of the pipeline's counters, because the streaming
DirectRunner of Beam 2.77 loses Beam counter updates after the first bundle of each step and
thread (its StateSampler caches the first bundle's MetricsContainer in ``scoped_state``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator


class RunProgress:
    """Outstanding publish times, activity clock and counter tally of one pipeline run."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock  # a seam: tests drive the idle clock by hand
        self._lock = threading.Lock()
        self._outstanding: Counter[dt.datetime] = Counter()
        self._newest_settled: dt.datetime | None = None
        self._last_activity = self._clock()
        self._tally: Counter[str] = Counter()
        self._closers: list[Callable[[], None]] = []
        self.checkpoint_lock = threading.Lock()  # serialises compute-then-write of checkpoints

    def pulled(self, publish_time: dt.datetime) -> None:
        with self._lock:
            self._outstanding[publish_time] += 1
            self._last_activity = self._clock()

    def settled(self, publish_times: Iterable[dt.datetime | None]) -> None:
        with self._lock:
            self._last_activity = self._clock()
            for publish_time in publish_times:
                if publish_time is None:
                    continue
                if self._outstanding[publish_time] > 0:
                    self._outstanding[publish_time] -= 1
                    if not self._outstanding[publish_time]:
                        del self._outstanding[publish_time]
                if self._newest_settled is None or publish_time > self._newest_settled:
                    self._newest_settled = publish_time

    def safe_point(self) -> dt.datetime | None:
        """The oldest publish time that is not known to be committed."""
        with self._lock:
            if self._outstanding:
                return min(self._outstanding)
            return self._newest_settled

    def outstanding(self) -> int:
        with self._lock:
            return sum(self._outstanding.values())

    def idle_seconds(self) -> float:
        """Seconds since a message last arrived or a batch last committed."""
        with self._lock:
            return self._clock() - self._last_activity

    def count(self, name: str, value: int = 1) -> None:
        with self._lock:
            self._tally[name] += value

    def tally(self) -> dict[str, int]:
        with self._lock:
            return dict(self._tally)

    def on_close(self, closer: Callable[[], None]) -> None:
        """Register what to release when the run is stopped (the DirectRunner's cancel does not
        tear DoFns down)."""
        with self._lock:
            self._closers.append(closer)

    def close_all(self) -> None:
        with self._lock:
            closers, self._closers = self._closers, []
        for closer in closers:
            closer()


# The run this process observes. The DirectRunner runs the whole pipeline in the process that
# launched it, so the steps find the run here, without it being passed to each of them.
_OBSERVED: RunProgress | None = None
_OBSERVED_LOCK = threading.Lock()


def observed() -> RunProgress | None:
    """The run this process observes: set by run.py around a local streaming run; None on
    Dataflow workers and in every other run, where the steps then report nothing."""
    return _OBSERVED


@contextlib.contextmanager
def observing(progress: RunProgress | None = None) -> Iterator[RunProgress]:
    """Observe one run in this process while the block runs (one at a time)."""
    global _OBSERVED  # noqa: PLW0603  # the process's one observed run, by design (above)
    run = progress or RunProgress()
    with _OBSERVED_LOCK:
        if _OBSERVED is not None:
            raise RuntimeError("this process already observes a run")
        _OBSERVED = run
    try:
        yield run
    finally:
        with _OBSERVED_LOCK:
            _OBSERVED = None

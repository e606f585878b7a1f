"""A CI-sized soak of the streaming dedup: 60,000 distinct events (75,000 with copies) through
the stateful DoFn on the streaming DirectRunner (TestStream), processing time advancing past the
TTL as the stream goes. Dedup state must stay bounded by the TTL (live keys never exceed what
arrived within about one TTL) and expired state must give its memory back.

Memory is compared with the same stream through no dedup at all, each in its own process: the
DirectRunner's test stream holds its whole input, so absolute RSS says little. `make bench` runs
the soak with 200,000 distinct keys in each mode (BENCHMARKS.md, section 4).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import TimestampedValue

from pipeline import metrics
from pipeline.events import Event, EventCoder
from pipeline.progress import RunProgress, observing
from pipeline.transforms.dedup import DedupByEventId
from tests.helpers import utc

pytestmark = pytest.mark.slow

T0 = utc("2026-01-01T00:00:00Z")
TTL_SECONDS = 60


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@dataclass
class Samples:
    live_keys: list[int] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)


def _sample(progress: RunProgress, samples: Samples, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        tally = progress.tally()
        created = tally.get(metrics.DEDUP_STATE_CREATED, 0)
        samples.seen.append(created + tally.get(metrics.DUPLICATES_PIPELINE, 0))
        samples.live_keys.append(created - tally.get(metrics.DEDUP_STATE_EXPIRED, 0))
        samples.rss_mb.append(_rss_mb())


def stream(events: int, chunk: int) -> TestStream:
    """``chunk`` new event_ids at a time, 25% of them sent twice; processing time then moves one
    TTL on, so the previous chunks' state expires. (The DirectRunner's test clock starts at the
    epoch and the dedup TTL is set in wall time: the first step brings the clock to now.)"""
    test_stream = TestStream(coder=EventCoder()).advance_processing_time(int(time.time()))
    for start in range(0, events, chunk):
        ids = range(start, min(events, start + chunk))
        batch = [_event(i) for i in ids] + [_event(i) for i in ids if i % 4 == 0]
        test_stream = test_stream.add_elements(
            [TimestampedValue(e, e.event_time.timestamp()) for e in batch]
        ).advance_processing_time(TTL_SECONDS + 1)
    return test_stream.advance_watermark_to_infinity()


def _event(i: int) -> Event:
    from decimal import Decimal

    return Event(f"soak-{i:08d}", f"t{i % 997}", "a1", Decimal("1.25"), "USD", "POSTED", T0)


def run_soak(events: int, chunk: int, mode: str = "dedup") -> Samples:
    """``mode``: dedup (TTL as configured), no-expiry (TTL far beyond the run: the control),
    passthrough (the same stream, no dedup: what the runner itself costs)."""
    samples, stop = Samples(), threading.Event()
    with observing() as progress:  # the tally of the dedup's counters (pipeline/progress.py)
        sampler = threading.Thread(target=_sample, args=(progress, samples, stop), daemon=True)
        try:
            pipeline = beam.Pipeline(options=PipelineOptions(["--streaming"]))
            events_in = pipeline | stream(events, chunk)
            if mode != "passthrough":
                ttl = TTL_SECONDS if mode == "dedup" else 10**9
                events_in = events_in | DedupByEventId(ttl, strategy="stateful")
            _ = events_in | beam.Map(lambda _: None)
            sampler.start()
            pipeline.run().wait_until_finish()
        finally:
            stop.set()
            sampler.join()
    samples.seen.append(progress.tally().get(metrics.DEDUP_STATE_CREATED, 0))
    samples.rss_mb.append(_rss_mb())
    return samples


def _measure(mode: str, events: int, chunk: int) -> dict[str, float]:
    """One soak in a fresh process, so that its peak memory is its own."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.test_soak", mode, str(events), str(chunk)],
        capture_output=True, text=True, check=False, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_streaming_dedup_state_stays_bounded_by_the_ttl() -> None:
    events, chunk = 60_000, 5_000
    dedup = _measure("dedup", events, chunk)
    control = _measure("no-expiry", events, chunk)
    baseline = _measure("passthrough", events, chunk)
    assert dedup["seen"] == control["seen"] == events  # every event_id was new once
    # Bounded by the TTL: never more than about two chunks (one TTL of arrivals) alive, where
    # the control keeps every key.
    assert dedup["max_live_keys"] <= 3 * chunk, dedup
    assert control["max_live_keys"] == events, control
    # Expired state is given back: the dedup adds clearly less memory over the bare runner than
    # the control. (Not zero: the DirectRunner keeps bookkeeping per key it has seen, about
    # 1 KB, even after the state is cleared; Dataflow deletes cleared state. BENCHMARKS.md.)
    added, kept = (
        dedup["peak_rss_mb"] - baseline["peak_rss_mb"],
        control["peak_rss_mb"] - baseline["peak_rss_mb"],
    )
    assert added < 0.75 * kept, (dedup, control, baseline)


def main(argv: list[str]) -> None:
    mode, events, chunk = argv[0], int(argv[1]), int(argv[2])
    samples = run_soak(events, chunk, mode)
    print(
        json.dumps(
            {
                "mode": mode,
                "events": events,
                "seen": samples.seen[-1],
                "max_live_keys": max(samples.live_keys, default=0),
                "peak_rss_mb": round(max(samples.rss_mb), 1),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])

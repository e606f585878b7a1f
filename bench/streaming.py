"""Streaming dedup on the DirectRunner: the pipeline's stateful DoFn against Beam's
DeduplicatePerKey over the same TestStream (50% duplicate keys), elements per second.

    python -m bench.streaming VARIANT EVENTS    # VARIANT: pipeline | beam_deduplicate | none
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from decimal import Decimal

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.deduplicate import DeduplicatePerKey
from apache_beam.transforms.window import TimestampedValue

from pipeline.events import Event, EventCoder
from pipeline.transforms.dedup import StatefulFirstVersionFn

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _stream(events: int) -> TestStream:
    stream = TestStream(coder=EventCoder()).advance_watermark_to(T0.timestamp())
    for start in range(0, events, 1000):
        chunk = [
            Event(f"e{i % (events // 2)}", "t", "a", Decimal("1.000000000"), "USD", "POSTED", T0)
            for i in range(start, min(events, start + 1000))
        ]
        stream = stream.add_elements([TimestampedValue(e, T0.timestamp()) for e in chunk])
    return stream.advance_watermark_to_infinity()


def run(variant: str, events: int) -> dict[str, object]:
    pipeline = beam.Pipeline(options=PipelineOptions(["--streaming"]))
    keyed = (
        pipeline
        | _stream(events)
        | beam.Map(lambda e: (e.event_id, e)).with_output_types(tuple[str, Event])
    )
    if variant == "pipeline":
        out = keyed | beam.ParDo(StatefulFirstVersionFn(3600)).with_input_types(tuple[str, Event])
    elif variant == "beam_deduplicate":
        out = keyed | DeduplicatePerKey(processing_time_duration=3600)
    else:
        out = keyed
    _ = out | beam.Map(lambda _: None)
    started = time.perf_counter()
    pipeline.run().wait_until_finish()
    seconds = time.perf_counter() - started
    return {"variant": variant, "events": events, "seconds": round(seconds, 1),
            "events_per_second": round(events / seconds)}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], int(sys.argv[2]))))

"""End-to-end batch throughput: the pipeline against the same pipeline built on Beam's
DeduplicatePerKey, and against a pass-through that reads, parses and writes the same rows with no
dedup step at all; and (BENCHMARKS.md section 7) against the cheapest pipeline that lands the
rows, ``append_only`` (read, parse, batch, append to DuckDB: no dedup, no MERGE). The first
three use the pipeline's sink (staged appends, merge cycles). Each variant runs in its own
process (peak memory is then its own) on the DirectRunner, into a fresh DuckDB file, and reports
lines per second.

    python -m bench.batch VARIANT FILES_GLOB DATABASE    # one run, prints a JSON line
"""

from __future__ import annotations

import json
import resource
import sys
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms.deduplicate import DeduplicatePerKey

from pipeline import metrics
from pipeline.dead_letters import DEAD_LETTER_TAG
from pipeline.events import Event, LedgerCandidate
from pipeline.sinks.dispatch import warehouse_factory
from pipeline.sinks.upsert import StageAndMergeLedger, UpsertDeadLetters
from pipeline.sinks.warehouse import WarehouseFactory
from pipeline.sources import ReadEventFiles
from pipeline.transforms.dedup import DedupByEventId
from pipeline.transforms.parse import ParseEvents
from pipeline.transforms.windows import AssignEventTimeWindows

VARIANTS = ("pipeline", "beam_deduplicate", "passthrough", "append_only")


def _dedup_step(variant: str) -> beam.PTransform:
    if variant == "pipeline":
        return DedupByEventId(ttl_seconds=3600)  # bounded input: the GroupByKey path
    if variant == "beam_deduplicate":
        # The same semantics as far as Beam's transform goes: one element per key, state expiring
        # an hour after it was set; as the verdict the rest of the pipeline expects.
        return (
            "KeyByEventId"
            >> beam.Map(lambda e: (e.event_id, e)).with_output_types(tuple[str, Event])
            | "BeamDeduplicatePerKey" >> DeduplicatePerKey(processing_time_duration=3600)
            | "AsVerdict" >> beam.Map(lambda kv: (kv[1], True))
        )
    return "AsVerdict" >> beam.Map(lambda e: (e, True))  # passthrough: every event is primary


class _Append(beam.DoFn):
    """Appends each batch to the warehouse's staging table, and nothing else."""

    def __init__(self, factory: WarehouseFactory) -> None:
        self._factory = factory

    def setup(self) -> None:
        self._warehouse = self._factory()
        self._warehouse.create_tables()

    def process(self, batch: list[LedgerCandidate]) -> None:
        self._warehouse.stage_events(batch)

    def teardown(self) -> None:
        self._warehouse.close()


def run(variant: str, files: str, database: str) -> dict[str, object]:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    factory = warehouse_factory(f"duckdb:{database}")
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    parsed = pipeline | "ReadEvents" >> ReadEventFiles(files) | "ParseEvents" >> ParseEvents()
    verdicts = parsed["events"] | "Dedup" >> _dedup_step(variant)
    candidates = verdicts | "AssignWindows" >> AssignEventTimeWindows(60)
    if variant == "append_only":
        _ = (
            candidates
            | "Batch" >> beam.BatchElements(min_batch_size=5000, max_batch_size=5000)
            | "Append" >> beam.ParDo(_Append(factory))
        )
    else:
        _ = candidates | "MergeLedger" >> StageAndMergeLedger(factory)
    _ = parsed[DEAD_LETTER_TAG] | "MergeDeadLetters" >> UpsertDeadLetters(factory)
    started = time.perf_counter()
    result = pipeline.run()
    result.wait_until_finish()
    seconds = time.perf_counter() - started
    lines = metrics.read_counters(result).get(metrics.LINES_READ, 0)
    return {
        "variant": variant,
        "lines": lines,
        "seconds": round(seconds, 1),
        "lines_per_second": round(lines / seconds),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


if __name__ == "__main__":
    print(json.dumps(run(*sys.argv[1:4])))

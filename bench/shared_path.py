"""Where the shared path's time goes: the pass-through pipeline built up one step at a time.

Every variant of bench/batch.py reads, parses, stamps windows, batches and MERGEs; only the dedup
step differs. Each prefix below is the pass-through pipeline cut after one more of those steps
(the last one is the whole ledger path), so the difference between consecutive prefixes is what
that step costs on the DirectRunner.

    python -m bench.shared_path PREFIX FILES_GLOB DATABASE   # one run, prints a JSON line
"""

from __future__ import annotations

import json
import sys
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.sinks.dispatch import warehouse_factory
from pipeline.sinks.upsert import StageAndMergeLedger
from pipeline.sources import ReadEventFiles
from pipeline.transforms.parse import ParseEvents
from pipeline.transforms.windows import AssignEventTimeWindows

PREFIXES = ("read", "parse", "stamp_windows", "batch", "merge")


def run(prefix: str, files: str, database: str) -> dict[str, object]:
    if prefix not in PREFIXES:
        raise ValueError(f"prefix must be one of {PREFIXES}")
    depth = PREFIXES.index(prefix)
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    rows = pipeline | "ReadEvents" >> ReadEventFiles(files)
    if depth >= PREFIXES.index("parse"):
        rows = (rows | "ParseEvents" >> ParseEvents())["events"]
    if depth >= PREFIXES.index("stamp_windows"):
        rows = (
            rows
            | "AsVerdict" >> beam.Map(lambda e: (e, True))
            | "AssignWindows" >> AssignEventTimeWindows(60)
        )
    if prefix == "batch":  # the sink's batching alone, without appends or merge cycles
        _ = rows | "BatchForStaging" >> beam.BatchElements(min_batch_size=5000, max_batch_size=5000)
    if prefix == "merge":
        _ = rows | "MergeLedger" >> StageAndMergeLedger(warehouse_factory(f"duckdb:{database}"))
    started = time.perf_counter()
    pipeline.run().wait_until_finish()
    return {"prefix": prefix, "seconds": round(time.perf_counter() - started, 1)}


if __name__ == "__main__":
    print(json.dumps(run(*sys.argv[1:4])))

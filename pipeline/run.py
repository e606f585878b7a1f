"""Wiring: ``build_pipeline`` assembles the steps and returns their outputs (for tests);
``run`` only parses options, creates the Pipeline, runs it and reads the summary.

    ReadEvents -> ParseEvents -> DedupByEventId -> AssignWindows -> MergeLedger
                      \\-> dead letters ------------------------------> MergeDeadLetters

Step labels are part of the job's identity on Dataflow (``--update`` maps state by label);
tests/test_labels.py pins them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import metrics
from pipeline.dead_letters import DEAD_LETTER_TAG
from pipeline.options import EffectivelyOnceOptions, validate
from pipeline.sinks.upsert import UpsertDeadLetters, UpsertLedger
from pipeline.sinks.warehouse import WarehouseFactory, warehouse_factory
from pipeline.sources import ReadEventFiles
from pipeline.transforms.dedup import DedupByEventId
from pipeline.transforms.parse import ParseEvents
from pipeline.transforms.windows import AssignEventTimeWindows


@dataclass(frozen=True)
class PipelineOutputs:
    events: beam.PCollection  # valid events, timestamped at event_time
    dead_letters: beam.PCollection  # refused at parse
    candidates: beam.PCollection  # LedgerCandidate, after dedup and windowing
    windowed: beam.PCollection  # (event, primary) in fixed event-time windows
    merged: beam.PCollection  # MergeOutcome per committed ledger batch
    dead_letters_merged: beam.PCollection  # rows inserted per dead-letter batch


def build_pipeline(
    pipeline: beam.Pipeline,
    options: PipelineOptions,
    warehouse: WarehouseFactory | None = None,
    records: beam.PCollection | None = None,
) -> PipelineOutputs:
    """Add the whole job to ``pipeline``. ``warehouse`` and ``records`` are seams for tests: a
    factory of a (fault-injecting) warehouse, and input in place of the configured source."""
    opts = options.view_as(EffectivelyOnceOptions)
    factory = warehouse or warehouse_factory(opts.warehouse)
    if records is None:
        records = pipeline | "ReadEvents" >> ReadEventFiles(opts.input_files)
    parsed = records | "ParseEvents" >> ParseEvents()
    verdicts = parsed["events"] | "DedupByEventId" >> DedupByEventId(
        opts.dedup_ttl_seconds, opts.dedup_strategy
    )
    windows = AssignEventTimeWindows(opts.window_size_seconds, opts.allowed_lateness_seconds)
    candidates = verdicts | "AssignWindows" >> windows
    sink_args = {
        "max_batch_rows": opts.max_batch_rows,
        "flush_seconds": opts.batch_flush_seconds,
        "num_retries": opts.merge_retries,
        "initial_retry_delay_seconds": opts.merge_retry_delay_seconds,
    }
    merged = candidates | "MergeLedger" >> UpsertLedger(factory, **sink_args)
    dead_letters_merged = parsed[DEAD_LETTER_TAG] | "MergeDeadLetters" >> UpsertDeadLetters(
        factory, **sink_args
    )
    assert windows.windowed is not None
    return PipelineOutputs(
        events=parsed["events"],
        dead_letters=parsed[DEAD_LETTER_TAG],
        candidates=candidates,
        windowed=windows.windowed,
        merged=merged,
        dead_letters_merged=dead_letters_merged,
    )


def run(argv: Sequence[str] | None = None) -> metrics.RunSummary:
    options = PipelineOptions(list(argv) if argv is not None else None)
    problems = validate(options)
    if problems:
        raise ValueError("invalid options:\n  " + "\n  ".join(problems))
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options)
    result = pipeline.run()
    result.wait_until_finish()
    return metrics.RunSummary(metrics.read_counters(result))


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        summary = run(argv if argv is not None else sys.argv[1:])
    except ValueError as error:
        if str(error).startswith("invalid options"):
            print(error, file=sys.stderr)
            return 2
        raise
    print(summary.render())
    return 0

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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineResult, PipelineState

from pipeline import metrics
from pipeline.dead_letters import DEAD_LETTER_TAG
from pipeline.options import (
    EffectivelyOnceOptions,
    bigquery_settings,
    is_streaming_input,
    validate,
)
from pipeline.progress import RunProgress, observing
from pipeline.sinks.dispatch import open_warehouse, warehouse_factory
from pipeline.sinks.upsert import (
    Checkpointing,
    StageAndMergeLedger,
    UpsertDeadLetters,
)
from pipeline.sinks.warehouse import MergeOutcome, WarehouseFactory, WarehouseSetupError
from pipeline.sources import (
    ReadEventFiles,
    ReadPubSubMessages,
    ack_deadline_seconds,
    seek_subscription,
)
from pipeline.transforms.dedup import DedupByEventId
from pipeline.transforms.parse import ParseEvents
from pipeline.transforms.windows import AssignEventTimeWindows, WindowByEventTime

_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineOutputs:
    events: beam.PCollection  # valid events
    dead_letters: beam.PCollection  # refused at parse
    verdicts: beam.PCollection  # (event, primary) after dedup, in the global window
    candidates: beam.PCollection  # LedgerCandidate: verdicts stamped with their window
    merged: beam.PCollection  # MergeOutcome per committed ledger batch
    dead_letters_merged: beam.PCollection  # rows inserted per dead-letter batch
    window_size_seconds: int
    allowed_lateness_seconds: int

    @cached_property
    def windowed(self) -> beam.PCollection:
        """The verdicts as ``(event, primary, source_time)`` in their fixed event-time windows,
        with the configured allowed lateness, for windowed steps a user adds (alerts, Beam-side
        aggregates). Built on first use, before the pipeline runs: the tables do not need it."""
        return self.verdicts | "WindowByEventTime" >> WindowByEventTime(
            self.window_size_seconds, self.allowed_lateness_seconds
        )


def build_pipeline(
    pipeline: beam.Pipeline,
    options: PipelineOptions,
    warehouse: WarehouseFactory | None = None,
    records: beam.PCollection | None = None,
    checkpoints: bool = False,
) -> PipelineOutputs:
    """Add the whole job to ``pipeline``. ``warehouse`` and ``records`` are seams for tests: a
    factory of a (fault-injecting) warehouse, and input in place of the configured source.
    ``checkpoints``: the sinks record the observed run's progress and replay checkpoints of the
    subscription (a streaming run on the DirectRunner: pipeline/progress.py)."""
    opts = options.view_as(EffectivelyOnceOptions)
    factory = warehouse or warehouse_factory(opts.warehouse, bigquery_settings(options))
    if records is None:
        if opts.input_files:
            records = pipeline | "ReadEvents" >> ReadEventFiles(opts.input_files)
        else:
            records = pipeline | "ReadEvents" >> ReadPubSubMessages(
                subscription=opts.input_subscription,
                topic=opts.input_topic,
                timestamp_attribute=opts.timestamp_attribute,
            )
    parsed = records | "ParseEvents" >> ParseEvents()
    verdicts = parsed["events"] | "DedupByEventId" >> DedupByEventId(
        opts.dedup_ttl_seconds, opts.dedup_strategy
    )
    candidates = verdicts | "AssignWindows" >> AssignEventTimeWindows(opts.window_size_seconds)
    checkpointing = None
    if checkpoints:
        checkpointing = Checkpointing(opts.input_subscription or None, opts.replay_margin_seconds)
    sink_args = {
        "max_batch_rows": opts.max_batch_rows,
        "flush_seconds": opts.batch_flush_seconds,
        "slice_seconds": opts.batch_slice_seconds,
        "num_retries": opts.merge_retries,
        "initial_retry_delay_seconds": opts.merge_retry_delay_seconds,
        "checkpointing": checkpointing,
    }
    merged = candidates | "MergeLedger" >> StageAndMergeLedger(
        factory, merge_interval_seconds=opts.merge_interval_seconds, **sink_args
    )
    dead_letters_merged = parsed[DEAD_LETTER_TAG] | "MergeDeadLetters" >> UpsertDeadLetters(
        factory, **sink_args
    )
    return PipelineOutputs(
        events=parsed["events"],
        dead_letters=parsed[DEAD_LETTER_TAG],
        verdicts=verdicts,
        candidates=candidates,
        merged=merged,
        dead_letters_merged=dead_letters_merged,
        window_size_seconds=opts.window_size_seconds,
        allowed_lateness_seconds=opts.allowed_lateness_seconds,
    )


def check_warehouse(options: PipelineOptions) -> None:
    """Fail before the job starts when the warehouse cannot be written: its datasets (their
    existence, location, and the rights to use them) and tables, created if absent. On Dataflow
    this runs in the Flex Template launcher, as the worker's service account, so a missing
    dataset or grant stops the launch with its message instead of failing every bundle."""
    opts = options.view_as(EffectivelyOnceOptions)
    warehouse = open_warehouse(opts.warehouse, bigquery_settings(options))
    try:
        warehouse.create_tables()
    finally:
        warehouse.close()


def merge_what_is_staged(options: PipelineOptions) -> MergeOutcome:
    """The last merge cycle of a local run that stops when idle: the runner is cancelled, not
    drained, so the pipeline's own last cycle does not run; this one merges what it staged."""
    opts = options.view_as(EffectivelyOnceOptions)
    warehouse = open_warehouse(opts.warehouse, bigquery_settings(options))
    try:
        outcome = warehouse.merge_staged()
    finally:
        warehouse.close()
    _LOG.info("Merged what the run staged: %d inserted", outcome.inserted)
    return outcome


def replay_from_checkpoint(options: PipelineOptions) -> None:
    """Seek the subscription back to the warehouse's replay checkpoint, if there is one."""
    opts = options.view_as(EffectivelyOnceOptions)
    warehouse = open_warehouse(opts.warehouse, bigquery_settings(options))
    try:
        warehouse.create_tables()
        checkpoint = warehouse.read_checkpoint(opts.input_subscription)
    finally:
        warehouse.close()
    if checkpoint is None:
        _LOG.info("No replay checkpoint for %s yet", opts.input_subscription)
        return
    _LOG.warning("Replaying %s from %s", opts.input_subscription, checkpoint.isoformat())
    seek_subscription(opts.input_subscription, checkpoint)


def _is_direct(options: PipelineOptions) -> bool:
    runner = options.view_as(StandardOptions).runner
    return runner is None or "DirectRunner" in str(runner)


# How long the DirectRunner's Pub/Sub read blocks in one pull (Beam's transform_evaluator.py).
_DIRECT_RUNNER_PULL_SECONDS = 30


def _leases_returned_seconds(options: PipelineOptions) -> float:
    """How long after its start a local run on a subscription may still receive messages that
    are invisible at the start: those leased to a consumer that died (an earlier run killed
    mid-pull). They come back when their lease expires, one ack deadline after they were
    leased; and the dead consumer's last pull, which the Pub/Sub emulator keeps serving after
    its client is gone, can lease more (including the messages a replay's seek just made
    deliverable) until that pull's own deadline. Measured on the emulator: after a kill -9
    during a pull and a seek, ten messages came back 60 s later (the ack deadline), and a run
    that stopped at idle before then left them in the subscription. A topic run reads through a
    fresh subscription of its own, which nobody else ever leased from."""
    opts = options.view_as(EffectivelyOnceOptions)
    if not opts.input_subscription:
        return 0.0
    return float(ack_deadline_seconds(opts.input_subscription) + _DIRECT_RUNNER_PULL_SECONDS)


def _wait_until_idle(
    result: PipelineResult, progress: RunProgress, idle_seconds: float, not_before: float
) -> None:
    """Block until nothing pulled is unsettled and nothing arrived or committed for
    ``idle_seconds``, but not before the monotonic time ``not_before``."""
    while True:
        if PipelineState.is_terminal(result.state):
            result.wait_until_finish()  # raises if the pipeline failed
            return
        if (
            time.monotonic() >= not_before
            and progress.idle_seconds() >= idle_seconds
            and progress.outstanding() == 0
        ):
            return
        time.sleep(0.2)


def _run_streaming(options: PipelineOptions) -> metrics.RunSummary:
    opts = options.view_as(EffectivelyOnceOptions)
    options.view_as(StandardOptions).streaming = True
    direct = _is_direct(options)
    if opts.input_subscription and not opts.no_replay and direct:
        replay_from_checkpoint(options)
    with observing() as progress:  # the local run's observer (pipeline/progress.py)
        pipeline = beam.Pipeline(options=options)
        build_pipeline(pipeline, options, checkpoints=direct)
        result = pipeline.run()
        if not direct:
            return metrics.RunSummary({})  # a streaming job was submitted; it runs on its own
        if opts.exit_when_idle_seconds > 0:
            not_before = time.monotonic() + _leases_returned_seconds(options)
            _wait_until_idle(result, progress, opts.exit_when_idle_seconds, not_before)
            result.cancel()
            progress.close_all()  # everything pulled is staged or merged: close the warehouses
            counters = metrics.OutcomeCounters()  # counted into the observed run's tally
            counters.count_outcome(merge_what_is_staged(options))
            counters.inc(metrics.MERGE_CYCLES)
        else:
            result.wait_until_finish()
        return metrics.RunSummary(progress.tally())


def run(argv: Sequence[str] | None = None) -> metrics.RunSummary:
    options = PipelineOptions(list(argv) if argv is not None else None)
    problems = validate(options)
    if problems:
        raise ValueError("invalid options:\n  " + "\n  ".join(problems))
    logging.getLogger("pipeline").setLevel(options.view_as(EffectivelyOnceOptions).log_level)
    check_warehouse(options)
    if is_streaming_input(options):
        return _run_streaming(options)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options)
    result = pipeline.run()
    if not _is_direct(options):
        # A remote job (Dataflow): submitted; the launcher (e.g. a Flex Template) returns now and
        # the job's counters are in its monitoring page.
        return metrics.RunSummary({})
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
    except WarehouseSetupError as error:
        print(f"the warehouse is not ready: {error}", file=sys.stderr)
        return 1
    if summary.counters:
        print(summary.render())
    else:
        print(
            "Job submitted; its counters are in the runner's monitoring"
            " (namespace effectively_once)."
        )
    return 0

"""The pipeline's options: one PipelineOptions subclass, plain values (Flex Templates pass strings).

Every option states its format and default in its help text; ``validate`` fails fast, before a
job is submitted, with every problem at once.
"""

from __future__ import annotations

import argparse

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.sinks.warehouse import parse_warehouse_url
from pipeline.transforms.dedup import STRATEGIES
from pipeline.transforms.windows import MAX_WINDOW_SECONDS


class EffectivelyOnceOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--input_files",
            help="Glob of newline-delimited JSON event files (local path or gs://), read as"
            " bounded input. Example: gs://bucket/events/2026-01-*.jsonl",
        )
        parser.add_argument(
            "--warehouse",
            default="duckdb:warehouse.duckdb",
            help="Where the tables live: duckdb:PATH (embedded, local) or"
            " bigquery:PROJECT.DATASET. Default: duckdb:warehouse.duckdb",
        )
        parser.add_argument(
            "--window_size_seconds",
            type=int,
            default=60,
            help=f"Length of the fixed event-time windows of account_window_totals, in seconds"
            f" (1..{MAX_WINDOW_SECONDS}). Default: 60",
        )
        parser.add_argument(
            "--allowed_lateness_seconds",
            type=int,
            default=0,
            help="Allowed lateness of the event-time windowing, in seconds, for windowed steps"
            " added on the pipeline's windowed output. Late events are never dropped from the"
            " tables (see README, Windows and late data). Default: 0",
        )
        parser.add_argument(
            "--dedup_ttl_seconds",
            type=int,
            default=3600,
            help="How long, in processing time, the streaming dedup state remembers an event_id"
            " after first seeing it. Bounds state to arrival rate x TTL; later duplicates are"
            " caught by the warehouse MERGE. Default: 3600",
        )
        parser.add_argument(
            "--dedup_strategy",
            choices=STRATEGIES,
            default="auto",
            help="auto: stateful dedup for streaming, GroupByKey dedup for bounded input;"
            " stateful or grouped force one. Default: auto",
        )
        parser.add_argument(
            "--max_batch_rows",
            type=int,
            default=5000,
            help="Most rows per MERGE batch. Default: 5000",
        )
        parser.add_argument(
            "--batch_flush_seconds",
            type=float,
            default=5.0,
            help="Streaming only: longest a row waits in a batch before the batch is merged,"
            " in seconds. Default: 5",
        )
        parser.add_argument(
            "--merge_retries",
            type=int,
            default=5,
            help="Retries of a transient warehouse error, with exponential backoff, before the"
            " bundle fails (the runner then retries the bundle). Default: 5",
        )
        parser.add_argument(
            "--merge_retry_delay_seconds",
            type=float,
            default=1.0,
            help="First backoff delay of those retries, in seconds; it doubles each time."
            " Default: 1",
        )


def validate(options: PipelineOptions) -> list[str]:
    """Every problem with the options, as messages; empty when they are usable."""
    opts = options.view_as(EffectivelyOnceOptions)
    problems: list[str] = []
    if not opts.input_files:
        problems.append("--input_files is required")
    try:
        parse_warehouse_url(opts.warehouse)
    except ValueError as error:
        problems.append(str(error))
    if not 1 <= opts.window_size_seconds <= MAX_WINDOW_SECONDS:
        problems.append(f"--window_size_seconds must be in 1..{MAX_WINDOW_SECONDS}")
    if opts.allowed_lateness_seconds < 0:
        problems.append("--allowed_lateness_seconds must be >= 0")
    if opts.dedup_ttl_seconds <= 0:
        problems.append("--dedup_ttl_seconds must be positive")
    if opts.max_batch_rows < 1:
        problems.append("--max_batch_rows must be at least 1")
    if opts.batch_flush_seconds <= 0:
        problems.append("--batch_flush_seconds must be positive")
    if opts.merge_retries < 0:
        problems.append("--merge_retries must be >= 0")
    if opts.merge_retry_delay_seconds < 0:
        problems.append("--merge_retry_delay_seconds must be >= 0")
    if options.view_as(StandardOptions).streaming and opts.input_files:
        problems.append("--input_files is bounded input; do not combine it with --streaming")
    return problems

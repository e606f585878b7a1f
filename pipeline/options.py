"""The pipeline's options: one PipelineOptions subclass, plain values (Flex Templates pass strings).

Every option states its format and default in its help text; ``validate`` fails fast, before a
job is submitted, with every problem at once.
"""

from __future__ import annotations

import argparse
import re

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipeline.gcp_names import PROJECT_ID, PUBSUB_NAME
from pipeline.sinks.dispatch import BigQuerySettings, parse_warehouse_url
from pipeline.sinks.upsert import SECONDS_PER_DAY, slice_divides_day
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
            "--input_subscription",
            help="Pub/Sub subscription to stream from, projects/PROJECT/subscriptions/NAME."
            " Switches the pipeline to streaming. Honours PUBSUB_EMULATOR_HOST.",
        )
        parser.add_argument(
            "--input_topic",
            help="Pub/Sub topic to stream from through a temporary subscription,"
            " projects/PROJECT/topics/NAME (no replay: prefer --input_subscription).",
        )
        parser.add_argument(
            "--timestamp_attribute",
            default="",
            help="Pub/Sub attribute Beam's source reads element timestamps (and so the"
            " watermark) from, e.g. event_time (RFC 3339 or epoch millis). Only safe when every"
            " publisher sets it. Empty: publish time. Windows always use the payload's event_time."
            " Default: empty",
        )
        parser.add_argument(
            "--exit_when_idle_seconds",
            type=float,
            default=0,
            help="DirectRunner streaming only: stop cleanly once nothing arrived or committed for"
            " this many seconds and everything pulled is merged, and not before the"
            " subscription's ack deadline plus 30 s (leases of a killed run come back only then)."
            " 0: run until stopped. Default: 0",
        )
        parser.add_argument(
            "--no_replay",
            action="store_true",
            help="Do not seek the subscription back to the warehouse's replay checkpoint before"
            " reading (by default a streaming run does).",
        )
        parser.add_argument(
            "--replay_margin_seconds",
            type=float,
            default=60,
            help="How much earlier than the oldest uncommitted publish time the replay checkpoint"
            " is set, in seconds (replaying more is harmless). Default: 60",
        )
        parser.add_argument(
            "--warehouse",
            default="duckdb:warehouse.duckdb",
            help="Where the tables live: duckdb:PATH (embedded, local) or"
            " bigquery:PROJECT.DATASET. Default: duckdb:warehouse.duckdb",
        )
        parser.add_argument(
            "--bigquery_staging_dataset",
            default="",
            help="BigQuery only: PROJECT.DATASET for the staged rows and the dead letters' load"
            " tables (give it a default table expiration). Default: the warehouse dataset's"
            " name + _staging",
        )
        parser.add_argument(
            "--bigquery_dedup_horizon_days",
            type=int,
            default=0,
            help="BigQuery only: how far (in days of event time) from a merge cycle's events the"
            " ledger is searched for earlier versions of their event_ids. 0: the whole ledger"
            " (permanent dedup; the lookup reads the event_id column's blocks of those ids,"
            " pruned by clustering). N: only the partitions within N days, so a cycle reads the"
            " same bytes whatever the ledger's size, and a version of an event stored more than"
            " N days away is not found: it lands as a second row (at most 3650). Default: 0",
        )
        parser.add_argument(
            "--bigquery_location",
            default="",
            help="BigQuery only: the location both datasets must be in, e.g. europe-west1 or EU;"
            " a run refuses to start when they are elsewhere. Every BigQuery job is created and"
            " looked up there. Empty: the location the warehouse dataset reports. Default: empty",
        )
        parser.add_argument(
            "--bigquery_create_datasets",
            action="store_true",
            help="BigQuery only: create the datasets when they do not exist (in"
            " --bigquery_location, or BigQuery's default). For local runs: on Google Cloud"
            " Terraform creates them, and the worker may not (it has no"
            " bigquery.datasets.create).",
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
            " tables (see docs/STREAMING.md, Windows and late data). Default: 0",
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
            help="Most rows per staged append, and per dead-letter MERGE batch. Default: 5000",
        )
        parser.add_argument(
            "--batch_flush_seconds",
            type=float,
            default=5.0,
            help="Streaming only: longest a dead letter waits in a batch before the batch is"
            " merged, in seconds. Default: 5",
        )
        parser.add_argument(
            "--batch_slice_seconds",
            type=int,
            default=SECONDS_PER_DAY,
            help="Bounded input only: dead letters are grouped and sorted into MERGE batches per"
            " slice of this many seconds of arrival time; one slice's rows are held in one"
            " worker's memory at once, so lower it (e.g. 3600) when a day of bad input does not"
            " fit a worker. Must divide a day. Default: 86400 (a UTC day)",
        )
        parser.add_argument(
            "--log_level",
            choices=("DEBUG", "INFO", "WARNING", "ERROR"),
            default="WARNING",
            help="Log level of this program (INFO logs every committed batch). Default: WARNING",
        )
        parser.add_argument(
            "--merge_retries",
            type=int,
            default=5,
            help="Retries of a transient warehouse error, with exponential backoff, before the"
            " bundle fails (the runner then retries the bundle). Default: 5",
        )
        parser.add_argument(
            "--merge_interval_seconds",
            type=int,
            default=60,
            help="Streaming: how often the rows staged since the last merge cycle are merged"
            " into the tables, in seconds of processing time. A row waits about this long to be"
            " visible, and each cycle costs a few BigQuery jobs whatever its size. Default: 60",
        )
        parser.add_argument(
            "--merge_retry_delay_seconds",
            type=float,
            default=1.0,
            help="First backoff delay of those retries, in seconds; it doubles each time."
            " Default: 1",
        )


_SUBSCRIPTION = re.compile(rf"projects/{PROJECT_ID}/subscriptions/{PUBSUB_NAME}")
_TOPIC = re.compile(rf"projects/{PROJECT_ID}/topics/{PUBSUB_NAME}")
# Ten years: a horizon beyond it is a permanent lookup in all but cost, and a far larger one
# would take the lookup's bounds out of TIMESTAMP's range.
MAX_DEDUP_HORIZON_DAYS = 3650
_LOCATION = re.compile(r"[A-Za-z]+(?:-[a-z]+[0-9]*)*")  # US, EU, europe-west1, us-east4


def is_streaming_input(options: PipelineOptions) -> bool:
    opts = options.view_as(EffectivelyOnceOptions)
    return bool(opts.input_subscription or opts.input_topic)


def bigquery_settings(options: PipelineOptions) -> BigQuerySettings:
    o = options.view_as(EffectivelyOnceOptions)
    return BigQuerySettings(
        staging_dataset=o.bigquery_staging_dataset or None,
        location=o.bigquery_location or None,
        create_datasets=o.bigquery_create_datasets,
        dedup_horizon_days=o.bigquery_dedup_horizon_days,
    )


def _warehouse_problem(options: EffectivelyOnceOptions) -> str | None:
    url, staging = options.warehouse, options.bigquery_staging_dataset
    try:
        kind, _ = parse_warehouse_url(url)
        if kind != "bigquery":
            given = [
                name
                for name, value in (
                    ("--bigquery_staging_dataset", staging),
                    ("--bigquery_location", options.bigquery_location),
                    ("--bigquery_create_datasets", options.bigquery_create_datasets),
                    ("--bigquery_dedup_horizon_days", options.bigquery_dedup_horizon_days),
                )
                if value
            ]
            if given:
                return f"{', '.join(given)} applies only to --warehouse=bigquery:..."
        if not 0 <= options.bigquery_dedup_horizon_days <= MAX_DEDUP_HORIZON_DAYS:
            return (
                "--bigquery_dedup_horizon_days must be 0 (the whole ledger) to"
                f" {MAX_DEDUP_HORIZON_DAYS}"
            )
        if options.bigquery_location and not _LOCATION.fullmatch(options.bigquery_location):
            return "--bigquery_location must be a BigQuery location, e.g. europe-west1 or EU"
        if staging:
            from pipeline.sinks.bigquery import parse_dataset  # noqa: PLC0415

            try:
                parse_dataset(staging)
            except ValueError:
                return "--bigquery_staging_dataset must be PROJECT.DATASET"
    except ValueError as error:
        return str(error)
    return None


def validate(options: PipelineOptions) -> list[str]:
    """Every problem with the options, as messages; empty when they are usable."""
    o = options.view_as(EffectivelyOnceOptions)
    inputs = sum(bool(i) for i in (o.input_files, o.input_subscription, o.input_topic))
    checks = [
        (
            inputs != 1,
            "exactly one of --input_files, --input_subscription, --input_topic is required",
        ),
        (
            bool(o.input_subscription) and not _SUBSCRIPTION.fullmatch(o.input_subscription),
            "--input_subscription must be projects/PROJECT/subscriptions/NAME",
        ),
        (
            bool(o.input_topic) and not _TOPIC.fullmatch(o.input_topic),
            "--input_topic must be projects/PROJECT/topics/NAME",
        ),
        (
            not 1 <= o.window_size_seconds <= MAX_WINDOW_SECONDS,
            f"--window_size_seconds must be in 1..{MAX_WINDOW_SECONDS}",
        ),
        (o.allowed_lateness_seconds < 0, "--allowed_lateness_seconds must be >= 0"),
        (o.dedup_ttl_seconds <= 0, "--dedup_ttl_seconds must be positive"),
        (o.max_batch_rows < 1, "--max_batch_rows must be at least 1"),
        (o.batch_flush_seconds <= 0, "--batch_flush_seconds must be positive"),
        (
            not slice_divides_day(o.batch_slice_seconds),
            f"--batch_slice_seconds must divide a day ({SECONDS_PER_DAY})",
        ),
        (o.merge_retries < 0, "--merge_retries must be >= 0"),
        (o.merge_interval_seconds < 1, "--merge_interval_seconds must be at least 1"),
        (o.merge_retry_delay_seconds < 0, "--merge_retry_delay_seconds must be >= 0"),
        (o.exit_when_idle_seconds < 0, "--exit_when_idle_seconds must be >= 0"),
        (o.replay_margin_seconds < 0, "--replay_margin_seconds must be >= 0"),
        (
            options.view_as(StandardOptions).streaming and bool(o.input_files),
            "--input_files is bounded input; do not combine it with --streaming",
        ),
    ]
    problems = [message for failed, message in checks if failed]
    warehouse_problem = _warehouse_problem(o)
    return problems if warehouse_problem is None else [*problems, warehouse_problem]

"""Write the Flex Template's parameter metadata (templates/metadata.json) from the options class.

    python -m pipeline.tools.template_metadata [--out templates/metadata.json] [--check]

A parameter's name, help text, optionality and enum values come from ``EffectivelyOnceOptions``
(its argparse actions, as Beam builds them); this module adds only what argparse cannot say: a
label for the console, the regex Dataflow checks a value against before it starts a launcher,
and examples the regex must accept and refuse (tests/test_template.py checks both, and that each
example means the same to the pipeline's own validation).

Every option is either a template parameter (``PARAMETERS``) or listed in ``NOT_PARAMETERS`` with
the reason, so an option added to options.py fails the tests until it is classified here; and
the committed metadata.json must equal what this module generates (``--check``), so the template
and the options never drift. Beam's own flags (runner, project, sdk_container_image, ...) are not
template parameters: the launch command and Terraform set them as the job's environment.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.gcp_names import DATASET_ID, PROJECT_ID, PUBSUB_NAME
from pipeline.options import EffectivelyOnceOptions

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "templates" / "metadata.json"

TEMPLATE_NAME = "Effectively-once events into BigQuery"
TEMPLATE_DESCRIPTION = (
    "Transaction events from a Pub/Sub subscription (streaming) or newline-delimited JSON files in"
    " Cloud Storage (backfill, replay), validated, deduplicated by event_id and MERGEd into"
    " BigQuery so that every event lands once and every window total is exact. Refused input"
    " lands in the dead_letters table."
)

# Regexes are anchored and use only syntax that Java (which checks them at launch), RE2 and
# Python agree on: no lookaround, no backreferences, no named groups.
_DATASET = rf"{PROJECT_ID}\.{DATASET_ID}"
_POSITIVE_INT = r"^[1-9][0-9]{0,9}$"
_NON_NEGATIVE_INT = r"^(0|[1-9][0-9]{0,9})$"
_DECIMAL = r"^[0-9]{1,9}(\.[0-9]{1,6})?$"  # seconds; validate() refuses 0 where it must


@dataclass(frozen=True)
class ParameterSpec:
    """What the template adds to one option: ``regex`` (None: built from the option's choices),
    values it must accept (``examples``) and refuse (``bad``), ``required`` on Dataflow even if
    the option has a default, and Dataflow's ``param_type`` (a console hint)."""

    label: str
    examples: tuple[str, ...]
    bad: tuple[str, ...]
    regex: str | None = None
    required: bool = False
    param_type: str | None = None


PARAMETERS: dict[str, ParameterSpec] = {
    "input_files": ParameterSpec(
        "Input files (backfill or replay)",
        regex=r"^gs://[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]/[^\r\n]+$",
        examples=("gs://my-bucket/events/2026-01-*.jsonl", "gs://my-bucket/replay/events.jsonl"),
        bad=("/tmp/events.jsonl", "gs://my-bucket", "s3://bucket/events.jsonl", "gs://B/x"),
        param_type="GCS_READ_FILE",
    ),
    "input_subscription": ParameterSpec(
        "Pub/Sub subscription (streaming)",
        regex=rf"^projects/{PROJECT_ID}/subscriptions/{PUBSUB_NAME}$",
        examples=(
            "projects/my-project/subscriptions/effectively-once-events-dataflow",
            "projects/my-project/subscriptions/events",
        ),
        bad=("events", "projects/my-project/topics/events", "projects/p/subscriptions/events"),
        param_type="PUBSUB_SUBSCRIPTION",
    ),
    "input_topic": ParameterSpec(
        "Pub/Sub topic (streaming, no replay)",
        regex=rf"^projects/{PROJECT_ID}/topics/{PUBSUB_NAME}$",
        examples=("projects/my-project/topics/effectively-once-events",),
        bad=("effectively-once-events", "projects/my-project/subscriptions/events"),
        param_type="PUBSUB_TOPIC",
    ),
    "timestamp_attribute": ParameterSpec(
        "Event-time attribute",
        regex=r"^[A-Za-z0-9_.~+%-]{1,256}$",
        examples=("event_time", "ts"),
        bad=("", "event time", "a,b"),
    ),
    "warehouse": ParameterSpec(
        "BigQuery warehouse",
        # Only BigQuery on Dataflow: a DuckDB file on a worker's disk would be lost with it.
        regex=rf"^bigquery:{_DATASET}$",
        examples=("bigquery:my-project.effectively_once",),
        bad=("duckdb:warehouse.duckdb", "bigquery:my-project", "bigquery:my_project.events"),
        required=True,
    ),
    "bigquery_staging_dataset": ParameterSpec(
        "BigQuery staging dataset",
        regex=rf"^{_DATASET}$",
        examples=("my-project.effectively_once_staging",),
        bad=("effectively_once_staging", "bigquery:my-project.staging", "my-project.stag-ing"),
    ),
    "bigquery_location": ParameterSpec(
        "BigQuery location",
        regex=r"^[A-Za-z]+(-[a-z]+[0-9]*)*$",
        examples=("europe-west1", "US", "EU", "us-east4"),
        bad=("europe west1", "europe-west1/", "-US"),
    ),
    "bigquery_dedup_horizon_days": ParameterSpec(
        "BigQuery dedup horizon (days)",
        regex=r"^(0|[1-9][0-9]{0,2}|[12][0-9]{3}|3[0-5][0-9]{2}|36[0-4][0-9]|3650)$",  # 0..3650
        examples=("0", "7", "400", "3650"),
        bad=("-1", "7d", "1.5", "3651", "10000"),
        param_type="NUMBER",
    ),
    "window_size_seconds": ParameterSpec(
        "Window size (seconds)",
        regex=r"^[1-9][0-9]{0,4}$",
        examples=("60", "300", "86400"),
        bad=("0", "-60", "1.5", "1m"),
        param_type="NUMBER",
    ),
    "allowed_lateness_seconds": ParameterSpec(
        "Allowed lateness (seconds)",
        regex=_NON_NEGATIVE_INT,
        examples=("0", "3600"),
        bad=("-1", "1h", "01"),
        param_type="NUMBER",
    ),
    "dedup_ttl_seconds": ParameterSpec(
        "Dedup state TTL (seconds)",
        regex=_POSITIVE_INT,
        examples=("3600", "86400"),
        bad=("0", "-1", "1h"),
        param_type="NUMBER",
    ),
    "dedup_strategy": ParameterSpec(
        "Dedup strategy",
        examples=("auto", "stateful", "grouped"),
        bad=("", "AUTO", "none"),
        param_type="ENUM",
    ),
    "max_batch_rows": ParameterSpec(
        "Rows per MERGE batch",
        regex=_POSITIVE_INT,
        examples=("5000", "1"),
        bad=("0", "-5", "5k"),
        param_type="NUMBER",
    ),
    "batch_flush_seconds": ParameterSpec(
        "Batch flush interval (seconds)",
        regex=_DECIMAL,
        examples=("5", "2.5", "0.5"),
        bad=("-1", "abc", "1e3", ""),
        param_type="NUMBER",
    ),
    "batch_slice_seconds": ParameterSpec(
        "Backfill batch slice (seconds)",
        regex=_POSITIVE_INT,
        examples=("3600", "900", "86400"),
        bad=("0", "-60", "1h"),
        param_type="NUMBER",
    ),
    "log_level": ParameterSpec(
        "Log level",
        examples=("WARNING", "INFO"),
        bad=("warning", "TRACE"),
        param_type="ENUM",
    ),
    "merge_interval_seconds": ParameterSpec(
        "Merge cycle interval (seconds)",
        regex=_POSITIVE_INT,
        examples=("60", "300", "1"),
        bad=("0", "-60", "1m"),
        param_type="NUMBER",
    ),
    "merge_retries": ParameterSpec(
        "Warehouse retries",
        regex=_NON_NEGATIVE_INT,
        examples=("0", "5"),
        bad=("-1", "five"),
        param_type="NUMBER",
    ),
    "merge_retry_delay_seconds": ParameterSpec(
        "First retry delay (seconds)",
        regex=_DECIMAL,
        examples=("1", "0.25"),
        bad=("-1", "1s"),
        param_type="NUMBER",
    ),
}

# Options that are not template parameters, and why.
NOT_PARAMETERS: dict[str, str] = {
    "exit_when_idle_seconds": "DirectRunner only: a Dataflow streaming job runs until drained.",
    "no_replay": "DirectRunner only (Dataflow acknowledges a message once it has committed it"
    " durably, so no replay checkpoint is read there); also a bare flag, which a Flex Template"
    " cannot pass (it passes --name=value, which argparse refuses for a flag).",
    "replay_margin_seconds": "DirectRunner only: replay checkpoints are not written on Dataflow.",
    "bigquery_create_datasets": "Local runs only: on Google Cloud Terraform creates the datasets,"
    " and the worker service account may not (no bigquery.datasets.create); also a bare flag.",
}


@dataclass(frozen=True)
class OptionInfo:
    """What the options class says about one option."""

    name: str
    help: str
    choices: tuple[str, ...] | None


def option_infos() -> list[OptionInfo]:
    """The options of ``EffectivelyOnceOptions``, in declaration order, read from the argparse
    actions its ``_add_argparse_args`` adds (Beam's own flags are not among them)."""
    parser = argparse.ArgumentParser(add_help=False)
    EffectivelyOnceOptions._add_argparse_args(parser)
    infos = []
    for action in parser._actions:
        name = action.dest
        help_text = " ".join((action.help or "").split())
        choices = tuple(str(c) for c in action.choices) if action.choices else None
        infos.append(OptionInfo(name, help_text, choices))
    return infos


def _regex(spec: ParameterSpec, option: OptionInfo) -> str:
    if spec.regex is not None:
        return spec.regex
    if not option.choices:
        raise ValueError(f"{option.name}: a regex is needed (the option has no choices)")
    return "^(" + "|".join(re.escape(choice) for choice in option.choices) + ")$"


def _parameter(option: OptionInfo) -> dict[str, object]:
    spec = PARAMETERS[option.name]
    if not option.help:
        raise ValueError(f"--{option.name} has no help text; options.py must describe it")
    entry: dict[str, object] = {
        "name": option.name,
        "label": spec.label,
        "helpText": option.help,
        "isOptional": not spec.required,
        "regexes": [_regex(spec, option)],
    }
    if spec.param_type:
        entry["paramType"] = spec.param_type
    if option.choices:
        entry["enumOptions"] = [{"value": choice, "label": choice} for choice in option.choices]
    return entry


def template_options() -> list[OptionInfo]:
    """The options that are template parameters, in declaration order."""
    options = option_infos()
    names = {option.name for option in options}
    unclassified = sorted(names - PARAMETERS.keys() - NOT_PARAMETERS.keys())
    if unclassified:
        raise ValueError(
            f"options {unclassified} are neither template parameters nor listed as excluded:"
            " add them to PARAMETERS or NOT_PARAMETERS in pipeline/tools/template_metadata.py"
        )
    missing = sorted(PARAMETERS.keys() - names)
    if missing:
        raise ValueError(f"PARAMETERS names options that options.py does not define: {missing}")
    return [option for option in options if option.name in PARAMETERS]


def metadata() -> dict[str, object]:
    return {
        "name": TEMPLATE_NAME,
        "description": TEMPLATE_DESCRIPTION,
        "parameters": [_parameter(option) for option in template_options()],
    }


def render() -> str:
    return json.dumps(metadata(), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the file differs from the options"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(
                f"{args.out} is stale; run: python -m pipeline.tools.template_metadata",
                file=sys.stderr,
            )
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

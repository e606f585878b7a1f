"""The streaming path end to end on one machine (``make run-streaming``).

Starts Google's Pub/Sub emulator, creates a topic and a subscription that retains acknowledged
messages, generates events with the generator (duplicates, conflicting versions, late and
malformed lines), publishes them at least once with extra duplicate publishes, runs the streaming
pipeline into DuckDB until it has been idle, then reconciles the tables with the ground truth.
Exits non-zero when the pipeline or the reconciliation fails.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.tools.generate import GeneratorConfig, generate, write
from pipeline.tools.publish import publish
from pipeline.tools.pubsub_emulator import create_topic_and_subscription, running_emulator


def run_until_idle(subscription: str, warehouse: str, idle_seconds: float) -> int:
    """Run the streaming pipeline as a user would, until it has been idle; its exit code."""
    return subprocess.run(
        [
            sys.executable, "-m", "pipeline",
            f"--input_subscription={subscription}",
            f"--warehouse={warehouse}",
            f"--exit_when_idle_seconds={idle_seconds}",
        ],
        check=False,
    ).returncode  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="build/streaming", help="Working folder (recreated).")
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--duplicate_publish_rate", type=float, default=0.05)
    parser.add_argument("--idle_seconds", type=float, default=10)
    args = parser.parse_args(argv)

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    lines, truth = generate(GeneratorConfig(events=args.events, files=1))
    write(lines, truth, str(out / "events"), files=1)
    warehouse = f"duckdb:{out / 'warehouse.duckdb'}"
    with running_emulator() as emulator:
        print(f"Pub/Sub emulator on {emulator.host}")
        topic, subscription = emulator.topic("transactions"), emulator.subscription("pipeline")
        create_topic_and_subscription(topic, subscription)
        report = publish(
            topic, (line.payload for line in lines), duplicate_rate=args.duplicate_publish_rate
        )
        print(report.render())
        print("--- streaming pipeline, until idle")
        returncode = run_until_idle(subscription, warehouse, args.idle_seconds)
        if returncode != 0:
            return returncode
    print("--- reconcile")
    return subprocess.run(
        [
            sys.executable, "-m", "pipeline.tools.reconcile",
            f"--warehouse={warehouse}", f"--truth={out / 'events' / 'truth.jsonl'}",
        ],
        check=False,
    ).returncode  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())

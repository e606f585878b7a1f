"""Publish an events file to Pub/Sub the way real producers do: at least once.

    python -m pipeline.tools.publish --topic projects/P/topics/T --input 'DIR/events-*.jsonl'
        [--rate 500] [--duplicate_rate 0.05] [--seed 7]

Each line becomes one message with attributes ``event_id`` and ``event_time`` (UTC RFC 3339)
when the line is a valid event (malformed lines are published as they are, without attributes:
the pipeline must dead-letter them). Google's client batches messages and retries failed
publishes, which can publish a message twice; ``--duplicate_rate`` adds deliberate duplicate
publishes on top (each gets its own message id, as a producer's retry would). Honours
PUBSUB_EMULATOR_HOST. Prints what it sent; exits 1 if any publish finally failed.
"""

from __future__ import annotations

import argparse
import glob
import random
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass

from pipeline.events import ContractViolation, format_timestamp, parse_event
from pipeline.transforms.parse import peek_event_id


def attributes_for(line: bytes) -> dict[str, str]:
    """The routing attributes a producer sets: event_id and event_time, when it can."""
    try:
        event = parse_event(line)
    except ContractViolation:
        event_id = peek_event_id(line)
        return {"event_id": event_id} if event_id else {}
    return {"event_id": event.event_id, "event_time": format_timestamp(event.event_time)}


def read_lines(pattern: str) -> Iterator[bytes]:
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"no file matches {pattern!r}")
    for path in paths:
        with open(path, "rb") as handle:
            for line in handle:
                yield line.rstrip(b"\r\n")


@dataclass
class PublishReport:
    lines: int = 0
    published: int = 0
    duplicates_injected: int = 0
    failed: int = 0

    def render(self) -> str:
        return (
            f"published {self.published} messages for {self.lines} lines"
            f" ({self.duplicates_injected} deliberate duplicate publishes, {self.failed} failed)"
        )


def publish(
    topic: str,
    lines: Iterable[bytes],
    *,
    rate: float = 0.0,
    duplicate_rate: float = 0.0,
    seed: int = 7,
    max_batch_messages: int = 100,
) -> PublishReport:
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]  # noqa: PLC0415

    client = pubsub_v1.PublisherClient(
        batch_settings=pubsub_v1.types.BatchSettings(
            max_messages=max_batch_messages, max_latency=0.05
        )
    )
    rng = random.Random(seed)
    report = PublishReport()
    pending: list[futures.Future[str]] = []
    started = time.monotonic()
    for line in lines:
        report.lines += 1
        copies = 2 if rng.random() < duplicate_rate else 1
        report.duplicates_injected += copies - 1
        attributes = attributes_for(line)
        for _ in range(copies):
            pending.append(client.publish(topic, line, **attributes))
        if rate > 0:  # pace to the requested lines per second
            ahead = report.lines / rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    for future in pending:
        try:
            future.result(timeout=120)
            report.published += 1
        except Exception as error:  # reported and counted, never silently dropped
            print(f"publish failed: {error}", file=sys.stderr)
            report.failed += 1
    client.stop()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topic", required=True, help="projects/PROJECT/topics/NAME")
    parser.add_argument("--input", required=True, help="Glob of newline-delimited JSON files.")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="Lines per second; 0 publishes as fast as possible. Default: 0",
    )
    parser.add_argument(
        "--duplicate_rate",
        type=float,
        default=0.0,
        help="Share of lines published twice on purpose. Default: 0",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--max_batch_messages", type=int, default=100, help="Client-side batch size. Default: 100"
    )
    args = parser.parse_args(argv)
    report = publish(
        args.topic,
        read_lines(args.input),
        rate=args.rate,
        duplicate_rate=args.duplicate_rate,
        seed=args.seed,
        max_batch_messages=args.max_batch_messages,
    )
    print(report.render())
    return 1 if report.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

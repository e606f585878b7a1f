"""The producer side end to end on one machine (``make run-outbox``): nothing lost, nothing
invented, nothing twice.

1. Start a throwaway PostgreSQL and Google's Pub/Sub emulator; a topic with the pipeline's
   subscription and an audit subscription that counts every published copy.
2. The payments service records ``--payments`` payments and their state changes through
   simulated clients (``producer/workload.py``): some requests retried with the same idempotency
   key, some refused and rolled back after writing (exposure limit, forbidden transitions).
3. A relay publishes the outbox while the second half of the requests comes in, and is killed
   with SIGKILL between Pub/Sub's acknowledgement of a batch and its mark (the
   ``--hold-before-mark`` test seam keeps that window open long enough to hit it).
4. Two relays restart together: one batch's rows come back when the dead relay's lease
   expires and are published a second time; ``SKIP LOCKED`` splits the rest between them.
5. The streaming pipeline reads the subscription into DuckDB until idle.
6. Reconcile: the warehouse holds exactly PostgreSQL's committed events, each once; its
   ``transactions`` equal the ``payments`` table; no refused request's event anywhere; and the
   audit subscription shows that duplicates were published (the pipeline absorbed them).

Exits 1 on any mismatch. Output and logs stay in ``--out`` (default build/outbox):
``warehouse.duckdb``, ``truth.jsonl`` (PostgreSQL's committed events in the generator's format,
for ``python -m pipeline.tools.reconcile``), and ``relay-*.log``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import IO

from pipeline.sinks.dispatch import open_warehouse
from pipeline.tools.local_streaming import run_until_idle
from pipeline.tools.pubsub_emulator import create_topic_and_subscription, running_emulator
from producer.cli import decimal_argument
from producer.db import apply_schema, connect
from producer.local_postgres import running_postgres
from producer.service import PaymentsService
from producer.verify import check_warehouse, committed_events, published_copies, write_truth
from producer.workload import run_workload

HOLD_LINE = "holding"  # what the relay logs between ack and mark with --hold-before-mark
STARTED_LINE = "started:"  # what the relay logs once it is connected and about to poll


class LogWatcher:
    """Copies a child's text stream to a file in a thread and lets the caller wait for the
    n-th line containing some text, e.g. to kill -9 the child at that moment."""

    def __init__(self, stream: IO[str], path: Path) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._done = False
        self._thread = threading.Thread(target=self._read, args=(stream, path), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str], path: Path) -> None:
        with open(path, "w", encoding="utf-8") as log:
            for line in stream:
                log.write(line)
                log.flush()
                with self._changed:
                    self.lines.append(line)
                    self._changed.notify_all()
        with self._changed:
            self._done = True
            self._changed.notify_all()

    def count(self, needle: str) -> int:
        with self._changed:
            return sum(needle in line for line in self.lines)

    def wait_for(self, needle: str, count: int = 1, timeout: float = 120) -> None:
        """Block until ``count`` lines containing ``needle`` were read (TimeoutError if not)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(needle in line for line in self.lines) < count:
                remaining = deadline - time.monotonic()
                if self._done or remaining <= 0:
                    raise TimeoutError(
                        f"{count} x {needle!r} not seen; last lines: {self.lines[-5:]}"
                    )
                self._changed.wait(remaining)

    def join(self, timeout: float = 10) -> None:
        self._thread.join(timeout)


def relay_command(dsn: str, topic: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", "producer", "relay", f"--dsn={dsn}", f"--topic={topic}", *flags]


def start_relay(
    dsn: str, topic: str, log: Path, *flags: str
) -> tuple[subprocess.Popen[str], LogWatcher]:
    process = subprocess.Popen(
        relay_command(dsn, topic, *flags),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    return process, LogWatcher(process.stderr, log)


@contextlib.contextmanager
def step(title: str) -> Iterator[None]:
    print(f"--- {title}", flush=True)
    started = time.monotonic()
    yield
    print(f"    ({time.monotonic() - started:.1f} s)", flush=True)


def _outbox_counts(dsn: str, leased_to: str) -> tuple[int, int, int]:
    """Rows published, unpublished, and unpublished under ``leased_to``'s lease."""
    with connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE published_at IS NOT NULL),"
            " count(*) FILTER (WHERE published_at IS NULL),"
            " count(*) FILTER (WHERE published_at IS NULL AND claimed_by = %s)"
            " FROM outbox",
            (leased_to,),
        ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _relay_summary(watcher: LogWatcher) -> str:
    lines = [line for line in watcher.lines if " batches, " in line]
    return lines[-1].split(" producer.relay ")[-1].strip() if lines else "(no summary)"


def create_subscription(topic: str, subscription: str) -> None:
    """A plain subscription (the audit tap: it sees every published copy)."""
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]  # noqa: PLC0415

    with pubsub_v1.SubscriberClient() as subscriber:
        subscriber.create_subscription(request={"name": subscription, "topic": topic})


class Demo:
    def __init__(self, args: argparse.Namespace, dsn: str, topic: str, out: Path) -> None:
        self.args = args
        self.dsn = dsn
        self.topic = topic
        self.out = out
        self.conn = connect(dsn)
        self.service = PaymentsService(self.conn, account_limit=args.account_limit)
        self.refused_event_ids: list[str] = []
        self.relay_flags = (
            f"--batch-size={args.batch_size}",
            f"--lease-seconds={args.lease_seconds}",
            "--poll-interval=0.2",
        )

    def workload(self, part: str, payments: int, rate: float) -> None:
        seed = self.args.seed + ord(part)
        work = run_workload(
            self.service, payments=payments, seed=seed, prefix=f"{part}-", rate=rate
        )
        self.refused_event_ids += work.refused_event_ids
        print(f"    service: {work.render()}", flush=True)

    def relay_killed_mid_way(self) -> None:
        relay, watcher = start_relay(
            self.dsn, self.topic, self.out / "relay-a.log", *self.relay_flags,
            "--relay-id=relay-a", "--hold-before-mark=1",
        )  # fmt: skip
        try:
            self.workload("b", self.args.payments // 3, rate=self.args.rate)
            watcher.wait_for(HOLD_LINE, self.args.kill_after_batches, timeout=120)
        finally:
            relay.send_signal(signal.SIGKILL)  # no handler, no cleanup: as a crash
            relay.wait()
        watcher.join()
        published, unpublished, stranded = _outbox_counts(self.dsn, "relay-a")
        print(
            f"    relay A killed; outbox: {published} rows marked published, {unpublished} not,"
            f" of which {stranded} were acknowledged by Pub/Sub but never marked (leased to the"
            f" dead relay for {self.args.lease_seconds:g} s)"
        )

    def two_relays(self) -> bool:
        relays = [
            start_relay(
                self.dsn, self.topic, self.out / f"relay-{name}.log", *self.relay_flags,
                f"--relay-id=relay-{name}", "--exit-when-idle=2",
            )
            for name in ("b", "c")
        ]  # fmt: skip
        try:
            for _, watcher in relays:
                watcher.wait_for(STARTED_LINE, timeout=60)
            remaining = self.args.payments - self.args.payments // 3 * 2
            self.workload("c", remaining, rate=self.args.rate)
        finally:
            for process, watcher in relays:
                process.wait(timeout=300)
                watcher.join()
        for process, watcher in relays:
            print(f"    {_relay_summary(watcher)}")
            if process.returncode != 0:
                print(f"relay exited with {process.returncode}: see {self.out}/relay-*.log")
                return False
        row = self.conn.execute("SELECT count(*) FROM outbox WHERE attempts > 1").fetchone()
        print(f"    outbox rows published more than once (claimed again): {row[0] if row else 0}")
        return True


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="build/outbox", help="Working folder (recreated).")
    parser.add_argument("--payments", type=int, default=300, help="Payments created. Default: 300")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--rate", type=float, default=150,
        help="Requests per second of the clients while relays run. Default: 150",
    )  # fmt: skip
    parser.add_argument(
        "--account-limit", type=decimal_argument, default=Decimal("2000"),
        help="Exposure limit per account and currency (refuses some payments). Default: 2000",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=25, help="Relay batch. Default: 25")
    parser.add_argument(
        "--lease-seconds", type=float, default=5,
        help="Relay lease: how long the killed relay's last batch waits. Default: 5",
    )  # fmt: skip
    parser.add_argument(
        "--kill-after-batches", type=int, default=3,
        help="kill -9 the first relay between publish and mark of this batch. Default: 3",
    )  # fmt: skip
    parser.add_argument(
        "--idle-seconds", type=float, default=10, help="Pipeline's --exit_when_idle_seconds."
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.payments < 3:
        parser.error("--payments must be at least 3")

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.monotonic()
    with running_postgres() as postgres, running_emulator() as emulator:
        dsn = postgres.create_database("payments")
        with connect(dsn) as conn:
            apply_schema(conn)
        topic = emulator.topic("payments")
        subscription = emulator.subscription("payments-pipeline")
        audit = emulator.subscription("payments-audit")
        create_topic_and_subscription(topic, subscription)
        create_subscription(topic, audit)
        print(f"PostgreSQL on {postgres.host}:{postgres.port}, Pub/Sub emulator on {emulator.host}")
        demo = Demo(args, dsn, topic, out)

        with step("service records payments while no relay runs (a backlog)"):
            demo.workload("a", args.payments // 3, rate=0)
        with step(
            f"relay A, kill -9 between Pub/Sub's ack and the mark of batch"
            f" {args.kill_after_batches}, while the service goes on"
        ):
            demo.relay_killed_mid_way()
        with step("relays B and C restarted together, the service goes on; until all published"):
            if not demo.two_relays():
                return 1
        demo.conn.close()

        warehouse_path = out / "warehouse.duckdb"
        with step("streaming pipeline into DuckDB, until idle"):
            returncode = run_until_idle(subscription, f"duckdb:{warehouse_path}", args.idle_seconds)
            if returncode != 0:
                return returncode

        with step("reconcile: the warehouse against PostgreSQL"), connect(dsn) as conn:
            events = committed_events(conn)
            write_truth(events, str(out / "truth.jsonl"))
            copies = published_copies(audit, expected_events=len(events))
            warehouse = open_warehouse(f"duckdb:{warehouse_path}")
            try:
                report = check_warehouse(conn, warehouse, demo.refused_event_ids)
            finally:
                warehouse.close()
            twice = sum(1 for n in copies.values() if n > 1)
            report.facts.append(
                f"Pub/Sub: {sum(copies.values())} messages published for {len(copies)} events,"
                f" {twice} events more than once; each is in the warehouse once"
            )
            if twice == 0:
                report.problem("no event was published twice: the kill missed its window")
            print(report.render())
    print(f"Total {time.monotonic() - started:.0f} s. Output in {out}/")
    return 1 if report.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The whole path, as users run it: the payments service writes into a real PostgreSQL, relays
run as processes (``python -m producer relay``) publishing into Google's Pub/Sub emulator, and
the streaming pipeline (``python -m pipeline``) reads the subscription into DuckDB until idle.
The warehouse must then hold exactly PostgreSQL's committed events, each once, its
``transactions`` equal to the ``payments`` table, and no event of a refused request
(``producer.verify.check_warehouse``).

* kill -9 of a relay between Pub/Sub's ack and its mark: the batch is published again by the
  restarted relay (duplicates on the topic, seen on a tap subscription), the warehouse is exact;
* two relays at once while requests arrive: every row published, the warehouse is exact.

Slow: the DirectRunner's last flush lags up to ~30 s after the last message (docs/STREAMING.md,
"Running locally"), so each test takes about 45 s. Without PostgreSQL or the emulator they fail.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from pipeline.sinks.dispatch import open_warehouse
from pipeline.tools.pubsub_emulator import (
    Emulator,
    create_topic_and_subscription,
)
from producer.db import connect
from producer.demo import HOLD_LINE, STARTED_LINE, create_subscription, start_relay
from producer.local_postgres import Postgres
from producer.service import PaymentsService
from producer.verify import check_warehouse, committed_events, published_copies
from producer.workload import Workload, run_workload
from tests.postgres import fresh_database

pytestmark = pytest.mark.slow
_PUBLISHED = re.compile(r", (\d+) published,")


def _topic(emulator: Emulator, name: str) -> tuple[str, str, str]:
    """Topic, the pipeline's subscription, and a tap that counts every published copy."""
    topic = emulator.topic(name)
    subscription, tap = (
        emulator.subscription(f"{name}-pipeline"),
        emulator.subscription(f"{name}-tap"),
    )
    # A short ack deadline: no consumer of this subscription is killed here, and a local run may
    # stop only an ack deadline (plus 30 s) after its start (pipeline/run.py).
    create_topic_and_subscription(topic, subscription, ack_deadline_seconds=10)
    create_subscription(topic, tap)
    return topic, subscription, tap


def _workload(conn: psycopg.Connection, payments: int, seed: int, rate: float = 0) -> Workload:
    service = PaymentsService(conn, account_limit=Decimal(1500))
    work = run_workload(
        service, payments=payments, seed=seed, prefix=f"{seed}-", accounts=5, rate=rate
    )
    assert work.replayed > 0 and work.refused["limit_exceeded"] > 0, work.render()
    return work


def _pipeline_then_check(
    dsn: str, subscription: str, tmp_path: Path, refused: list[str]
) -> list[str]:
    database = tmp_path / "warehouse.duckdb"
    result = subprocess.run(
        [
            sys.executable, "-m", "pipeline",
            f"--input_subscription={subscription}",
            f"--warehouse=duckdb:{database}",
            "--exit_when_idle_seconds=5",
            "--batch_flush_seconds=1",
            "--max_batch_rows=100",
        ],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    warehouse = open_warehouse(f"duckdb:{database}")
    try:
        with connect(dsn) as conn:
            report = check_warehouse(conn, warehouse, refused)
    finally:
        warehouse.close()
    print(report.render())
    return report.problems


def test_kill_9_between_publish_and_mark_publishes_duplicates_and_the_warehouse_is_exact(
    postgres: Postgres, emulator: Emulator, tmp_path: Path
) -> None:
    dsn = fresh_database(postgres, "kill")
    topic, subscription, tap = _topic(emulator, "outbox-kill")
    with connect(dsn) as conn:
        work = _workload(conn, payments=60, seed=11)
        events = committed_events(conn)

    flags = ("--batch-size=20", "--lease-seconds=3", "--poll-interval=0.2")
    relay, watcher = start_relay(
        dsn, topic, tmp_path / "relay-1.log", *flags, "--relay-id=relay-1", "--hold-before-mark=2"
    )
    try:
        watcher.wait_for(HOLD_LINE, count=2, timeout=120)  # batch 2 acked, not yet marked
    finally:
        relay.send_signal(signal.SIGKILL)
        relay.wait()
    watcher.join()
    with connect(dsn) as conn:
        stranded = {
            event_id
            for (event_id,) in conn.execute(
                "SELECT event_id FROM outbox WHERE published_at IS NULL AND claimed_by = 'relay-1'"
            ).fetchall()
        }
        (marked,) = conn.execute(
            "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL"
        ).fetchone() or (0,)
    assert len(stranded) == 20 and marked == 20

    restarted, watcher = start_relay(
        dsn, topic, tmp_path / "relay-2.log", *flags, "--relay-id=relay-2", "--exit-when-idle=1"
    )
    assert restarted.wait(timeout=120) == 0, "".join(watcher.lines[-20:])
    watcher.join()

    copies = published_copies(tap, expected_events=len(events))
    assert set(copies) == {e.event_id for e in events}
    # Exactly the batch the dead relay had published and not marked went out twice.
    assert {event_id for event_id, n in copies.items() if n > 1} == stranded
    assert Counter(copies.values()) == Counter({1: len(events) - 20, 2: 20})

    assert _pipeline_then_check(dsn, subscription, tmp_path, work.refused_event_ids) == []


def test_two_relays_at_once_publish_every_row_and_the_warehouse_is_exact(
    postgres: Postgres, emulator: Emulator, tmp_path: Path
) -> None:
    dsn = fresh_database(postgres, "two")
    topic, subscription, tap = _topic(emulator, "outbox-two")
    flags = ("--batch-size=10", "--poll-interval=0.1", "--exit-when-idle=2")
    relays = [
        start_relay(dsn, topic, tmp_path / f"relay-{i}.log", *flags, f"--relay-id=relay-{i}")
        for i in (1, 2)
    ]
    try:
        for _, watcher in relays:
            watcher.wait_for(STARTED_LINE, timeout=60)
        with connect(dsn) as conn:  # requests arrive while both relays poll
            work = _workload(conn, payments=60, seed=12, rate=100)
            events = committed_events(conn)
    finally:
        for process, _ in relays:
            assert process.wait(timeout=120) == 0
    summaries = []
    for _, watcher in relays:
        watcher.join()
        summaries += [line for line in watcher.lines if " batches, " in line]
    published = [int(m.group(1)) for line in summaries if (m := _PUBLISHED.search(line))]
    assert len(published) == 2 and min(published) > 0, summaries  # both relays did work

    copies = published_copies(tap, expected_events=len(events))
    assert set(copies) == {e.event_id for e in events}  # every row at least once

    assert _pipeline_then_check(dsn, subscription, tmp_path, work.refused_event_ids) == []

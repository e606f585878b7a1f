"""The outbox relay against a real PostgreSQL and Google's Pub/Sub emulator, in process, with
faults injected through the publisher seam (wrappers around the real publisher, no mocks):
what is published (payload bytes and attributes), that rows are marked only after an ack, that
failed publishes are retried with backoff, that a crash between publish and mark re-publishes
after the lease, that two relays split the work, cleanup, the lag metric, and (as a process)
graceful shutdown on SIGTERM.

A tap subscription on each test's topic sees every published copy. PostgreSQL and the emulator
are started once per module; without them these tests fail, never skip.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from google.cloud import pubsub_v1  # type: ignore[attr-defined]

from pipeline.tools.publish import attributes_for
from pipeline.tools.pubsub_emulator import (
    Emulator,
    create_topic_and_subscription,
)
from producer.db import connect
from producer.demo import HOLD_LINE, start_relay
from producer.local_postgres import Postgres
from producer.relay import (
    OutboxMessage,
    Publisher,
    PublishOutcome,
    PubSubPublisher,
    Relay,
    RelayConfig,
    oldest_unpublished_age,
    outbox_status,
)
from producer.service import LimitExceeded, PaymentsService
from producer.workload import run_workload
from tests.postgres import fresh_database

_names = itertools.count(1)


@dataclass(frozen=True)
class Channel:
    topic: str
    tap: str  # a subscription that sees every published copy


@pytest.fixture
def channel(emulator: Emulator) -> Channel:
    name = f"relay-{next(_names)}"
    topic, tap = emulator.topic(name), emulator.subscription(f"{name}-tap")
    create_topic_and_subscription(topic, tap)
    return Channel(topic, tap)


@pytest.fixture
def dsn(postgres: Postgres) -> str:
    return fresh_database(postgres, "relay")


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    with connect(dsn) as connection:
        yield connection


def _relay(
    dsn: str,
    publisher: Publisher,
    relay_id: str = "relay-1",
    **config: float | int | dt.timedelta,
) -> Relay:
    settings: dict[str, float | int | dt.timedelta] = {
        "poll_interval_seconds": 0.05,
        "retry_initial_seconds": 0.3,
    }
    settings.update(config)
    return Relay(lambda: connect(dsn), publisher, RelayConfig(**settings), relay_id)  # type: ignore[arg-type]


def _pull_all(tap: str, expected: int, quiet: float = 2.0) -> list[pubsub_v1.types.PubsubMessage]:
    """Every message on the tap: pulls until ``expected`` arrived and a pull of ``quiet``
    seconds brings nothing more."""
    messages: list[pubsub_v1.types.PubsubMessage] = []
    deadline = time.monotonic() + 60
    with pubsub_v1.SubscriberClient() as subscriber:
        while time.monotonic() < deadline:
            received = subscriber.pull(subscription=tap, max_messages=1000, timeout=quiet)
            batch = received.received_messages
            if batch:
                messages.extend(m.message for m in batch)
                subscriber.acknowledge(subscription=tap, ack_ids=[m.ack_id for m in batch])
            elif len(messages) >= expected:
                break
    return messages


def _copies(messages: Sequence[pubsub_v1.types.PubsubMessage]) -> Counter[str]:
    return Counter(m.attributes["event_id"] for m in messages)


def _event_ids(conn: psycopg.Connection, where: str = "true") -> set[str]:
    return {e for (e,) in conn.execute(f"SELECT event_id FROM outbox WHERE {where}").fetchall()}


def _record(conn: psycopg.Connection, payments: int, seed: int = 1) -> None:
    run_workload(PaymentsService(conn), payments=payments, seed=seed, retry_rate=0.3)


class CrashAfterPublish(BaseException):
    """Stands for the process dying: not an Exception, so nothing in the relay catches it."""


class CrashingPublisher:
    """Publishes for real, then dies before the relay can mark anything."""

    def __init__(self, inner: Publisher) -> None:
        self.inner = inner
        self.published: list[OutboxMessage] = []

    def publish(self, messages: Sequence[OutboxMessage]) -> list[PublishOutcome]:
        outcomes = self.inner.publish(messages)
        assert all(o.acked for o in outcomes)
        self.published.extend(messages)
        raise CrashAfterPublish

    def close(self) -> None:
        self.inner.close()


class FlakyPublisher:
    """Refuses the messages of chosen events on their first ``failures`` attempts (without
    publishing them), publishes everything else for real."""

    def __init__(self, inner: Publisher, failing: set[str], failures: int = 1) -> None:
        self.inner = inner
        self.failing = failing
        self.failures = failures

    def publish(self, messages: Sequence[OutboxMessage]) -> list[PublishOutcome]:
        refused = {
            m.id for m in messages if m.event_id in self.failing and m.attempts <= self.failures
        }
        passed = [m for m in messages if m.id not in refused]
        outcomes = iter(self.inner.publish(passed) if passed else [])
        return [
            PublishOutcome(error="ServiceUnavailable: injected")
            if m.id in refused
            else next(outcomes)
            for m in messages
        ]

    def close(self) -> None:
        self.inner.close()


class SlowPublisher:
    def __init__(self, inner: Publisher, delay: float) -> None:
        self.inner = inner
        self.delay = delay

    def publish(self, messages: Sequence[OutboxMessage]) -> list[PublishOutcome]:
        time.sleep(self.delay)
        return self.inner.publish(messages)

    def close(self) -> None:
        self.inner.close()


class BrokenPublisher:
    def publish(self, messages: Sequence[OutboxMessage]) -> list[PublishOutcome]:
        raise RuntimeError("the client could not be created")

    def close(self) -> None:
        pass


def test_each_committed_event_is_published_as_stored_with_its_attributes_then_marked(
    conn: psycopg.Connection, dsn: str, channel: Channel
) -> None:
    _record(conn, payments=20)
    stored: dict[str, str] = dict(conn.execute("SELECT event_id, payload FROM outbox").fetchall())
    stats = _relay(dsn, PubSubPublisher(channel.topic), batch_size=7).run(once=True)
    assert stats.published == len(stored) and stats.batches == -(-len(stored) // 7)

    messages = _pull_all(channel.tap, len(stored))
    assert _copies(messages) == Counter(stored.keys())
    for message in messages:
        assert message.data == stored[message.attributes["event_id"]].encode("utf-8")
        # The same attributes as the pipeline's publisher tool gives the same line.
        assert dict(message.attributes) == attributes_for(message.data)
    rows = conn.execute(
        "SELECT count(*) FROM outbox WHERE published_at IS NOT NULL AND message_id IS NOT NULL"
        " AND claimed_by IS NULL AND claimed_until IS NULL AND attempts = 1"
    ).fetchone()
    assert rows == (len(stored),)
    assert oldest_unpublished_age(conn) == 0


def test_a_rolled_back_transaction_publishes_nothing(
    conn: psycopg.Connection, dsn: str, channel: Channel
) -> None:
    service = PaymentsService(conn, account_limit=Decimal(100))
    committed = service.create_payment("k-1", "acct-1", "80.00", "EUR")
    with pytest.raises(LimitExceeded) as refused:  # written, then rolled back
        service.create_payment("k-2", "acct-1", "30.00", "EUR")
    with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
        # Any other failure inside a service transaction: here the outbox row is written and
        # then the payment insert fails; the outbox row goes with it.
        conn.execute(
            "INSERT INTO outbox (event_id, aggregate_id, payload, event_time)"
            " VALUES ('ghost:PENDING', 'ghost', '{}', now())"
        )
        conn.execute(
            "INSERT INTO payments SELECT * FROM payments WHERE payment_id = %s",
            (committed.payment_id,),
        )
    _relay(dsn, PubSubPublisher(channel.topic)).run(once=True)
    copies = _copies(_pull_all(channel.tap, 1))
    assert copies == Counter({committed.event_id: 1})
    assert refused.value.event_id not in copies and "ghost:PENDING" not in copies


def test_an_idempotency_key_retry_publishes_nothing_new(
    conn: psycopg.Connection, dsn: str, channel: Channel
) -> None:
    service = PaymentsService(conn)
    created = service.create_payment("k-1", "acct-1", "10.00", "EUR")
    for _ in range(3):
        assert service.create_payment("k-1", "acct-1", "10.00", "EUR").replayed
    posted = service.post_payment("k-2", created.payment_id)
    assert service.post_payment("k-2", created.payment_id).replayed
    _relay(dsn, PubSubPublisher(channel.topic)).run(once=True)
    assert _copies(_pull_all(channel.tap, 2)) == Counter([created.event_id, posted.event_id])


def test_failed_publishes_are_not_marked_and_are_retried_after_a_backoff(
    conn: psycopg.Connection, dsn: str, channel: Channel
) -> None:
    _record(conn, payments=10)
    all_ids = _event_ids(conn)
    failing = set(sorted(all_ids)[:4])
    relay = _relay(
        dsn, FlakyPublisher(PubSubPublisher(channel.topic), failing, failures=2),
        retry_initial_seconds=0.5,
    )  # fmt: skip
    assert relay.relay_batch() == len(all_ids)
    rows = conn.execute(
        "SELECT event_id, attempts, last_error, claimed_by,"
        " claimed_until > now() AS backing_off FROM outbox WHERE published_at IS NULL"
    ).fetchall()
    assert {r[0] for r in rows} == failing
    assert all(r[1:] == (1, "ServiceUnavailable: injected", None, True) for r in rows)
    assert relay.relay_batch() == 0  # nothing claimable while they back off
    assert outbox_status(conn).retrying == len(failing)

    stats = relay.run(exit_when_idle=0.2)
    assert stats.failed == 2 * len(failing)  # two refusals each, then published
    attempts: dict[str, int] = dict(
        conn.execute("SELECT event_id, attempts FROM outbox").fetchall()
    )
    assert {e: attempts[e] for e in failing} == dict.fromkeys(failing, 3)
    assert conn.execute("SELECT count(*) FROM outbox WHERE last_error IS NOT NULL").fetchone() == (
        0,
    )
    # A refused publish published nothing: every event exactly once.
    assert _copies(_pull_all(channel.tap, len(all_ids))) == Counter(all_ids)


def test_a_publisher_that_fails_as_a_whole_marks_nothing(
    conn: psycopg.Connection, dsn: str
) -> None:
    _record(conn, payments=5)
    relay = _relay(dsn, BrokenPublisher())
    relay.relay_batch()
    assert _event_ids(conn, "published_at IS NOT NULL") == set()
    assert _event_ids(conn, "last_error LIKE 'RuntimeError%'") == _event_ids(conn)
    assert relay.stats.failed == len(_event_ids(conn))


def test_a_crash_between_publish_and_mark_republishes_after_the_lease(
    conn: psycopg.Connection, dsn: str, channel: Channel
) -> None:
    _record(conn, payments=15)
    all_ids = _event_ids(conn)
    crashing = CrashingPublisher(PubSubPublisher(channel.topic))
    with pytest.raises(CrashAfterPublish):
        _relay(dsn, crashing, "relay-dead", batch_size=10, lease_seconds=1.5).run()
    stranded = {m.event_id for m in crashing.published}
    assert len(stranded) == 10
    assert _event_ids(conn, "published_at IS NULL AND claimed_by = 'relay-dead'") == stranded

    survivor = _relay(dsn, PubSubPublisher(channel.topic), "relay-2", batch_size=10)
    started = time.monotonic()
    survivor.run(exit_when_idle=0.2)
    # The stranded rows waited for the dead relay's lease, then were published again.
    assert time.monotonic() - started >= 1.0
    assert _event_ids(conn, "published_at IS NULL") == set()
    assert _event_ids(conn, "attempts = 2") == stranded
    copies = _copies(_pull_all(channel.tap, len(all_ids)))
    assert {e for e, n in copies.items() if n == 2} == stranded
    assert set(copies) == all_ids and max(copies.values()) == 2


def test_two_relays_at_once_split_the_rows_and_publish_each_once(
    conn: psycopg.Connection, dsn: str, channel: Channel
) -> None:
    """SKIP LOCKED and the committed lease keep their claims disjoint: with leases longer than
    a publish, no row is published twice."""
    _record(conn, payments=50)
    all_ids = _event_ids(conn)
    relays = [
        _relay(dsn, SlowPublisher(PubSubPublisher(channel.topic), 0.05), f"relay-{i}", batch_size=5)
        for i in (1, 2)
    ]
    threads = [threading.Thread(target=r.run, kwargs={"exit_when_idle": 0.3}) for r in relays]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(r.stats.published > 0 for r in relays)
    assert sum(r.stats.published for r in relays) == len(all_ids)
    assert _copies(_pull_all(channel.tap, len(all_ids))) == Counter(all_ids)


def test_cleanup_deletes_only_rows_published_before_the_retention(
    conn: psycopg.Connection, dsn: str, channel: Channel
) -> None:
    _record(conn, payments=10)
    relay = _relay(dsn, PubSubPublisher(channel.topic), retention=dt.timedelta(days=7))
    relay.run(once=True)
    ids = sorted(_event_ids(conn))
    old, unpublished_old = ids[:3], ids[3:5]
    conn.execute(
        "UPDATE outbox SET published_at = now() - interval '8 days' WHERE event_id = ANY(%s)",
        (old,),
    )
    conn.execute(
        "UPDATE outbox SET published_at = NULL, created_at = now() - interval '30 days'"
        " WHERE event_id = ANY(%s)",
        (unpublished_old,),
    )
    assert _relay(dsn, BrokenPublisher(), cleanup_batch_size=2).cleanup() == len(old)
    assert _event_ids(conn) == set(ids) - set(old)  # an unpublished row is never deleted


def test_the_lag_metric_is_the_age_of_the_oldest_unpublished_row(
    conn: psycopg.Connection, dsn: str, channel: Channel, caplog: pytest.LogCaptureFixture
) -> None:
    _record(conn, payments=5)
    conn.execute(
        "UPDATE outbox SET created_at = now() - interval '90 seconds'"
        " WHERE id = (SELECT max(id) FROM outbox)"
    )
    status = outbox_status(conn)
    assert 90 <= status.oldest_unpublished_age_seconds < 100
    assert status.pending == len(_event_ids(conn)) and status.leased == 0
    with caplog.at_level(logging.INFO, logger="producer.relay"):
        _relay(dsn, PubSubPublisher(channel.topic), lag_log_interval_seconds=0.01).run(once=True)
    assert oldest_unpublished_age(conn) == 0
    lag_lines = [r.getMessage() for r in caplog.records if "outbox_lag" in r.getMessage()]
    assert lag_lines and lag_lines[-1].startswith("outbox_lag oldest_unpublished_age_seconds=0.000")


def test_the_relay_rides_out_a_database_outage(
    conn: psycopg.Connection, dsn: str, channel: Channel
) -> None:
    _record(conn, payments=5)
    attempts = itertools.count(1)

    def flaky_connect() -> psycopg.Connection:
        if next(attempts) <= 2:
            raise psycopg.OperationalError("connection refused (injected)")
        return connect(dsn)

    relay = Relay(
        flaky_connect,
        PubSubPublisher(channel.topic),
        RelayConfig(poll_interval_seconds=0.05, retry_initial_seconds=0.1),
    )
    stats = relay.run(exit_when_idle=0.2)
    assert stats.errors == 2 and stats.published == len(_event_ids(conn))


def test_sigterm_lets_the_current_batch_finish_then_exits_0(
    conn: psycopg.Connection, dsn: str, channel: Channel, tmp_path: Path
) -> None:
    _record(conn, payments=30)
    process, watcher = start_relay(
        dsn, channel.topic, tmp_path / "relay.log", "--batch-size=5", "--hold-before-mark=2",
        "--relay-id=relay-term",
    )  # fmt: skip
    try:
        watcher.wait_for(HOLD_LINE, timeout=60)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()
    watcher.join()
    assert watcher.count(HOLD_LINE) == 1  # no new batch after the signal
    # The batch it held was marked, nothing is left leased to it, the rest waits, unclaimed.
    assert len(_event_ids(conn, "published_at IS NOT NULL")) == 5
    assert _event_ids(conn, "claimed_by = 'relay-term'") == set()
    assert "SIGTERM: finishing the current batch" in "".join(watcher.lines)


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("batch_size", 0),
        ("batch_size", 1001),
        ("lease_seconds", 0),
        ("retry_initial_seconds", -1),
        ("retention", dt.timedelta(seconds=-1)),
        ("hold_before_mark_seconds", -1),
    ],
)
def test_invalid_settings_are_refused(setting: str, value: object) -> None:
    with pytest.raises(ValueError, match=setting.split("_", maxsplit=1)[0]):
        RelayConfig(**{setting: value})  # type: ignore[arg-type]

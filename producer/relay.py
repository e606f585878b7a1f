"""The outbox relay: pending outbox rows to Pub/Sub, at least once.

One batch, three steps, and why each is its own short step:

1. **Claim** (one transaction of a few milliseconds): ``SELECT ... FOR UPDATE SKIP LOCKED`` the
   oldest unpublished rows whose lease is free or expired, and give them a lease
   (``claimed_by``, ``claimed_until = now() + lease``). ``SKIP LOCKED`` lets several relays claim
   at the same moment without waiting on each other or taking the same rows; the lease, once
   committed, keeps the rows away from the other relays while this one publishes.
2. **Publish**, outside any transaction: every row's payload, byte for byte, with attributes
   ``event_id`` and ``event_time`` (the format of ``pipeline.tools.publish.attributes_for``),
   waiting until Pub/Sub acknowledged or refused each message.
3. **Mark** (one short transaction): ``published_at`` for the acknowledged rows only; a refused
   row gets ``last_error`` and its lease is turned into a backoff (``claimed_until`` = earliest
   retry, doubling with each attempt up to a cap).

*Why a lease instead of holding the row locks while publishing.* Holding ``FOR UPDATE`` locks
across the publish would release the rows the instant a relay dies (its connection closes), but
it keeps a transaction open across network calls that can take the whole publish timeout: on a
busy OLTP database that pins the vacuum horizon and a connection per relay, and a relay that
hangs instead of dying holds its rows until someone kills its session. With a lease no
transaction ever waits on Pub/Sub, and a dead or hung relay's rows come back on their own when
the lease expires; the price is that they wait up to ``lease_seconds`` (bounded, one batch).
Leases are compared with the database clock only (``now()``), so relay hosts' clocks do not
matter. A publish that outlives its lease is cut off by ``publish_timeout_seconds`` (< lease);
if it still lands later, or another relay took the rows over, the row is published twice:
harmless, see below.

*At least once, by design.* A relay that dies after Pub/Sub acknowledged and before the mark
committed leaves rows leased and unmarked: they are published again when the lease expires,
with the same bytes and the same event_id, which the pipeline drops as duplicates. The one
thing that never happens is marking a row that Pub/Sub did not acknowledge, so nothing is lost.
There is no high-water mark ("last published id"): transactions commit out of id order, and a
cursor would skip a row whose transaction committed after a higher id was already relayed.
Order across rows is not preserved (several relays, retries); the pipeline does not need it,
its ``transactions`` table keeps the latest event_time whatever the arrival order.

*Cleanup* deletes published rows older than ``retention`` in small batches (also with
``SKIP LOCKED``, so concurrent relays share it). Keeping them a while lets an operator re-publish
a time range by clearing ``published_at``.

*Lag*: :func:`outbox_status` (and :func:`oldest_unpublished_age`) give the age of the oldest
unpublished row, logged every ``lag_log_interval_seconds`` as
``outbox_lag oldest_unpublished_age_seconds=... pending=... retrying=... leased=...``. It is the
metric to alert on: it grows when relays are down, Pub/Sub refuses, or a row cannot be published.

*Graceful shutdown*: :meth:`Relay.stop` (the CLI calls it on SIGTERM and SIGINT) lets the
current batch finish (publish, wait for the acks, mark them), then the relay exits.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Protocol

import psycopg
from psycopg.rows import dict_row

from pipeline.events import format_timestamp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutboxMessage:
    """A claimed outbox row, as it will be published."""

    id: int
    event_id: str
    payload: bytes
    event_time: dt.datetime
    attempts: int  # including this one

    @property
    def attributes(self) -> dict[str, str]:
        """What ``pipeline.tools.publish.attributes_for`` gives for the payload, read from the
        row's columns instead of parsing it again."""
        return {"event_id": self.event_id, "event_time": format_timestamp(self.event_time)}


@dataclass(frozen=True)
class PublishOutcome:
    """Pub/Sub's answer for one message: its message id when acknowledged, else the error."""

    message_id: str | None = None
    error: str | None = None

    @property
    def acked(self) -> bool:
        return self.message_id is not None


class Publisher(Protocol):
    """The seam between the relay and Pub/Sub. ``publish`` returns one outcome per message, in
    order, once each message is acknowledged or has failed; it must not return an ack it did
    not get. Tests wrap the real one to fail, delay or crash."""

    def publish(self, messages: Sequence[OutboxMessage]) -> list[PublishOutcome]: ...

    def close(self) -> None: ...


class PubSubPublisher:
    """Google's ``PublisherClient`` (honours ``PUBSUB_EMULATOR_HOST``). The client batches the
    messages into few requests and retries transient errors with exponential backoff for up to
    ``timeout_seconds``; after that a message counts as failed and the relay schedules the row
    for a later attempt. Keep ``timeout_seconds`` below the relay's lease."""

    def __init__(
        self, topic: str, *, timeout_seconds: float = 30.0, max_batch_messages: int = 100
    ) -> None:
        from google.api_core import exceptions  # noqa: PLC0415
        from google.api_core import retry as retries  # noqa: PLC0415
        from google.cloud import pubsub_v1  # type: ignore[attr-defined]  # noqa: PLC0415

        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self.topic = topic
        self.timeout_seconds = timeout_seconds
        transient = retries.if_exception_type(
            exceptions.Aborted,
            exceptions.Cancelled,
            exceptions.DeadlineExceeded,
            exceptions.InternalServerError,
            exceptions.ResourceExhausted,
            exceptions.ServiceUnavailable,
            exceptions.Unknown,
        )
        self._client = pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(
                max_messages=max_batch_messages, max_latency=0.01
            ),
            publisher_options=pubsub_v1.types.PublisherOptions(
                retry=retries.Retry(
                    predicate=transient,
                    initial=0.1,
                    maximum=min(10.0, timeout_seconds),
                    multiplier=2.0,
                    timeout=timeout_seconds,
                ),
                timeout=timeout_seconds,
            ),
        )

    def publish(self, messages: Sequence[OutboxMessage]) -> list[PublishOutcome]:
        pending = [
            self._client.publish(self.topic, message.payload, **message.attributes)
            for message in messages
        ]
        deadline = time.monotonic() + self.timeout_seconds
        outcomes = []
        for future in pending:
            try:
                message_id = future.result(timeout=max(0.0, deadline - time.monotonic()))
                outcomes.append(PublishOutcome(message_id=str(message_id)))
            except futures.TimeoutError:
                # It may still be published later: then the row is published twice, which the
                # pipeline absorbs. Marking it now would risk losing it.
                outcomes.append(PublishOutcome(error=f"no ack in {self.timeout_seconds} s"))
            except Exception as error:  # every failure becomes a retry of that row
                outcomes.append(PublishOutcome(error=f"{type(error).__name__}: {error}"[:1000]))
        return outcomes

    def close(self) -> None:
        self._client.stop()


@dataclass(frozen=True)
class RelayConfig:
    """How the relay batches, leases, retries and cleans up. Seconds unless said otherwise."""

    batch_size: int = 100
    lease_seconds: float = 60.0
    poll_interval_seconds: float = 1.0
    retry_initial_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    retention: dt.timedelta = dt.timedelta(days=7)
    cleanup_interval_seconds: float = 300.0
    cleanup_batch_size: int = 1000
    lag_log_interval_seconds: float = 30.0
    # Test seam, never for production: sleep this long after Pub/Sub acknowledged a batch and
    # before marking it, so a test (or the demo) can kill -9 the relay exactly between publish
    # and mark. It changes no logic, only widens that window.
    hold_before_mark_seconds: float = 0.0

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 1000:
            raise ValueError("batch_size must be within 1..1000 (Pub/Sub's request limit)")
        positive = {
            "lease_seconds": self.lease_seconds,
            "poll_interval_seconds": self.poll_interval_seconds,
            "retry_initial_seconds": self.retry_initial_seconds,
            "retry_max_seconds": self.retry_max_seconds,
            "cleanup_interval_seconds": self.cleanup_interval_seconds,
            "lag_log_interval_seconds": self.lag_log_interval_seconds,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ValueError(f"{name} must be positive")
        if self.retry_max_seconds < self.retry_initial_seconds:
            raise ValueError("retry_max_seconds must be at least retry_initial_seconds")
        if self.retention < dt.timedelta(0) or self.cleanup_batch_size < 1:
            raise ValueError("retention must not be negative, cleanup_batch_size positive")
        if self.hold_before_mark_seconds < 0:
            raise ValueError("hold_before_mark_seconds must not be negative")

    def retry_delay(self, attempts: int) -> float:
        """Exponential backoff with jitter (so rows that failed together do not all come back
        in the same instant): attempt 1 waits about retry_initial, each next one twice as
        long, capped at retry_max."""
        base = self.retry_initial_seconds * 2 ** min(max(attempts - 1, 0), 30)
        return min(self.retry_max_seconds, base) * random.uniform(0.5, 1.0)


@dataclass
class RelayStats:
    batches: int = 0
    claimed: int = 0
    published: int = 0
    failed: int = 0
    cleaned: int = 0
    errors: int = 0
    started: float = field(default_factory=time.monotonic)

    def render(self, relay_id: str) -> str:
        return (
            f"relay {relay_id}: {self.batches} batches, {self.claimed} rows claimed,"
            f" {self.published} published, {self.failed} failed publishes,"
            f" {self.cleaned} old rows cleaned, {self.errors} errors,"
            f" {time.monotonic() - self.started:.1f} s"
        )


@dataclass(frozen=True)
class OutboxStatus:
    pending: int  # unpublished rows
    oldest_unpublished_age_seconds: float  # 0 when none: the lag metric
    retrying: int  # unpublished rows whose last publish failed
    leased: int  # unpublished rows under a live lease (being published, or backing off)

    def render(self) -> str:
        return (
            f"outbox_lag oldest_unpublished_age_seconds={self.oldest_unpublished_age_seconds:.3f}"
            f" pending={self.pending} retrying={self.retrying} leased={self.leased}"
        )


def outbox_status(conn: psycopg.Connection) -> OutboxStatus:
    """The relay's health in one query over the unpublished rows only (partial index)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT count(*) AS pending,"
            " greatest(0, coalesce(extract(epoch FROM now() - min(created_at)), 0)) AS age,"
            " count(*) FILTER (WHERE last_error IS NOT NULL) AS retrying,"
            " count(*) FILTER (WHERE claimed_until > now()) AS leased"
            " FROM outbox WHERE published_at IS NULL"
        )
        row = cur.fetchone()
    assert row is not None  # an aggregate always returns a row
    return OutboxStatus(row["pending"], float(row["age"]), row["retrying"], row["leased"])


def oldest_unpublished_age(conn: psycopg.Connection) -> float:
    """Seconds since the oldest unpublished row was written; 0 when everything is published."""
    return outbox_status(conn).oldest_unpublished_age_seconds


def delete_published(
    conn: psycopg.Connection, retention: dt.timedelta, batch_size: int = 1000
) -> int:
    """Delete rows published longer than ``retention`` ago, in short transactions of at most
    ``batch_size`` rows (a long DELETE would hold locks and bloat WAL in one go)."""
    total = 0
    while True:
        with conn.transaction():
            deleted = conn.execute(
                "WITH doomed AS ("
                "  SELECT id FROM outbox WHERE published_at < now() - %s"
                "  ORDER BY published_at LIMIT %s FOR UPDATE SKIP LOCKED)"
                " DELETE FROM outbox AS o USING doomed WHERE o.id = doomed.id",
                (retention, batch_size),
            ).rowcount
        total += deleted
        if deleted < batch_size:
            return total


def default_relay_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Relay:
    """Publishes the outbox. ``connect`` returns a new autocommit connection (called again after
    a connection error); ``publisher`` is the Pub/Sub seam. Several relays may run against one
    database at once. Not thread-safe: one thread drives one Relay (``stop`` may be called
    from anywhere, e.g. a signal handler)."""

    def __init__(
        self,
        connect: Callable[[], psycopg.Connection],
        publisher: Publisher,
        config: RelayConfig | None = None,
        relay_id: str | None = None,
    ) -> None:
        self.connect = connect
        self.publisher = publisher
        self.config = config or RelayConfig()
        self.relay_id = relay_id or default_relay_id()
        self.stats = RelayStats()
        self._conn: psycopg.Connection | None = None
        self._stopping = threading.Event()

    # --- lifecycle -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the relay to finish its current batch and return from :meth:`run`."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self, *, once: bool = False, exit_when_idle: float | None = None) -> RelayStats:
        """Relay until stopped. ``once``: return when nothing is claimable (a cron-style pass).
        ``exit_when_idle``: return once no row at all has been unpublished for that many
        seconds (rows leased by a dead relay count as unpublished: they are waited for)."""
        config = self.config
        last_cleanup = last_lag_log = float("-inf")
        idle_since: float | None = None
        failures = 0
        log.info("relay %s started: %s", self.relay_id, config)
        try:
            while not self.stopping:
                try:
                    conn = self._connection()
                    if time.monotonic() - last_cleanup >= config.cleanup_interval_seconds:
                        self.cleanup()
                        last_cleanup = time.monotonic()
                    claimed = self.relay_batch()
                    status = None
                    if time.monotonic() - last_lag_log >= config.lag_log_interval_seconds:
                        status = outbox_status(conn)
                        log.info("%s", status.render())
                        last_lag_log = time.monotonic()
                    failures = 0
                except psycopg.Error as error:
                    # Database unreachable or failing: whatever was claimed and not marked is
                    # re-published after its lease. Reconnect with backoff; never give up.
                    failures += 1
                    self.stats.errors += 1
                    self._drop_connection()
                    delay = config.retry_delay(failures)
                    log.warning("relay %s: %s; retrying in %.1f s", self.relay_id, error, delay)
                    self._stopping.wait(delay)
                    continue
                if claimed:
                    idle_since = None
                    continue  # more may be waiting: no pause between full batches
                if once:
                    break
                if exit_when_idle is not None:
                    pending = (status or outbox_status(conn)).pending
                    now = time.monotonic()
                    idle_since = (idle_since or now) if pending == 0 else None
                    if idle_since is not None and now - idle_since >= exit_when_idle:
                        break
                self._stopping.wait(config.poll_interval_seconds)
            self._finish()
        finally:
            self._drop_connection()
        return self.stats

    def _finish(self) -> None:
        """Clean exit: give back any lease still held (none after a completed batch) so other
        relays need not wait for it, and log the lag one last time."""
        try:
            conn = self._connection()
            with conn.transaction():
                released = conn.execute(
                    "UPDATE outbox SET claimed_by = NULL, claimed_until = NULL"
                    " WHERE claimed_by = %s AND published_at IS NULL",
                    (self.relay_id,),
                ).rowcount
            if released:
                log.info("relay %s released %d leased rows", self.relay_id, released)
            log.info("%s", outbox_status(conn).render())
        except psycopg.Error as error:  # the leases simply expire
            log.warning("relay %s could not release its leases: %s", self.relay_id, error)
        log.info("%s", self.stats.render(self.relay_id))

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
            if not self._conn.autocommit:
                raise ValueError("the relay needs autocommit connections (see producer.db)")
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                log.debug("closing a broken connection failed", exc_info=True)
            self._conn = None

    # --- one batch -----------------------------------------------------------------------------

    def claim(self) -> list[OutboxMessage]:
        """Lease up to ``batch_size`` claimable rows to this relay, oldest first, committed."""
        conn = self._connection()
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "WITH claimable AS ("
                "  SELECT id FROM outbox"
                "  WHERE published_at IS NULL"
                "    AND (claimed_until IS NULL OR claimed_until <= now())"
                "  ORDER BY id LIMIT %(limit)s"
                "  FOR UPDATE SKIP LOCKED)"
                " UPDATE outbox AS o SET claimed_by = %(relay)s,"
                "   claimed_until = now() + make_interval(secs => %(lease)s),"
                "   attempts = o.attempts + 1"
                " FROM claimable WHERE o.id = claimable.id"
                " RETURNING o.id, o.event_id, o.payload, o.event_time, o.attempts",
                {
                    "limit": self.config.batch_size,
                    "relay": self.relay_id,
                    "lease": self.config.lease_seconds,
                },
            )
            rows = cur.fetchall()
        return sorted(
            (
                OutboxMessage(
                    row["id"],
                    row["event_id"],
                    row["payload"].encode("utf-8"),
                    row["event_time"],
                    row["attempts"],
                )
                for row in rows
            ),
            key=lambda message: message.id,
        )

    def relay_batch(self) -> int:
        """Claim, publish, mark one batch; returns how many rows were claimed."""
        messages = self.claim()
        if not messages:
            return 0
        self.stats.batches += 1
        self.stats.claimed += len(messages)
        try:
            outcomes = self.publisher.publish(messages)
        except Exception as error:  # a publisher that fails as a whole fails every message
            log.warning("relay %s: publish failed: %s", self.relay_id, error)
            outcomes = [PublishOutcome(error=f"{type(error).__name__}: {error}")] * len(messages)
        if len(outcomes) != len(messages):
            raise RuntimeError("the publisher must return one outcome per message")
        acked: list[tuple[int, str | None]] = []
        failed: list[tuple[OutboxMessage, str]] = []
        for message, outcome in zip(messages, outcomes, strict=True):
            if outcome.acked:
                acked.append((message.id, outcome.message_id))
            else:
                failed.append((message, outcome.error or "no error given"))
        if acked and self.config.hold_before_mark_seconds > 0:
            log.warning(
                "relay %s: acked %d messages (ids %d..%d); holding %.1f s before marking them"
                " (--hold-before-mark, a test seam)",
                self.relay_id, len(acked), acked[0][0], acked[-1][0],
                self.config.hold_before_mark_seconds,
            )  # fmt: skip
            time.sleep(self.config.hold_before_mark_seconds)
        self._mark(acked, failed)
        self.stats.published += len(acked)
        self.stats.failed += len(failed)
        log.debug(
            "relay %s: batch of %d, %d published, %d failed",
            self.relay_id, len(messages), len(acked), len(failed),
        )  # fmt: skip
        for message, reason in failed[:3]:
            log.warning(
                "relay %s: publishing outbox row %d (%s, attempt %d) failed: %s",
                self.relay_id, message.id, message.event_id, message.attempts, reason,
            )  # fmt: skip
        return len(messages)

    def _mark(
        self, acked: list[tuple[int, str | None]], failed: list[tuple[OutboxMessage, str]]
    ) -> None:
        conn = self._connection()
        with conn.transaction():
            if acked:
                # Whoever holds the lease now: an acked row is published. The first mark wins
                # (published_at keeps the first ack's time, for the lag history).
                conn.execute(
                    "UPDATE outbox AS o SET published_at = now(), message_id = a.message_id,"
                    "   claimed_by = NULL, claimed_until = NULL, last_error = NULL"
                    " FROM unnest(%s::bigint[], %s::text[]) AS a(id, message_id)"
                    " WHERE o.id = a.id AND o.published_at IS NULL",
                    ([row_id for row_id, _ in acked], [message_id for _, message_id in acked]),
                )
            if failed:
                # Only rows still leased to this relay: another relay may have taken over.
                conn.execute(
                    "UPDATE outbox AS o SET claimed_by = NULL, last_error = f.error,"
                    "   claimed_until = now() + make_interval(secs => f.delay)"
                    " FROM unnest(%s::bigint[], %s::float8[], %s::text[]) AS f(id, delay, error)"
                    " WHERE o.id = f.id AND o.published_at IS NULL AND o.claimed_by = %s",
                    (
                        [m.id for m, _ in failed],
                        [self.config.retry_delay(m.attempts) for m, _ in failed],
                        [error for _, error in failed],
                        self.relay_id,
                    ),
                )

    def cleanup(self) -> int:
        deleted = delete_published(
            self._connection(), self.config.retention, self.config.cleanup_batch_size
        )
        if deleted:
            log.info("relay %s deleted %d rows published before retention", self.relay_id, deleted)
        self.stats.cleaned += deleted
        return deleted

"""The payments service against a real PostgreSQL: every committed change has exactly one
contract event in the outbox, a retried request (same idempotency key) creates nothing, a key
reused for another request is refused, and a request rolled back after writing leaves nothing.

PostgreSQL 15 comes from /usr/lib/postgresql/15/bin (or $PG_BIN); without it these tests fail.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from pipeline.events import Event, parse_event
from producer.db import apply_schema, connect
from producer.local_postgres import Postgres
from producer.service import (
    IdempotencyKeyReused,
    InvalidRequest,
    InvalidTransition,
    LimitExceeded,
    PaymentNotFound,
    PaymentsService,
    expire_idempotency_keys,
)
from tests.postgres import fresh_database


@pytest.fixture
def dsn(postgres: Postgres) -> str:
    return fresh_database(postgres, "service")


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection]:
    with connect(dsn) as connection:
        yield connection


def _counts(conn: psycopg.Connection) -> dict[str, int]:
    tables = ("payments", "outbox", "idempotency_keys")
    counts = {}
    for table in tables:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        counts[table] = row[0] if row else -1
    return counts


def _events(conn: psycopg.Connection) -> list[Event]:
    rows = conn.execute("SELECT payload FROM outbox ORDER BY id").fetchall()
    return [parse_event(payload.encode("utf-8")) for (payload,) in rows]


def test_the_schema_applies_again_and_from_several_processes_at_once(dsn: str) -> None:
    errors: list[BaseException] = []

    def apply() -> None:
        try:
            with connect(dsn) as conn:
                apply_schema(conn)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=apply) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_each_state_change_writes_its_row_and_one_contract_event(
    conn: psycopg.Connection,
) -> None:
    service = PaymentsService(conn)
    created = service.create_payment("k-create", "acct-1", "10.5", "EUR")
    posted = service.post_payment("k-post", created.payment_id)
    reversed_ = service.reverse_payment("k-reverse", created.payment_id)

    events = _events(conn)
    pid = created.payment_id
    assert [e.event_id for e in events] == [f"{pid}:PENDING", f"{pid}:POSTED", f"{pid}:REVERSED"]
    assert [e.status for e in events] == ["PENDING", "POSTED", "REVERSED"]
    assert {(e.transaction_id, e.account_id, e.amount, e.currency) for e in events} == {
        (pid, "acct-1", Decimal("10.5"), "EUR")
    }
    assert [e.event_time for e in events] == [
        created.event_time,
        posted.event_time,
        reversed_.event_time,
    ]
    assert events[0].event_time < events[1].event_time < events[2].event_time
    # The stored payload is the canonical JSON line, exactly what the relay will publish.
    payloads = [p for (p,) in conn.execute("SELECT payload FROM outbox ORDER BY id").fetchall()]
    assert payloads == [e.to_json() for e in events]
    row = conn.execute("SELECT status, updated_at FROM payments").fetchone()
    assert row == ("REVERSED", reversed_.event_time)


def test_a_retry_with_the_same_key_returns_the_first_result_and_creates_nothing(
    conn: psycopg.Connection,
) -> None:
    service = PaymentsService(conn)
    first = service.create_payment("k-1", "acct-1", "10.5", "EUR")
    before = _counts(conn)
    # The same request, spelled differently (10.50): the same request.
    again = service.create_payment("k-1", "acct-1", Decimal("10.50"), "EUR")
    assert again.replayed and not first.replayed
    assert again.to_json() | {"replayed": False} == first.to_json()
    assert _counts(conn) == before == {"payments": 1, "outbox": 1, "idempotency_keys": 1}

    posted = service.post_payment("k-2", first.payment_id)
    after_post = _counts(conn)
    again_posted = service.post_payment("k-2", first.payment_id)
    assert again_posted.replayed and again_posted.event_id == posted.event_id
    assert _counts(conn) == after_post == {"payments": 1, "outbox": 2, "idempotency_keys": 2}


def test_a_key_reused_for_another_request_is_refused(conn: psycopg.Connection) -> None:
    service = PaymentsService(conn)
    first = service.create_payment("k-1", "acct-1", "10.00", "EUR")
    before = _counts(conn)
    with pytest.raises(IdempotencyKeyReused, match="different request"):
        service.create_payment("k-1", "acct-1", "11.00", "EUR")
    with pytest.raises(IdempotencyKeyReused):
        service.create_payment("k-1", "acct-2", "10.00", "EUR")
    with pytest.raises(IdempotencyKeyReused):
        service.post_payment("k-1", first.payment_id)
    assert _counts(conn) == before


def test_concurrent_attempts_with_one_key_record_one_payment(dsn: str) -> None:
    """Eight clients send the same request at once: the key's unique index makes seven wait
    for the first transaction, then answer with its result."""
    results: list[Any] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        with connect(dsn) as conn:
            service = PaymentsService(conn)
            barrier.wait()
            results.append(service.create_payment("k-same", "acct-1", "5.00", "USD"))

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert len({r.payment_id for r in results}) == 1
    assert sorted(r.replayed for r in results) == [False] + [True] * 7
    with connect(dsn) as conn:
        assert _counts(conn) == {"payments": 1, "outbox": 1, "idempotency_keys": 1}


def test_concurrent_payments_cannot_both_pass_the_limit(dsn: str) -> None:
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def attempt(key: str) -> None:
        with connect(dsn) as conn:
            service = PaymentsService(conn, account_limit=Decimal(100))
            barrier.wait()
            try:
                service.create_payment(key, "acct-1", "60.00", "USD")
                outcomes.append("committed")
            except LimitExceeded:
                outcomes.append("refused")

    threads = [threading.Thread(target=attempt, args=(f"k-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["committed", "refused"]


def test_a_request_rolled_back_after_writing_leaves_nothing_and_its_retry_runs_again(
    conn: psycopg.Connection,
) -> None:
    service = PaymentsService(conn, account_limit=Decimal(100))
    kept = service.create_payment("k-1", "acct-1", "60.00", "EUR")
    before = _counts(conn)
    with pytest.raises(LimitExceeded) as refused:
        service.create_payment("k-2", "acct-1", "50.00", "EUR")
    # The payment row and the outbox row were written, then rolled back together.
    assert refused.value.event_id is not None
    assert _counts(conn) == before
    row = conn.execute(
        "SELECT count(*) FROM outbox WHERE event_id = %s", (refused.value.event_id,)
    ).fetchone()
    assert row == (0,)
    # Nothing was stored under the key: once the limit allows it, the same request succeeds.
    service.reverse_payment("k-3", kept.payment_id)
    retried = service.create_payment("k-2", "acct-1", "50.00", "EUR")
    assert not retried.replayed
    assert retried.event_id != refused.value.event_id  # a new payment, a new event


def test_forbidden_transitions_are_refused_and_write_nothing(conn: psycopg.Connection) -> None:
    service = PaymentsService(conn)
    payment = service.create_payment("k-1", "acct-1", "1.00", "EUR").payment_id
    service.reverse_payment("k-2", payment)
    before = _counts(conn)
    with pytest.raises(InvalidTransition, match="REVERSED, cannot become POSTED"):
        service.post_payment("k-3", payment)
    with pytest.raises(InvalidTransition):
        service.reverse_payment("k-4", payment)
    with pytest.raises(PaymentNotFound):
        service.post_payment("k-5", "pay_missing")
    assert _counts(conn) == before


def test_an_event_time_never_goes_back_even_when_the_clock_does(
    conn: psycopg.Connection,
) -> None:
    """The warehouse keeps each transaction's event with the latest event_time: POSTED must not
    be older than PENDING, even if the database clock stepped back in between."""
    service = PaymentsService(conn)
    created = service.create_payment("k-1", "acct-1", "1.00", "EUR")
    ahead = created.event_time + dt.timedelta(hours=1)
    conn.execute("UPDATE payments SET updated_at = %s", (ahead,))
    posted = service.post_payment("k-2", created.payment_id)
    assert posted.event_time == ahead + dt.timedelta(microseconds=1)


@pytest.mark.parametrize(
    ("account", "amount", "currency", "field"),
    [
        ("acct-1", "-1", "EUR", "amount"),
        ("acct-1", "0", "EUR", "amount"),
        ("acct-1", "1.0000000001", "EUR", "amount"),
        ("acct-1", "1e3", "EUR", "amount"),
        ("acct-1", "1" * 30, "EUR", "amount"),
        ("acct-1", "1.00", "eur", "currency"),
        ("", "1.00", "EUR", "account_id"),
        ("a\x00b", "1.00", "EUR", "account_id"),
    ],
)
def test_requests_the_contract_would_refuse_are_refused_before_writing(
    conn: psycopg.Connection, account: str, amount: str, currency: str, field: str
) -> None:
    with pytest.raises(InvalidRequest, match=field):
        PaymentsService(conn).create_payment("k-1", account, amount, currency)
    assert _counts(conn) == {"payments": 0, "outbox": 0, "idempotency_keys": 0}


def test_old_idempotency_keys_expire(conn: psycopg.Connection) -> None:
    service = PaymentsService(conn)
    service.create_payment("k-old", "acct-1", "1.00", "EUR")
    service.create_payment("k-new", "acct-1", "1.00", "EUR")
    conn.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'"
        " WHERE idempotency_key = 'k-old'"
    )
    assert expire_idempotency_keys(conn, dt.timedelta(hours=24)) == 1
    keys = conn.execute("SELECT idempotency_key FROM idempotency_keys").fetchall()
    assert keys == [("k-new",)]


def test_the_service_refuses_a_transactional_connection(dsn: str) -> None:
    with psycopg.connect(dsn) as conn, pytest.raises(ValueError, match="autocommit"):
        PaymentsService(conn)


def test_command_line(dsn: str) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "producer", *args, f"--dsn={dsn}"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    create = ("service", "create", "--key=k-1", "--account=acct-1", "--amount=7.25")
    first = run(*create, "--currency=EUR")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["status"] == "PENDING" and result["replayed"] is False
    assert result["amount"] == "7.250000000"

    reused = run(*create, "--currency=USD")
    assert reused.returncode == 1
    assert json.loads(reused.stderr)["error"] == "idempotency_key_reused"

    status = run("status", "--max-age=3600")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["pending"] == 1
    assert run("status", "--max-age=0").returncode == 1  # the lag alert fires

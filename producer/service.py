"""The reference payments service: business row and outbox event in one transaction.

A payment is created ``PENDING``, later ``POSTED``, possibly ``REVERSED`` (from either state).
Each state change is one PostgreSQL transaction that

1. claims the request's idempotency key (or finds the stored result of an earlier attempt),
2. writes the business row (``payments``),
3. writes the event for the change into ``outbox``, exactly as the contract's JSON line,
4. checks the business rules that need the written state (the account's exposure limit),
5. stores the response under the idempotency key,

and commits. Any failure rolls all of it back: there is never a payment without its event or an
event without its payment, which is the whole point of the outbox (a service that updates its
database and then publishes to Pub/Sub loses the event when it crashes in between, and invents
one when it publishes and then fails to commit).

**Events.** ``event_id`` is ``<payment_id>:<STATUS>``: a payment enters each status at most once
(transitions only go forward), so the pair names the state change, stays the same however often
the relay re-publishes the row, and the outbox's UNIQUE constraint enforces it. ``transaction_id``
is the payment id, so the warehouse's ``transactions`` table holds each payment's current state.
``event_time`` is the database's transaction time, but never earlier than the previous change's
(plus a microsecond): the warehouse keeps the event with the latest event_time per transaction,
so a clock step backwards must not let ``PENDING`` overwrite ``POSTED``.

**Idempotency keys.** A client sends a key with each request and resends the same key when it
retries (after a timeout it cannot tell whether the first attempt committed). The key row is
inserted in the request's own transaction with ``ON CONFLICT DO NOTHING``: under READ COMMITTED
a concurrent attempt with the same key waits on the first one's unique-index entry, then sees
its committed row and gets its stored response (``replayed=True``); if the first one rolled
back, the second proceeds. So no "in progress" state is needed: everything a request does is in
this one transaction. A key reused with a *different* request (another operation, payment,
amount...) is refused with :class:`IdempotencyKeyReused`, never answered with the other request's
result. A rejected request stores nothing, so its retry is evaluated again. Keys are global
here; a multi-tenant service scopes them per client. :func:`expire_idempotency_keys` deletes keys
older than the window in which clients may retry (24 h is common).

**The business rule** that can reject a request after writing: the outstanding (not reversed)
amount per account and currency may not exceed ``account_limit``. It is checked after the rows
are written, on the state including them, under a per-account advisory lock so that two
concurrent payments cannot both pass; a violation rolls back the payment *and* its outbox row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from pipeline.events import (
    AMOUNT_SCALE,
    ContractViolation,
    Event,
    format_amount,
    format_timestamp,
    parse_event,
    parse_timestamp,
)

MAX_KEY_LENGTH = 255
_PLAIN_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")  # as the contract's, and positive
CREATE, POST, REVERSE = "create_payment", "post_payment", "reverse_payment"
# Allowed transitions: target status -> statuses it may come from.
_TRANSITIONS = {"POSTED": ("PENDING",), "REVERSED": ("PENDING", "POSTED")}


class ServiceError(Exception):
    """A request the service refused; nothing was written. ``event_id`` is the event the request
    would have produced, when it got that far (the proofs check that it is nowhere)."""

    code = "refused"

    def __init__(self, message: str, event_id: str | None = None) -> None:
        super().__init__(message)
        self.event_id = event_id


class InvalidRequest(ServiceError):
    code = "invalid_request"


class IdempotencyKeyReused(ServiceError):
    code = "idempotency_key_reused"


class PaymentNotFound(ServiceError):
    code = "payment_not_found"


class InvalidTransition(ServiceError):
    code = "invalid_transition"


class LimitExceeded(ServiceError):
    code = "limit_exceeded"


@dataclass(frozen=True)
class PaymentResult:
    """The response to a request: the payment's state after it, and the event it produced."""

    payment_id: str
    account_id: str
    amount: Decimal
    currency: str
    status: str
    event_id: str
    event_time: dt.datetime
    replayed: bool = False  # True when this is the stored response of an earlier attempt

    def to_json(self) -> dict[str, Any]:
        return {
            "payment_id": self.payment_id,
            "account_id": self.account_id,
            "amount": format_amount(self.amount),
            "currency": self.currency,
            "status": self.status,
            "event_id": self.event_id,
            "event_time": format_timestamp(self.event_time),
            "replayed": self.replayed,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> PaymentResult:
        return cls(
            payment_id=value["payment_id"],
            account_id=value["account_id"],
            amount=Decimal(value["amount"]),
            currency=value["currency"],
            status=value["status"],
            event_id=value["event_id"],
            event_time=parse_timestamp(value["event_time"], "event_time"),
            replayed=bool(value.get("replayed", False)),
        )


def event_id_for(payment_id: str, status: str) -> str:
    return f"{payment_id}:{status}"


def _request_hash(operation: str, params: Mapping[str, str]) -> str:
    canonical = json.dumps({"operation": operation, **params}, sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _amount(value: Decimal | str | int) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, Decimal | str | int):
        raise InvalidRequest(f"amount: {value!r} is not a decimal")
    if isinstance(value, str) and not _PLAIN_DECIMAL.fullmatch(value):
        raise InvalidRequest(f"amount: {value!r} is not a plain decimal like 12.50")
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise InvalidRequest(f"amount: {value!r} is not a decimal") from None
    if not amount.is_finite() or amount <= 0:
        raise InvalidRequest(f"amount: {value!r} must be a positive decimal")
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -AMOUNT_SCALE:  # as the contract: at most 9
        raise InvalidRequest(f"amount: {value!r} has more than {AMOUNT_SCALE} fraction digits")
    return amount


class PaymentsService:
    """Records payments and their events. One instance per connection (a psycopg connection
    runs one transaction at a time); the connection must be in autocommit mode, each request
    opens its own transaction.

    ``account_limit``: the most a (account, currency) may have outstanding; None for no limit.
    """

    def __init__(self, conn: psycopg.Connection, *, account_limit: Decimal | None = None) -> None:
        if not conn.autocommit:
            raise ValueError("PaymentsService needs an autocommit connection (see producer.db)")
        if account_limit is not None and account_limit <= 0:
            raise ValueError("account_limit must be positive")
        self.conn = conn
        self.account_limit = account_limit

    # --- requests ------------------------------------------------------------------------------

    def create_payment(
        self, idempotency_key: str, account_id: str, amount: Decimal | str | int, currency: str
    ) -> PaymentResult:
        """A new PENDING payment and its PENDING event."""
        value = _amount(amount)
        # Refuse what the contract would refuse before touching the database (placeholder ids).
        now = dt.datetime.now(dt.UTC)
        self._validated(Event("e", "t", account_id, value, currency, "PENDING", now))
        params = {"account_id": account_id, "amount": format_amount(value), "currency": currency}
        with self.conn.transaction(), self.conn.cursor(row_factory=dict_row) as cur:
            stored = self._claim_key(cur, idempotency_key, CREATE, params)
            if stored is not None:
                return stored
            cur.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                (f"{account_id}/{currency}",),
            )
            payment_id = f"pay_{uuid.uuid4().hex}"
            cur.execute(
                "INSERT INTO payments"
                " (payment_id, account_id, amount, currency, status, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, 'PENDING', now(), now()) RETURNING amount, updated_at",
                (payment_id, account_id, value, currency),
            )
            written = _one(cur)
            result = PaymentResult(
                payment_id, account_id, written["amount"], currency, "PENDING",
                event_id_for(payment_id, "PENDING"), written["updated_at"],
            )  # fmt: skip
            self._write_event(cur, result)
            self._check_limit(cur, account_id, currency, result.event_id)
            self._store_response(cur, idempotency_key, result)
            return result

    def post_payment(self, idempotency_key: str, payment_id: str) -> PaymentResult:
        """PENDING -> POSTED."""
        return self._transition(idempotency_key, POST, payment_id, "POSTED")

    def reverse_payment(self, idempotency_key: str, payment_id: str) -> PaymentResult:
        """PENDING or POSTED -> REVERSED."""
        return self._transition(idempotency_key, REVERSE, payment_id, "REVERSED")

    # --- steps ---------------------------------------------------------------------------------

    def _transition(
        self, idempotency_key: str, operation: str, payment_id: str, target: str
    ) -> PaymentResult:
        with self.conn.transaction(), self.conn.cursor(row_factory=dict_row) as cur:
            stored = self._claim_key(cur, idempotency_key, operation, {"payment_id": payment_id})
            if stored is not None:
                return stored
            # The row lock serialises concurrent changes of one payment.
            cur.execute(
                "SELECT status FROM payments WHERE payment_id = %s FOR UPDATE", (payment_id,)
            )
            row = cur.fetchone()
            if row is None:
                raise PaymentNotFound(f"payment {payment_id!r} does not exist")
            if row["status"] not in _TRANSITIONS[target]:
                # Refused before anything was written, so there is no event to speak of (and
                # <payment>:<target> may well exist already, from the legitimate change).
                raise InvalidTransition(
                    f"payment {payment_id!r} is {row['status']}, cannot become {target}"
                )
            cur.execute(
                "UPDATE payments SET status = %s,"
                " updated_at = greatest(now(), updated_at + interval '1 microsecond')"
                " WHERE payment_id = %s"
                " RETURNING account_id, amount, currency, updated_at",
                (target, payment_id),
            )
            updated = _one(cur)
            result = PaymentResult(
                payment_id, updated["account_id"], updated["amount"], updated["currency"],
                target, event_id_for(payment_id, target), updated["updated_at"],
            )  # fmt: skip
            self._write_event(cur, result)
            self._store_response(cur, idempotency_key, result)
            return result

    def _claim_key(
        self,
        cur: psycopg.Cursor[dict[str, Any]],
        key: str,
        operation: str,
        params: Mapping[str, str],
    ) -> PaymentResult | None:
        """None when this request is the first with the key (the caller goes on), else the
        stored result of the first one. Raises when the key came with another request."""
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH:
            raise InvalidRequest(f"idempotency key must be 1..{MAX_KEY_LENGTH} characters")
        request_hash = _request_hash(operation, params)
        # The response is filled in before commit (_store_response); an empty object until then
        # is never visible to anyone else.
        cur.execute(
            "INSERT INTO idempotency_keys (idempotency_key, operation, request_hash, response)"
            " VALUES (%s, %s, %s, '{}') ON CONFLICT (idempotency_key) DO NOTHING"
            " RETURNING idempotency_key",
            (key, operation, request_hash),
        )
        if cur.fetchone() is not None:
            return None
        cur.execute(
            "SELECT operation, request_hash, response FROM idempotency_keys"
            " WHERE idempotency_key = %s",
            (key,),
        )
        first = _one(cur)
        if first["request_hash"] != request_hash:
            raise IdempotencyKeyReused(
                f"idempotency key {key!r} was used for a different request ({first['operation']})"
            )
        return replace(PaymentResult.from_json(first["response"]), replayed=True)

    def _write_event(self, cur: psycopg.Cursor[dict[str, Any]], result: PaymentResult) -> None:
        event = self._validated(
            Event(
                result.event_id, result.payment_id, result.account_id, result.amount,
                result.currency, result.status, result.event_time,
            )
        )  # fmt: skip
        cur.execute(
            "INSERT INTO outbox (event_id, aggregate_id, payload, event_time)"
            " VALUES (%s, %s, %s, %s)",
            (event.event_id, event.transaction_id, event.to_json(), event.event_time),
        )

    def _check_limit(
        self, cur: psycopg.Cursor[dict[str, Any]], account_id: str, currency: str, event_id: str
    ) -> None:
        if self.account_limit is None:
            return
        cur.execute(
            "SELECT coalesce(sum(amount), 0) AS outstanding FROM payments"
            " WHERE account_id = %s AND currency = %s AND status <> 'REVERSED'",
            (account_id, currency),
        )
        outstanding = _one(cur)["outstanding"]
        if outstanding > self.account_limit:
            raise LimitExceeded(
                f"account {account_id!r} would have {format_amount(outstanding)} {currency}"
                f" outstanding, above its limit of {format_amount(self.account_limit)}",
                event_id,
            )

    @staticmethod
    def _store_response(
        cur: psycopg.Cursor[dict[str, Any]], key: str, result: PaymentResult
    ) -> None:
        cur.execute(
            "UPDATE idempotency_keys SET response = %s WHERE idempotency_key = %s",
            (Jsonb(result.to_json()), key),
        )

    @staticmethod
    def _validated(event: Event) -> Event:
        """The event as the pipeline will read it: its JSON line must parse back to itself, so
        the service can never write an event the pipeline would dead-letter."""
        try:
            parsed = parse_event(event.to_json().encode("utf-8"))
        except ContractViolation as error:
            raise InvalidRequest(str(error)) from None
        if parsed != event:  # e.g. an amount with more than 9 fraction digits
            raise InvalidRequest(f"not representable in the event contract: {event}")
        return parsed


def _one(cur: psycopg.Cursor[dict[str, Any]]) -> dict[str, Any]:
    row = cur.fetchone()
    if row is None:  # the statements that call this always return a row
        raise RuntimeError("expected a row")
    return row


def expire_idempotency_keys(conn: psycopg.Connection, older_than: dt.timedelta) -> int:
    """Delete keys older than the retry window; a request retried after that is new."""
    with conn.transaction():
        cursor = conn.execute(
            "DELETE FROM idempotency_keys WHERE created_at < now() - %s", (older_than,)
        )
        return cursor.rowcount

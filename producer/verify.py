"""Compare the warehouse with the service database: the end-to-end proof.

The service database is the truth: its committed outbox rows are exactly the events that exist
(a rolled-back request left none), and its ``payments`` table is each payment's current state.
:func:`check_warehouse` checks, on top of the pipeline's own invariants
(``pipeline.tools.reconcile``):

* the ledger (``transaction_events``) holds exactly the committed outbox events, each once and
  byte-for-byte the same version (reconcile's truth check, with PostgreSQL as the truth);
* ``transactions`` equals ``payments``: every payment in its current status, amount and time;
* no event of a refused (rolled-back) request is anywhere, in the outbox or in the warehouse;
* nothing the service wrote was dead-lettered, and every outbox row was published.

:func:`write_truth` writes the same truth in the generator's ``truth.jsonl`` format, so
``python -m pipeline.tools.reconcile --warehouse ... --truth FILE`` can check it by hand.
:func:`published_copies` counts what reached Pub/Sub per event_id, through a subscription of
its own, to show the duplicates the relay published and the pipeline absorbed.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable

import psycopg
from psycopg.rows import dict_row

from pipeline.events import Event, parse_event
from pipeline.sinks.warehouse import Warehouse
from pipeline.tools.reconcile import Report, Truth, check_invariants, check_truth, fetch_tables
from producer.service import event_id_for


def committed_events(conn: psycopg.Connection) -> list[Event]:
    rows = conn.execute("SELECT payload FROM outbox ORDER BY id").fetchall()
    return [parse_event(payload.encode("utf-8")) for (payload,) in rows]


def truth_of(events: Iterable[Event]) -> Truth:
    versions = {event.event_id: [event] for event in events}
    return Truth(versions, [], len(versions))


def write_truth(events: Iterable[Event], path: str) -> None:
    """The generator's truth.jsonl format: one version per event, nothing malformed."""
    events = list(events)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"type": "meta", "lines": len(events)}) + "\n")
        for event in events:
            record = {
                "type": "event",
                "event_id": event.event_id,
                "versions": [json.loads(event.to_json())],
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")


def check_warehouse(
    conn: psycopg.Connection, warehouse: Warehouse, refused_event_ids: Iterable[str] = ()
) -> Report:
    report = Report()
    tables = fetch_tables(warehouse)
    check_invariants(tables, report)
    events = committed_events(conn)
    check_truth(tables, truth_of(events), report)

    unpublished = conn.execute("SELECT count(*) FROM outbox WHERE published_at IS NULL")
    (pending,) = unpublished.fetchone() or (0,)
    if pending:
        report.problem(f"{pending} outbox rows were never published")

    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT payment_id, account_id, amount, currency, status, updated_at FROM payments"
        )
        payments = {row["payment_id"]: row for row in cur.fetchall()}
    current = {row["transaction_id"]: row for row in tables["transactions"]}
    for payment_id in sorted(payments.keys() - current.keys()):
        report.problem(f"payment {payment_id} is missing from transactions")
    for payment_id in sorted(current.keys() - payments.keys()):
        report.problem(f"transactions holds {payment_id}, which PostgreSQL does not")
    for payment_id in sorted(payments.keys() & current.keys()):
        want, got = payments[payment_id], current[payment_id]
        expected = {
            "event_id": event_id_for(payment_id, want["status"]),
            "account_id": want["account_id"],
            "amount": want["amount"],
            "currency": want["currency"],
            "status": want["status"],
            "event_time": want["updated_at"],
        }
        differing = [name for name, value in expected.items() if got[name] != value]
        if differing:
            report.problem(f"transactions row of {payment_id} differs in {differing}")

    refused = set(refused_event_ids)
    in_outbox = {event.event_id for event in events} & refused
    in_ledger = {row["event_id"] for row in tables["transaction_events"]} & refused
    for event_id in sorted(in_outbox):
        report.problem(f"refused request's event {event_id} is in the outbox")
    for event_id in sorted(in_ledger):
        report.problem(f"refused request's event {event_id} is in the warehouse")
    if tables["dead_letters"]:
        report.problem(f"{len(tables['dead_letters'])} dead letters: the service wrote bad events")
    report.facts.append(
        f"PostgreSQL: {len(payments)} payments, {len(events)} committed outbox events;"
        f" {len(refused)} events of refused requests, none of them anywhere"
        if not (in_outbox or in_ledger)
        else f"PostgreSQL: {len(payments)} payments, {len(events)} committed outbox events"
    )
    return report


def published_copies(
    subscription: str, expected_events: int, *, quiet_seconds: float = 3.0, timeout: float = 120
) -> Counter[str]:
    """Pull (and ack) everything on ``subscription``: copies published per event_id. Pulls until
    ``expected_events`` distinct ids arrived and then one pull of ``quiet_seconds`` brings
    nothing more (late copies of a re-publish)."""
    from google.api_core.exceptions import DeadlineExceeded  # noqa: PLC0415
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]  # noqa: PLC0415

    copies: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    with pubsub_v1.SubscriberClient() as subscriber:
        while time.monotonic() < deadline:
            try:
                received = subscriber.pull(
                    subscription=subscription, max_messages=1000, timeout=quiet_seconds
                ).received_messages
            except DeadlineExceeded:  # an empty pull, as some servers report it
                received = []
            if received:
                copies.update(m.message.attributes.get("event_id", "") for m in received)
                subscriber.acknowledge(
                    subscription=subscription, ack_ids=[m.ack_id for m in received]
                )
            elif len(copies) >= expected_events:
                break
    return copies

"""Reconcile: check a warehouse's tables instead of trusting the pipeline.

    python -m pipeline.tools.reconcile --warehouse duckdb:PATH [--truth truth.jsonl]

Without ground truth it checks the invariants: no event_id twice in the ledger; ``transactions``
holds, per transaction, exactly the latest event of the ledger (ties to the greater event_id);
``account_window_totals`` holds, per account, currency and window, exactly the count and sum of
the ledger's events; each conflict dead letter names an event_id whose ledger version differs.
The expected rows are recomputed here in Python, independently of the warehouse's SQL.

With ``--truth`` (from the generator) it also checks that the ledger holds exactly the expected
event_ids, each as one of its acceptable versions, that every other version is a conflict dead
letter, and that every malformed input is a dead letter naming the expected field.

Exit status 0 when everything matches, 1 on any mismatch (each is printed).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pipeline.dead_letters import STAGE_DEDUP, STAGE_PARSE, dead_letter_id
from pipeline.events import (
    CONTRACT_FIELDS,
    MONEY_CONTEXT,
    NUMERIC_LIMIT,
    Event,
    parse_event,
    to_micros,
)
from pipeline.sinks.dispatch import open_warehouse
from pipeline.sinks.warehouse import Warehouse
from pipeline.tables import DATA_TABLES, TRANSACTION_COPIED

Row = dict[str, Any]
_MAX_REPORTED = 20


def event_of(row: Mapping[str, Any]) -> Event:
    return Event(*(row[name] for name in CONTRACT_FIELDS))


def expected_transactions(ledger: Iterable[Row]) -> dict[str, Row]:
    latest: dict[str, Row] = {}
    for row in ledger:
        current = latest.get(row["transaction_id"])
        if current is None or (row["event_time"], row["event_id"]) > (
            current["event_time"],
            current["event_id"],
        ):
            latest[row["transaction_id"]] = row
    return {
        tid: {name: row[name] for name in ("transaction_id", *TRANSACTION_COPIED)}
        for tid, row in latest.items()
    }


def window_of(event_time: dt.datetime, size_seconds: int) -> tuple[dt.datetime, dt.datetime]:
    """Beam's FixedWindows(size) with offset 0, computed independently."""
    micros = to_micros(event_time)
    size = size_seconds * 1_000_000
    start = micros - micros % size
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (
        epoch + dt.timedelta(microseconds=start),
        epoch + dt.timedelta(microseconds=start + size),
    )


WindowKey = tuple[str, str, dt.datetime]
WindowTotal = tuple[dt.datetime, int, Decimal | None, bool]  # end, count, total, overflow


def expected_totals(ledger: Iterable[Row], size_seconds: int) -> dict[WindowKey, WindowTotal]:
    """Exact count and sum per window; a sum that does not fit NUMERIC(38, 9) is None, flagged."""
    sums: dict[WindowKey, tuple[dt.datetime, int, Decimal]] = {}
    for row in ledger:
        start, end = window_of(row["event_time"], size_seconds)
        key = (row["account_id"], row["currency"], start)
        _, count, total = sums.get(key, (end, 0, Decimal(0)))
        sums[key] = (end, count + 1, MONEY_CONTEXT.add(total, row["amount"]))
    return {
        key: (end, count, total, False)
        if total.copy_abs() < NUMERIC_LIMIT
        else (end, count, None, True)
        for key, (end, count, total) in sums.items()
    }


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def render(self) -> str:
        lines = ["Reconcile", *(f"  {fact}" for fact in self.facts)]
        if self.problems:
            lines.append(f"  MISMATCHES: {len(self.problems)}")
            lines.extend(f"    - {p}" for p in self.problems[:_MAX_REPORTED])
            if len(self.problems) > _MAX_REPORTED:
                lines.append(f"    ... and {len(self.problems) - _MAX_REPORTED} more")
        else:
            lines.append("  OK: every check passed")
        return "\n".join(lines)


def _window_size(totals: Sequence[Row], report: Report) -> int | None:
    sizes = {int((r["window_end"] - r["window_start"]).total_seconds()) for r in totals}
    if len(sizes) > 1:
        report.problem(f"account_window_totals mixes window sizes {sorted(sizes)}")
        return None
    return sizes.pop() if sizes else None


def check_invariants(tables: Mapping[str, list[Row]], report: Report) -> None:
    ledger = tables["transaction_events"]
    ids = Counter(row["event_id"] for row in ledger)
    twice = [event_id for event_id, n in ids.items() if n > 1]
    for event_id in twice:
        report.problem(f"event_id {event_id!r} appears {ids[event_id]} times in the ledger")
    report.facts.append(f"transaction_events: {len(ledger)} rows, {len(ids)} event_ids")

    expected = expected_transactions(ledger)
    actual = {row["transaction_id"]: row for row in tables["transactions"]}
    for tid in sorted(expected.keys() - actual.keys()):
        report.problem(f"transaction {tid!r} is missing from transactions")
    for tid in sorted(actual.keys() - expected.keys()):
        report.problem(f"transaction {tid!r} has no event in the ledger")
    for tid in sorted(expected.keys() & actual.keys()):
        want, got = expected[tid], actual[tid]
        differing = [name for name in want if want[name] != got[name]]
        if differing:
            report.problem(f"transaction {tid!r} differs from its latest event in {differing}")
    report.facts.append(f"transactions: {len(actual)} rows")
    _check_totals(ledger, tables["account_window_totals"], report)
    _check_conflicts(ledger, tables["dead_letters"], report)


def _check_totals(ledger: Sequence[Row], totals: Sequence[Row], report: Report) -> None:
    size = _window_size(totals, report)
    if size is not None:
        want_totals = expected_totals(ledger, size)
        got_totals = {
            (r["account_id"], r["currency"], r["window_start"]): (
                r["window_end"],
                r["event_count"],
                r["total_amount"],
                r["total_overflow"],
            )
            for r in totals
        }
        for key in sorted(want_totals.keys() - got_totals.keys()):
            report.problem(f"window {key} is missing from account_window_totals")
        for key in sorted(got_totals.keys() - want_totals.keys()):
            report.problem(f"window {key} has no event in the ledger")
        for key in sorted(want_totals.keys() & got_totals.keys()):
            if want_totals[key] != got_totals[key]:
                report.problem(
                    f"window {key}: expected {want_totals[key][1:]}, found {got_totals[key][1:]}"
                )
    report.facts.append(f"account_window_totals: {len(totals)} rows (window {size} s)")


def _check_conflicts(ledger: Sequence[Row], dead_letters: Sequence[Row], report: Report) -> None:
    by_id = {row["event_id"]: event_of(row) for row in ledger}
    for row in dead_letters:
        if row["stage"] != STAGE_DEDUP:
            continue
        rejected = parse_event(row["payload"].encode("utf-8"))
        held = by_id.get(rejected.event_id)
        if held is None:
            report.problem(f"conflict dead letter for {rejected.event_id!r}, absent from ledger")
        elif held == rejected:
            report.problem(f"conflict dead letter for {rejected.event_id!r} is the ledger version")
    stages = Counter(row["stage"] for row in dead_letters)
    report.facts.append(f"dead_letters: {len(dead_letters)} rows {dict(sorted(stages.items()))}")


@dataclass
class Truth:
    versions: dict[str, list[Event]]
    malformed: list[tuple[bytes, str]]
    lines: int


def load_truth(path: str) -> Truth:
    versions: dict[str, list[Event]] = {}
    malformed: list[tuple[bytes, str]] = []
    lines = 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record["type"] == "meta":
                lines = record["lines"]
            elif record["type"] == "event":
                versions[record["event_id"]] = [
                    parse_event(json.dumps(v).encode("utf-8")) for v in record["versions"]
                ]
            elif record["type"] == "malformed":
                malformed.append((base64.b64decode(record["payload_base64"]), record["field"]))
    return Truth(versions, malformed, lines)


def check_truth(tables: Mapping[str, list[Row]], truth: Truth, report: Report) -> None:
    ledger = {row["event_id"]: event_of(row) for row in tables["transaction_events"]}
    for event_id in sorted(truth.versions.keys() - ledger.keys()):
        report.problem(f"event {event_id!r} is missing from the ledger")
    for event_id in sorted(ledger.keys() - truth.versions.keys()):
        report.problem(f"event {event_id!r} is in the ledger but not in the truth")
    dead_letters = {row["dead_letter_id"]: row for row in tables["dead_letters"]}
    conflicts = 0
    for event_id, versions in truth.versions.items():
        held = ledger.get(event_id)
        if held is None:
            continue
        if held not in versions:
            report.problem(f"event {event_id!r}: ledger version is none of the expected ones")
            continue
        for version in versions:
            if version == held:
                continue
            conflicts += 1
            if dead_letter_id(STAGE_DEDUP, version.to_json().encode("utf-8")) not in dead_letters:
                report.problem(f"event {event_id!r}: conflicting version not in dead_letters")
    for payload, name in truth.malformed:
        row = dead_letters.get(dead_letter_id(STAGE_PARSE, payload))
        if row is None:
            report.problem(f"malformed input {payload[:60]!r} is not in dead_letters")
        elif not row["error"].startswith(f"{name}:"):
            report.problem(f"dead letter for {payload[:60]!r} names {row['error']!r}, not {name}")
    report.facts.append(
        f"truth: {len(truth.versions)} events, {conflicts} conflicting versions,"
        f" {len(truth.malformed)} malformed lines of {truth.lines}"
    )


def fetch_tables(warehouse: Warehouse) -> dict[str, list[Row]]:
    return {table.name: warehouse.fetch_rows(table.name) for table in DATA_TABLES}


def reconcile(warehouse: Warehouse, truth: Truth | None = None) -> Report:
    report = Report()
    tables = fetch_tables(warehouse)
    check_invariants(tables, report)
    if truth is not None:
        check_truth(tables, truth, report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--warehouse", required=True, help="duckdb:PATH or bigquery:PROJECT.DATASET"
    )
    parser.add_argument("--truth", help="truth.jsonl written by pipeline.tools.generate")
    args = parser.parse_args(argv)
    warehouse = open_warehouse(args.warehouse)
    try:
        report = reconcile(warehouse, load_truth(args.truth) if args.truth else None)
    finally:
        warehouse.close()
    print(report.render())
    return 1 if report.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())

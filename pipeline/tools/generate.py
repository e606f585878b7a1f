"""Generate realistic transaction event files, and the ground truth they must produce.

    python -m pipeline.tools.generate --out DIR --events 100000 [--seed 7] [--files 8] ...

Transactions go PENDING -> POSTED (most), some later REVERSED; each account books in one
currency. Lines are written in *arrival* order, not event order: network delay reorders events of
one transaction, and a share arrives hours late. On top come identical duplicates (written in
another JSON spelling: number instead of string, another UTC offset, extra fields, keys
reordered), conflicting versions of an event_id (another amount, status or event_time) and
malformed lines of many kinds.

DIR gets ``events-NNNNN-of-MMMMM.jsonl`` files and ``truth.jsonl``: one line per accepted
event_id with its acceptable versions (the first is the original; exactly one of them must be in
the ledger, the others in dead_letters), and one line per malformed input with the field its dead
letter must name. Same seed, same files.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pipeline.contract import FIELD, FIELDS
from pipeline.events import Event, format_timestamp

CURRENCIES = (("USD", 2), ("EUR", 2), ("GBP", 2), ("JPY", 0), ("CHF", 2))


@dataclass
class GeneratorConfig:
    events: int = 100_000
    seed: int = 7
    files: int = 8
    accounts: int = 2_000
    start: dt.datetime = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    span_hours: float = 24.0
    duplicate_rate: float = 0.10
    conflict_rate: float = 0.005
    malformed_rate: float = 0.005
    late_rate: float = 0.02
    reversal_rate: float = 0.05
    posting_rate: float = 0.85


@dataclass
class Line:
    arrival: float  # seconds after start, orders the output
    payload: bytes


@dataclass
class GroundTruth:
    versions: dict[str, list[Event]] = field(default_factory=dict)
    malformed: list[tuple[bytes, str]] = field(default_factory=list)


def _amount_text(rng: random.Random, decimals: int) -> Decimal:
    cents = rng.randint(1, 5_000_00) if rng.random() < 0.97 else rng.randint(1, 10**9)
    return Decimal(cents).scaleb(-decimals)


def _spell(event: Event, rng: random.Random, plain: bool) -> bytes:
    """One JSON spelling of an event; ``plain=False`` picks an equivalent alternative."""
    amount: object = f"{event.amount.normalize():f}" if plain else str(event.amount)
    event_time = format_timestamp(event.event_time).replace(".000000Z", "Z")
    obj = event.json_fields()  # every field, in the contract's order
    obj.update(amount=amount, event_time=event_time)
    if not plain:
        choice = rng.randrange(4)
        if choice == 0:  # the same amount as a JSON number, trailing zeros
            obj["amount"] = _RawNumber(f"{event.amount:f}")
        elif choice == 1:  # the same instant in another offset
            offset = dt.timezone(dt.timedelta(hours=rng.choice((-8, -5, 2, 5)), minutes=30))
            obj["event_time"] = event.event_time.astimezone(offset).isoformat()
        elif choice == 2:  # fields outside the contract are ignored
            obj["source"] = "retry"
            obj["attempt"] = rng.randint(2, 5)
        items = list(obj.items())
        rng.shuffle(items)
        obj = dict(items)
    return _dumps(obj).encode("utf-8")


class _RawNumber(str):
    """Written as a bare JSON number (json.dumps would quote it, float would round it)."""


def _dumps(obj: dict[str, object]) -> str:
    parts = []
    for key, value in obj.items():
        rendered = str(value) if isinstance(value, _RawNumber) else json.dumps(value)
        parts.append(f"{json.dumps(key)}: {rendered}")
    return "{" + ", ".join(parts) + "}"


def _malformed_lines(rng: random.Random, good: Event) -> list[tuple[bytes, str]]:
    """(payload, field the dead letter must name); derived from a valid event."""
    base = json.loads(_spell(good, rng, plain=True))

    def variant(**changes: object) -> bytes:
        obj = dict(base, event_id=f"bad-{rng.getrandbits(48):012x}")
        for key, value in changes.items():
            if value is _DROP:
                obj.pop(key, None)
            else:
                obj[key] = value
        return json.dumps(obj).encode("utf-8")

    return [
        (b"not json at all", "payload"),
        (b'{"event_id": "x", "amount": ', "payload"),
        (b"[1, 2, 3]", "payload"),
        (b"\xff\xfe" + json.dumps(base).encode()[2:], "payload"),
        (variant(currency="usd"), "currency"),
        (variant(currency="EURO"), "currency"),
        (variant(amount="1,000.00"), "amount"),
        (variant(amount="1e3"), "amount"),
        (variant(amount=True), "amount"),
        (variant(amount="12.3456789012"), "amount"),
        (variant(status="SETTLED"), "status"),
        (variant(event_time="2026-01-01T10:00:00"), "event_time"),
        (variant(event_time="2026-02-30T10:00:00Z"), "event_time"),
        (variant(account_id=None), "account_id"),
        (variant(transaction_id=_DROP), "transaction_id"),
        (variant(event_id="x" * 129), "event_id"),
    ]


_DROP = object()


def generate(config: GeneratorConfig) -> tuple[list[Line], GroundTruth]:
    rng = random.Random(config.seed)
    truth = GroundTruth()
    lines: list[Line] = []
    span = config.span_hours * 3600
    accounts = [(f"acct-{i:05d}", *rng.choice(CURRENCIES)) for i in range(config.accounts)]

    def emit(event: Event, arrival: float, plain: bool = True) -> None:
        lines.append(Line(arrival, _spell(event, rng, plain)))

    def arrival_of(event: Event) -> float:
        offset = (event.event_time - config.start).total_seconds()
        delay = rng.expovariate(1 / 20)  # most events arrive within seconds
        if rng.random() < config.late_rate:
            delay += rng.uniform(3600, 6 * 3600)  # hours late
        return offset + delay

    produced = 0
    while produced < config.events:
        account_id, currency, decimals = rng.choice(accounts)
        transaction_id = f"txn-{rng.getrandbits(64):016x}"
        amount = _amount_text(rng, decimals)
        when = config.start + dt.timedelta(microseconds=rng.randrange(int(span * 1e6)))
        statuses = ["PENDING"]
        if rng.random() < config.posting_rate:
            statuses.append("POSTED")
            if rng.random() < config.reversal_rate:
                statuses.append("REVERSED")
        for status in statuses[: config.events - produced]:
            event = _event(
                rng,
                event_id=f"evt-{rng.getrandbits(80):020x}",
                transaction_id=transaction_id,
                account_id=account_id,
                amount=amount,
                currency=currency,
                status=status,
                event_time=when,
            )
            truth.versions[event.event_id] = [event]
            arrival = arrival_of(event)
            emit(event, arrival)
            produced += 1
            if rng.random() < config.duplicate_rate:
                # A publisher retry or a redelivery: same event, maybe spelled differently.
                emit(event, arrival + rng.expovariate(1 / 30), plain=rng.random() < 0.5)
            if rng.random() < config.conflict_rate:
                other = _conflicting_version(event, rng)
                truth.versions[event.event_id].append(other)
                emit(other, arrival + rng.uniform(1, 600))
            when += dt.timedelta(seconds=rng.uniform(1, 3600))

    malformed_count = round(config.events * config.malformed_rate)
    for _ in range(malformed_count):
        some_event = truth.versions[rng.choice(list(truth.versions))][0]
        payload, name = rng.choice(_malformed_lines(rng, some_event))
        truth.malformed.append((payload, name))
        lines.append(Line(rng.uniform(0, span), payload))

    lines.sort(key=lambda line: line.arrival)
    return lines, truth


def _event(rng: random.Random, **values: Any) -> Event:
    """An event of the contract (pipeline/contract.py) from the values this generator models;
    any other field gets an example of its kind (an optional one is absent one time in five)."""
    for f in FIELDS:
        if f.name not in values:
            absent = not f.required and rng.random() < 0.2
            values[f.name] = None if absent else f.kind.example(rng)
    return Event(**{f.name: values[f.name] for f in FIELDS})


def _conflicting_version(event: Event, rng: random.Random) -> Event:
    choice = rng.randrange(3)
    if choice == 1 and "status" not in FIELD:
        choice = 0  # an adapted contract without a status: another amount instead
    if choice == 0:
        return event._replace(amount=event.amount + 1)
    if choice == 1:
        return event._replace(status="REVERSED" if event.status != "REVERSED" else "POSTED")
    # Another event_time, days away: the stored version lies outside any batch's time range.
    return event._replace(event_time=event.event_time + dt.timedelta(days=rng.choice((-3, 2))))


def write(lines: Sequence[Line], truth: GroundTruth, out: str, files: int) -> list[str]:
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, f"events-{i:05d}-of-{files:05d}.jsonl") for i in range(files)]
    per_file = -(-len(lines) // files)
    for index, path in enumerate(paths):
        with open(path, "wb") as handle:
            for line in lines[index * per_file : (index + 1) * per_file]:
                handle.write(line.payload + b"\n")
    write_truth(truth, os.path.join(out, "truth.jsonl"), len(lines))
    return paths


def write_truth(truth: GroundTruth, path: str, lines: int) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps({"type": "meta", "lines": lines}) + "\n")
        for event_id, versions in truth.versions.items():
            record = {
                "type": "event",
                "event_id": event_id,
                "versions": [json.loads(v.to_json()) for v in versions],
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        for payload, name in truth.malformed:
            record = {
                "type": "malformed",
                "field": name,
                "payload_base64": base64.b64encode(payload).decode("ascii"),
            }
            handle.write(json.dumps(record) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    defaults = GeneratorConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="Output folder (created if absent).")
    parser.add_argument(
        "--events",
        type=int,
        default=defaults.events,
        help=f"Distinct valid events. Default: {defaults.events}",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="Random seed.")
    parser.add_argument("--files", type=int, default=defaults.files, help="Number of files.")
    parser.add_argument("--accounts", type=int, default=defaults.accounts)
    parser.add_argument(
        "--span_hours",
        type=float,
        default=defaults.span_hours,
        help="Event times spread over this many hours from --start.",
    )
    parser.add_argument(
        "--start", default=format_timestamp(defaults.start), help="First event time, RFC 3339."
    )
    for name in ("duplicate_rate", "conflict_rate", "malformed_rate", "late_rate"):
        parser.add_argument(
            f"--{name}",
            type=float,
            default=getattr(defaults, name),
            help=f"Share of events. Default: {getattr(defaults, name)}",
        )
    args = parser.parse_args(argv)
    start = dt.datetime.fromisoformat(args.start.replace("Z", "+00:00")).astimezone(dt.UTC)
    config = GeneratorConfig(
        events=args.events,
        seed=args.seed,
        files=args.files,
        accounts=args.accounts,
        start=start,
        span_hours=args.span_hours,
        duplicate_rate=args.duplicate_rate,
        conflict_rate=args.conflict_rate,
        malformed_rate=args.malformed_rate,
        late_rate=args.late_rate,
    )
    lines, truth = generate(config)
    paths = write(lines, truth, args.out, args.files)
    conflicts = sum(len(v) - 1 for v in truth.versions.values())
    print(
        f"wrote {len(lines)} lines ({len(truth.versions)} events, {conflicts} conflicting"
        f" versions, {len(truth.malformed)} malformed) to {len(paths)} files in {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A hostile-input corpus: every kind of input a producer, a proxy or an attacker can put on the
wire, each with the outcome the contract promises: an exact ledger row, or a dead letter whose
reason names the field.

Cases are built in code rather than stored as files because some are large (a 10 MB message, a
100,000-level nesting) or not text at all; each is deterministic.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from decimal import Decimal

from pipeline.contract import FIELDS
from pipeline.field_kinds import OneOf, Text

BASE = {
    "transaction_id": "txn-h",
    "account_id": "acct-h",
    "amount": "12.34",
    "currency": "EUR",
    "status": "POSTED",
    "event_time": "2026-03-01T12:00:00Z",
}
# Required fields an adapted contract adds (pipeline/contract.py) get an example of their kind.
_EXAMPLES = random.Random(0)
BASE.update(
    {
        f.name: f.kind.to_json(f.kind.example(_EXAMPLES))
        for f in FIELDS
        if f.required and f.name not in BASE and f.name != "event_id"
    }
)


@dataclass(frozen=True)
class Case:
    name: str
    payload: bytes
    field: str | None = None  # the field a dead letter must name; None: lands as a row
    row: dict[str, object] | None = None  # expected normalised values, when it lands

    @property
    def lands(self) -> bool:
        return self.field is None


class _Raw(str):
    """Rendered as-is (a bare JSON number or constant), never quoted."""


def _obj(event_id: str, **fields: object) -> bytes:
    values: dict[str, object] = {"event_id": event_id, **BASE, **fields}
    parts = []
    for key, value in values.items():
        if value is _DROP:
            continue
        rendered = str(value) if isinstance(value, _Raw) else json.dumps(value, ensure_ascii=False)
        parts.append(f"{json.dumps(key)}: {rendered}")
    return ("{" + ", ".join(parts) + "}").encode("utf-8")


_DROP = object()


def _row(case_id: str, **fields: object) -> Case:
    """A case that must land; ``expected`` overrides of the normalised row go in ``_expect``."""
    expect = dict(fields.pop("_expect", {}))  # type: ignore[call-overload]
    given = {k: v for k, v in fields.items() if k in BASE and not isinstance(v, _Raw)}
    return Case(case_id, _obj(case_id, **fields), row={"event_id": case_id, **given, **expect})


def _bad(case_id: str, field: str, **fields: object) -> Case:
    return Case(case_id, _obj(case_id, **fields), field=field)


def contract_cases() -> list[Case]:
    """What each field of the contract refuses, derived from its kind, so that a field added to
    the contract is attacked like the others: absent, null, of another JSON type, too long, with
    a control character, off its pattern, off its list. An optional field may be absent or null."""
    result: list[Case] = []
    for f in FIELDS:
        n = f.name
        if n == "event_id":
            continue  # every case has its own id; the id's cases are written out below
        if f.required:
            result += [_bad(f"{n}:absent", n, **{n: _DROP}), _bad(f"{n}:null", n, **{n: None})]
        else:
            result += [
                _row(f"{n}:absent", **{n: _DROP}, _expect={n: None}),
                _row(f"{n}:null", **{n: None}, _expect={n: None}),
            ]
        result.append(_bad(f"{n}:array", n, **{n: [1]}))
        kind = f.kind
        if isinstance(kind, Text):
            result.append(_bad(f"{n}:too-long", n, **{n: "x" * (kind.max_length + 1)}))
            result.append(_bad(f"{n}:control-character", n, **{n: "\u0007"}))
            if kind.pattern is not None:
                result.append(_bad(f"{n}:off-pattern", n, **{n: " " * max(kind.min_length, 1)}))
        elif isinstance(kind, OneOf):
            result.append(_bad(f"{n}:not-listed", n, **{n: kind.values[0] + "?"}))
    return result


def cases() -> list[Case]:
    long_id = "i" * 128
    return [
        # --- the payload as a whole
        Case("not-utf8", b'{"event_id": "x\xff\xfe", "amount": "1"}', field="payload"),
        Case("empty", b"", field="payload"),
        Case("whitespace-only", b" \t ", field="payload"),
        Case("not-json", b"hello world", field="payload"),
        Case("truncated-json", _obj("truncated")[:-5], field="payload"),
        Case("trailing-garbage", _obj("trailing") + b" extra", field="payload"),
        Case("top-level-array", b'[{"event_id": "arr"}]', field="payload"),
        Case("top-level-string", b'"just a string"', field="payload"),
        Case("top-level-number", b"42", field="payload"),
        Case("top-level-null", b"null", field="payload"),
        Case("nested-100k-deep", b"[" * 100_000 + b"]" * 100_000, field="payload"),
        Case("nul-outside-strings", b'{"event_id": "nul"\x00}', field="payload"),
        Case("ten-megabytes", _obj("huge", note="x" * 10_000_000), row={"event_id": "huge"}),
        _row("nested-extra-500", extra=json.loads("[" * 500 + "]" * 500)),
        _row("bom-prefixed")
        if False
        else Case("bom-prefixed", "\ufeff".encode() + _obj("bom"), row={"event_id": "bom"}),
        _row("unknown-extra-fields", source="retry", attempt=_Raw("3"), meta={"a": [1, None]}),
        # --- repeated keys
        Case(
            "duplicate-amount-key",
            _obj("dupkey").replace(b'"amount": "12.34"', b'"amount": "1", "amount": "2"'),
            field="amount",
        ),
        Case(
            "duplicate-unknown-key",
            _obj("dupextra").replace(b"{", b'{"x": 1, "x": 2, ', 1),
            row={"event_id": "dupextra"},
        ),
        # --- amount
        _bad("amount-boolean", "amount", amount=_Raw("true")),
        _bad("amount-nan", "amount", amount=_Raw("NaN")),
        _bad("amount-infinity", "amount", amount=_Raw("Infinity")),
        _bad("amount-minus-infinity", "amount", amount=_Raw("-Infinity")),
        _bad("amount-1e400", "amount", amount=_Raw("1e400")),
        _bad("amount-thousands-separator", "amount", amount="1,000"),
        _bad("amount-hex", "amount", amount="0x1F"),
        _bad("amount-exponent-string", "amount", amount="1.5e2"),
        _bad("amount-10-fraction-digits", "amount", amount="1.0000000001"),
        _bad("amount-30-integer-digits", "amount", amount="1" * 30),
        _bad("amount-object", "amount", amount={"value": "1"}),
        _row(
            "amount-max",
            amount="99999999999999999999999999999.999999999",
            _expect={"amount": Decimal("99999999999999999999999999999.999999999")},
        ),
        _row(
            "amount-number-trailing-zeros",
            amount=_Raw("10.500"),
            _expect={"amount": Decimal("10.5")},
        ),
        _row("amount-negative-zero", amount="-0", _expect={"amount": Decimal(0)}),
        _row("amount-leading-zeros", amount="007.10", _expect={"amount": Decimal("7.1")}),
        # --- currency and status
        _bad("currency-lowercase", "currency", currency="eur"),
        _bad("currency-four-letters", "currency", currency="EURO"),
        _bad("currency-non-ascii", "currency", currency="ÉUR"),
        _bad("currency-number", "currency", currency=_Raw("978")),
        _bad("status-lowercase", "status", status="posted"),
        _bad("status-unknown", "status", status="SETTLED"),
        # --- event_time
        _bad("time-without-offset", "event_time", event_time="2026-03-01T12:00:00"),
        _bad("time-date-only", "event_time", event_time="2026-03-01"),
        _bad("time-leap-second", "event_time", event_time="2016-12-31T23:59:60Z"),
        _bad("time-february-30", "event_time", event_time="2026-02-30T00:00:00Z"),
        _bad("time-year-zero", "event_time", event_time="0000-01-01T00:00:00Z"),
        _bad("time-far-future", "event_time", event_time="9999-12-31T23:59:59Z"),
        _bad("time-epoch-millis", "event_time", event_time=_Raw("1772366400000")),
        _bad("time-nanoseconds", "event_time", event_time="2026-03-01T12:00:00.123456789Z"),
        _row(
            "time-offset-plus-14",
            event_time="2026-03-02T02:00:00+14:00",
            _expect={"event_time": "2026-03-01T12:00:00Z"},
        ),
        _row(
            "time-year-9000",
            event_time="9000-01-01T00:00:00Z",
            _expect={"event_time": "9000-01-01T00:00:00Z"},
        ),
        _row(
            "time-lowercase-t-z",
            event_time="2026-03-01t12:00:00.5z",
            _expect={"event_time": "2026-03-01T12:00:00.5Z"},
        ),
        # --- ids
        _row("unicode-\u4e2d\u6587-\U0001f600-\u05e2\u05d1"),
        _row("zero-width\u200b-and-combining-e\u0301"),
        _row("'; DROP TABLE transaction_events; --", transaction_id="x' OR '1'='1"),
        _row('quotes-"double"-and-\\backslash\\', account_id="o'brien"),
        _row(long_id),
        Case("id-129-characters", _obj("i" * 129), field="event_id"),
        Case("id-control-character", _obj("ctl\u0001x"), field="event_id"),
        Case("id-lone-surrogate", _obj("lone").replace(b'"lone"', b'"\\ud800"'), field="event_id"),
        Case("id-empty", _obj(""), field="event_id"),
        Case("id-number", _obj("num").replace(b'"num"', b"7"), field="event_id"),
        *contract_cases(),
    ]

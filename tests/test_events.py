"""The event contract: valid input normalises to equal events, every bad-input class is refused
with a reason that names the field."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from decimal import Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from pipeline.events import (
    EPOCH,
    MAX_EVENT_TIME,
    ContractViolation,
    Event,
    EventCoder,
    LedgerCandidate,
    LedgerCandidateCoder,
    format_amount,
    from_micros,
    parse_event,
    parse_rfc3339,
    parse_timestamp,
)
from tests.helpers import event_line, utc
from tests.strategies import events


def test_a_valid_line_becomes_a_normalised_event() -> None:
    event = parse_event(event_line("e1", amount="10.5", event_time="2026-01-01T02:00:00+02:00"))
    assert event == Event(
        "e1", "txn-1", "acct-1", Decimal("10.5"), "USD", "PENDING", utc("2026-01-01T00:00:00Z")
    )
    assert event.event_time.tzinfo == dt.UTC
    assert str(event.amount) == "10.500000000"


@pytest.mark.parametrize(
    ("left", "right"),
    [
        ({"amount": "10.5"}, {"amount": "10.50"}),
        ({"amount": "10.5"}, {"amount": Decimal("10.5")}),  # JSON number
        ({"amount": "-0"}, {"amount": "0.000"}),
        ({"amount": "007"}, {"amount": "7"}),
        ({"event_time": "2026-01-01T02:00:00+02:00"}, {"event_time": "2026-01-01T00:00:00Z"}),
        ({"event_time": "2026-01-01T00:00:00.500Z"}, {"event_time": "2026-01-01t00:00:00.5z"}),
        (
            {"event_time": "2026-01-01T00:00:00.123456000Z"},
            {"event_time": "2026-01-01T00:00:00.123456Z"},
        ),
        ({}, {"unknown_field": {"nested": [1, 2]}, "note": None}),
    ],
)
def test_equal_after_normalisation(left: dict[str, object], right: dict[str, object]) -> None:
    a = parse_event(event_line("e1", **left))  # type: ignore[arg-type]
    b = parse_event(event_line("e1", **right))  # type: ignore[arg-type]
    assert a == b
    assert hash(a) == hash(b)
    assert a.to_json() == b.to_json()


def test_different_contract_fields_are_different_versions() -> None:
    a = parse_event(event_line("e1", amount="10.00"))
    b = parse_event(event_line("e1", amount="10.01", status="POSTED"))
    assert a != b
    assert a.differing_fields(b) == ["amount", "status"]


def test_amounts_never_pass_through_float() -> None:
    # 0.1 + 0.2 style values and 29-digit integers survive exactly, as strings and as numbers.
    big = "12345678901234567890123456789.123456789"
    assert format_amount(parse_event(event_line("e", amount=big)).amount) == big
    assert format_amount(parse_event(event_line("e", amount=Decimal(big))).amount) == big
    assert parse_event(event_line("e", amount=Decimal("0.1"))).amount == Decimal("0.1")


def _raw(**fields: object) -> bytes:
    base: dict[str, object] = json.loads(event_line("e1"))
    for key, value in fields.items():
        if value is _MISSING:
            base.pop(key)
        else:
            base[key] = value
    return json.dumps(base).encode()


_MISSING = object()

BAD_INPUT = [
    # (raw bytes, field named by the reason, words expected in the reason)
    (b"", "payload", "empty"),
    (b"   ", "payload", "empty"),
    (b"\xff\xfe{}", "payload", "UTF-8"),
    (b"not json", "payload", "not JSON"),
    (b'{"event_id": "e1",', "payload", "not JSON"),
    (b"[1, 2]", "payload", "array"),
    (b'"a string"', "payload", "string"),
    (b"42", "payload", "number"),
    (b"null", "payload", "null"),
    (b"[" * 100_000 + b"]" * 100_000, "payload", "nested too deeply"),
    (_raw(event_id=_MISSING), "event_id", "missing"),
    (_raw(event_id=None), "event_id", "null"),
    (_raw(event_id=7), "event_id", "must be a string"),
    (_raw(event_id=""), "event_id", "length 0"),
    (_raw(event_id="x" * 129), "event_id", "length 129"),
    (_raw(event_id="a\u0000b"), "event_id", "control character"),
    (b'{"event_id": "\\ud800", "transaction_id": "t"}', "event_id", "surrogate"),
    (_raw(transaction_id=["t"]), "transaction_id", "must be a string"),
    (_raw(account_id={"id": 1}), "account_id", "must be a string"),
    (_raw(amount=True), "amount", "boolean"),
    (_raw(amount="1,000.00"), "amount", "plain decimal"),
    (_raw(amount="0x1F"), "amount", "plain decimal"),
    (_raw(amount="1e3"), "amount", "plain decimal"),
    (_raw(amount=".5"), "amount", "plain decimal"),
    (_raw(amount="+5"), "amount", "plain decimal"),
    (_raw(amount="١٢"), "amount", "plain decimal"),  # Arabic-Indic digits are not [0-9]
    (_raw(amount="NaN"), "amount", "plain decimal"),
    (event_line("e1", amount=Decimal("NaN")), "amount", "NaN is not a finite"),
    (event_line("e1", amount=Decimal("-Infinity")), "amount", "-Infinity is not a finite"),
    (event_line("e1", amount=Decimal("1e400")), "amount", "plain decimal"),
    (_raw(amount="1.0000000001"), "amount", "10 fraction digits"),
    (_raw(amount="1" * 30), "amount", "29 integer digits"),
    (_raw(currency="usd"), "currency", "does not match [A-Z]{3}"),
    (_raw(currency="EURO"), "currency", "length 4 is outside 1..3"),
    (_raw(currency="ÄBC"), "currency", "does not match [A-Z]{3}"),
    (_raw(status="posted"), "status", "PENDING, POSTED, REVERSED"),
    (_raw(event_time="2026-01-01T00:00:00"), "event_time", "RFC 3339"),
    (_raw(event_time="2026-01-01 00:00:00Z"), "event_time", "RFC 3339"),
    (_raw(event_time="2026-02-30T00:00:00Z"), "event_time", "not a valid date-time"),
    (_raw(event_time="0000-01-01T00:00:00Z"), "event_time", "not a valid date-time"),
    (_raw(event_time="0001-01-01T00:30:00+01:00"), "event_time", "not a valid date-time"),
    (_raw(event_time="2016-12-31T23:59:60Z"), "event_time", "leap second"),
    (_raw(event_time="2026-01-01T00:00:00+24:00"), "event_time", "not a valid date-time"),
    (_raw(event_time="9999-12-31T12:00:00Z"), "event_time", "is after"),
    (_raw(event_time="2026-01-01T00:00:00.1234567Z"), "event_time", "finer than microseconds"),
    (_raw(event_time=1767225600), "event_time", "must be a string"),
    (b'{"event_id": "e1", "event_id": "e2"}', "event_id", "more than once"),
]


@pytest.mark.parametrize(("raw", "field", "words"), BAD_INPUT)
def test_bad_input_is_refused_naming_the_field(raw: bytes, field: str, words: str) -> None:
    with pytest.raises(ContractViolation) as caught:
        parse_event(raw)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")
    assert words in str(caught.value)


def test_repeated_unknown_keys_are_ignored() -> None:
    raw = event_line("e1").replace(b"{", b'{"x": 1, "x": 2, ', 1)
    assert parse_event(raw).event_id == "e1"


def test_sql_looking_and_unicode_ids_are_kept_verbatim() -> None:
    event_id = "'; DROP TABLE transaction_events; -- \u00e9\u4e2d\U0001f600"
    assert parse_event(event_line(event_id)).event_id == event_id


@given(events)
def test_event_coder_round_trips_exactly(event: Event) -> None:
    coder = EventCoder()
    decoded = coder.decode(coder.encode(event))
    assert decoded == event and type(decoded) is Event  # a plain tuple would compare equal
    assert coder.encode(event) == coder.encode(coder.decode(coder.encode(event)))


@given(events, st.booleans())
def test_candidate_coder_round_trips_exactly(event: Event, primary: bool) -> None:
    candidate = LedgerCandidate(event, primary, event.event_time, event.event_time)
    coder = LedgerCandidateCoder()
    decoded = coder.decode(coder.encode(candidate))
    assert decoded == candidate
    assert (type(decoded), type(decoded.event)) == (LedgerCandidate, Event)


_EPOCH_EVENT = Event("e", "t", "a", Decimal("1.000000000"), "USD", "POSTED", EPOCH)


@given(events, st.booleans(), st.none() | st.datetimes(timezones=st.just(dt.UTC)))
@example(_EPOCH_EVENT, True, None)  # the smallest var-ints
@example(_EPOCH_EVENT._replace(event_time=dt.datetime(1900, 1, 1, tzinfo=dt.UTC)), False, EPOCH)
@example(_EPOCH_EVENT._replace(event_id="\U0001f4b6" * 128), True, MAX_EVENT_TIME)
@example(_EPOCH_EVENT._replace(event_time=from_micros(2**49 - 1)), True, from_micros(2**56))
def test_coders_estimate_sizes_within_a_few_bytes(
    event: Event, primary: bool, source: dt.datetime | None
) -> None:
    """The cheap size estimates Beam samples for its metrics are the encoding's size, at any
    time (var-ints of 1 to 10 bytes) and any text length."""
    candidate = LedgerCandidate(event, primary, event.event_time, event.event_time, source)
    for coder, value in ((EventCoder(), event), (LedgerCandidateCoder(), candidate)):
        assert coder.estimate_size(value) == len(coder.encode(value))


def _outcome(parse: Callable[[str, str], dt.datetime], text: str) -> dt.datetime | str:
    try:
        return parse(text, "event_time")
    except ContractViolation as violation:
        return str(violation)


@given(
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59)),
    st.integers(min_value=0, max_value=6),
)
def test_the_fast_utc_path_agrees_with_the_general_one(moment: dt.datetime, digits: int) -> None:
    """The common shape (UTC "Z", up to microseconds) takes datetime.fromisoformat; every value
    must come out exactly as the general RFC 3339 path makes it, refusals included."""
    fraction = f".{moment.microsecond:06d}"[: digits + 1] if digits else ""
    text = (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
        f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}{fraction}Z"
    )
    assert _outcome(parse_timestamp, text) == _outcome(parse_rfc3339, text)


@pytest.mark.parametrize(
    "text",
    [
        "2026-02-30T00:00:00Z",
        "2024-02-29T23:59:59.999999Z",
        "0000-01-01T00:00:00Z",
        "9999-12-30T23:59:59.999999Z",
        "9999-12-31T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-01-01T24:00:00Z",
    ],
)
def test_the_fast_utc_path_refuses_what_the_general_one_refuses(text: str) -> None:
    assert _outcome(parse_timestamp, text) == _outcome(parse_rfc3339, text)

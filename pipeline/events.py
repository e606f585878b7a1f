"""The event contract: what a transaction event is, and how raw input becomes one.

Everything downstream relies on one property established here: two events are equal (``==``,
``hash``) exactly when their contract fields are equal after normalisation. Amounts are
``Decimal`` quantised to the warehouse scale of 9 fraction digits, so ``10.5`` and ``"10.50"``
are the same value; event times are UTC ``datetime`` objects, so ``02:00+02:00`` and ``00:00Z``
are the same instant. Dedup compares events with ``==``; nothing ever goes through ``float``.

Input that breaks the contract raises :class:`ContractViolation`, whose ``field`` names the
offending field (or ``payload`` when the whole record is unusable); the parse step turns it into
a dead letter. Fields outside the contract are ignored.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.coders import FastPrimitivesCoder

# Warehouse money type is DECIMAL(38, 9) / BigQuery NUMERIC: 29 integer and 9 fraction digits.
AMOUNT_SCALE = 9
AMOUNT_INTEGER_DIGITS = 29
_QUANTUM = Decimal(1).scaleb(-AMOUNT_SCALE)
# Python's default decimal context keeps 28 digits and rounds silently. Money needs 38 digits
# and must never round: this context is wide enough for any sum of NUMERIC values the tools
# compute, and traps (raises on) any rounding instead of hiding it.
MONEY_CONTEXT = Context(prec=100, traps=[InvalidOperation, Inexact, Rounded, Overflow])
# Every NUMERIC(38, 9) value is below this in absolute value.
NUMERIC_LIMIT = Decimal(10) ** AMOUNT_INTEGER_DIGITS

MAX_ID_LENGTH = 128
STATUSES = ("PENDING", "POSTED", "REVERSED")
CONTRACT_FIELDS = (
    "event_id",
    "transaction_id",
    "account_id",
    "amount",
    "currency",
    "status",
    "event_time",
)
ID_FIELDS = ("event_id", "transaction_id", "account_id")

# The last instant an event may carry. BigQuery TIMESTAMP ends at 9999-12-31T23:59:59.999999Z;
# keeping a day of margin guarantees that the end of any window (at most one day long, see
# options.py) is still a valid warehouse timestamp.
MAX_EVENT_TIME = dt.datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=dt.UTC)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

# Unicode categories Cc (control characters) and Cs (surrogates, which JSON's \\u escapes can
# produce unpaired and which no warehouse can store): one regex instead of a per-character loop.
_FORBIDDEN_IN_IDS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_CURRENCY = re.compile(r"[A-Z]{3}")
_RFC3339 = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})[Tt]"
    r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
    r"(?:\.(?P<fraction>[0-9]+))?"
    r"(?P<offset>[Zz]|[+-][0-9]{2}:[0-9]{2})"
)
# The shape producers almost always send (UTC, "Z", at most microseconds, no leap second), which
# datetime.fromisoformat parses exactly, in C: a third of the cost of the general path below,
# which every other valid or invalid value still takes (tests check that both agree).
_RFC3339_UTC_MICROS = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-5][0-9](?:\.[0-9]{1,6})?Z"
)


class ContractViolation(ValueError):
    """Raised when input breaks the event contract; ``field`` names what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class Event(NamedTuple):
    """A transaction event that satisfies the contract, in normalised form."""

    event_id: str
    transaction_id: str
    account_id: str
    amount: Decimal
    currency: str
    status: str
    event_time: dt.datetime

    def to_json(self) -> str:
        """Canonical JSON: equal events give equal text (used for conflict dead letters)."""
        return json.dumps(
            {
                "event_id": self.event_id,
                "transaction_id": self.transaction_id,
                "account_id": self.account_id,
                "amount": format_amount(self.amount),
                "currency": self.currency,
                "status": self.status,
                "event_time": format_timestamp(self.event_time),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )

    def differing_fields(self, other: Event) -> list[str]:
        """Names of the contract fields in which two versions of an event differ."""
        return [name for name in CONTRACT_FIELDS if getattr(self, name) != getattr(other, name)]


def format_amount(amount: Decimal) -> str:
    """Plain notation, never exponent notation, with the warehouse scale."""
    return f"{amount.quantize(_QUANTUM, context=MONEY_CONTEXT):f}"


def format_timestamp(value: dt.datetime) -> str:
    """RFC 3339 in UTC with microseconds, e.g. ``2026-01-01T00:00:00.000000Z``."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_ONE_MICROSECOND = dt.timedelta(microseconds=1)


def to_micros(value: dt.datetime) -> int:
    """Microseconds since the epoch, exact (no float on the way)."""
    return (value - EPOCH) // _ONE_MICROSECOND


# ``version_order`` as SQL's ORDER BY columns, for the warehouses that choose in SQL.
VERSION_ORDER_SQL = "event_time, transaction_id, account_id, amount, currency, status"


def version_order(event: Event) -> tuple[int, str, str, Decimal, str, str]:
    """The order in which one of several versions of an event is chosen: the earliest event
    time, then the smallest field by field. Both warehouses' SQL sorts by the same columns
    (``ORDER BY event_time, transaction_id, account_id, amount, currency, status``), so the
    dedup step and every warehouse choose the same version."""
    return (
        to_micros(event.event_time),
        event.transaction_id,
        event.account_id,
        event.amount,
        event.currency,
        event.status,
    )


def from_micros(micros: int) -> dt.datetime:
    # Positional (days, seconds, microseconds): exact for ints, and twice as fast as the keyword
    # form on this hot path (every decoded event).
    return EPOCH + dt.timedelta(0, 0, micros)


# Beam's fast coder writes a tuple as a type tag and its length, then each field: a string as a
# tag, its UTF-8 length and bytes; an int as a tag and a var-int; a bool as a tag and a byte; None
# as a tag. The estimates below count exactly that.
_TUPLE_HEADER = 2
_INT_TAG = 1
_BOOL_BYTES = 2
_NONE_BYTES = 1


def _varint_bytes(value: int) -> int:
    """Bytes of Beam's var-int of ``value``: 7 bits a byte; a negative int64 (a time before
    1970) is written as its unsigned 64-bit value, which takes 10."""
    return 10 if value < 0 else max(1, (value.bit_length() + 6) // 7)


def _text_bytes(text: str) -> int:
    size = len(text) if text.isascii() else len(text.encode())
    return size + (2 if size < 128 else 1 + _varint_bytes(size))


def _time_bytes(value: dt.datetime) -> int:
    # Times from late 1987 to 2254 all take 8 var-int bytes: compared, not converted, on this
    # path that Beam takes for every row of a sampled group.
    if _EIGHT_BYTE_TIMES_FROM <= value < _EIGHT_BYTE_TIMES_UNTIL:
        return _INT_TAG + 8
    return _INT_TAG + _varint_bytes(to_micros(value))


_EIGHT_BYTE_TIMES_FROM = from_micros(1 << 49)
_EIGHT_BYTE_TIMES_UNTIL = from_micros(1 << 56)


def _estimated_event_size(value: Event) -> int:
    return (
        _TUPLE_HEADER
        + _text_bytes(value.event_id)
        + _text_bytes(value.transaction_id)
        + _text_bytes(value.account_id)
        + _text_bytes(str(value.amount))
        + _text_bytes(value.currency)
        + _text_bytes(value.status)
        + _time_bytes(value.event_time)
    )


_EventFields = tuple[str, str, str, str, str, str, int]


def _event_fields(value: Event) -> _EventFields:
    return (
        value.event_id,
        value.transaction_id,
        value.account_id,
        # str() round-trips a Decimal exactly (value and exponent); amounts are already
        # quantised at parse, so no formatting work is needed on this hot path.
        str(value.amount),
        value.currency,
        value.status,
        to_micros(value.event_time),
    )


# Beam's compiled coder itself, not the Python-level Coder object around it (one call less per
# field tuple, on every element of every shuffle).
_PRIMITIVES = FastPrimitivesCoder().get_impl()
# A named tuple built by tuple.__new__, as its own _make does, skips the Python-level __new__ of
# the class; the decoders below always pass every field.
_new_tuple = tuple.__new__


def _event_from_fields(fields: Sequence[Any]) -> Event:
    """An event from the first seven of ``fields`` (as :func:`_event_fields` made them)."""
    return _new_tuple(
        Event,
        (
            fields[0],
            fields[1],
            fields[2],
            Decimal(fields[3]),
            fields[4],
            fields[5],
            from_micros(fields[6]),
        ),
    )


class EventCoder(beam.coders.Coder):
    """Deterministic, compact coder for :class:`Event`.

    Without it Beam would pickle every event between stages. Encoding the fields as primitives
    (amount as its canonical string, time as integer microseconds) is both faster and exact.
    """

    def encode(self, value: Event) -> bytes:
        return _PRIMITIVES.encode(_event_fields(value))

    def estimate_size(self, value: Event) -> int:
        # Beam samples element sizes for its metrics (and Dataflow for its sizing); the default
        # estimate encodes the whole event, a measurable share of a batch run (BENCHMARKS.md).
        # Counting the encoding's bytes is cheaper and exact.
        return _estimated_event_size(value)

    def decode(self, encoded: bytes) -> Event:
        return _event_from_fields(_PRIMITIVES.decode(encoded))

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> type:
        return Event


beam.coders.registry.register_coder(Event, EventCoder)


# --- parsing -------------------------------------------------------------------------------------


class _JsonNumber(str):
    """The literal text of a JSON number, kept so amounts never pass through float."""


class _NonFinite(str):
    """NaN / Infinity / -Infinity, which Python's json accepts but JSON does not."""


class _DuplicateKeys(dict[str, Any]):
    duplicates: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Python keeps the last of repeated keys; other parsers keep the first. An event whose
    # contract fields are ambiguous must not be guessed at, so repeated keys are remembered.
    obj = _DuplicateKeys(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        repeated: list[str] = []
        for key, _ in pairs:
            if key in seen:
                repeated.append(key)
            seen.add(key)
        obj.duplicates = tuple(repeated)
    return obj


_DECODER = json.JSONDecoder(
    parse_float=_JsonNumber,
    parse_int=_JsonNumber,
    parse_constant=_NonFinite,
    object_pairs_hook=_object_pairs,
)


def decode_payload(payload: bytes) -> Mapping[str, Any]:
    """Bytes to a JSON object, or :class:`ContractViolation` naming ``payload``."""
    if not payload.strip():
        raise ContractViolation("payload", "empty")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ContractViolation("payload", f"not UTF-8 (byte {error.start})") from None
    try:
        value = _DECODER.decode(text.lstrip("\ufeff"))
    except RecursionError:
        raise ContractViolation("payload", "JSON nested too deeply") from None
    except json.JSONDecodeError as error:
        raise ContractViolation("payload", f"not JSON ({error.msg} at {error.pos})") from None
    if not isinstance(value, dict):
        raise ContractViolation("payload", f"not a JSON object but {_json_type(value)}")
    return value


def parse_event(payload: bytes) -> Event:
    """Validate one raw record against the contract and return the normalised event."""
    obj = decode_payload(payload)
    for name in getattr(obj, "duplicates", ()):
        if name in CONTRACT_FIELDS:
            raise ContractViolation(name, "appears more than once in the object")
    ids = [_parse_id(obj, name) for name in ID_FIELDS]
    return Event(
        ids[0],
        ids[1],
        ids[2],
        _parse_amount(_require(obj, "amount")),
        _parse_currency(_require(obj, "currency")),
        _parse_status(_require(obj, "status")),
        parse_timestamp(_require(obj, "event_time"), "event_time"),
    )


def _json_type(value: object) -> str:
    if isinstance(value, _NonFinite):
        return f"the non-JSON constant {value}"
    kinds: tuple[tuple[type | None, str], ...] = (
        (type(None), "null"),
        (bool, "a boolean"),
        (_JsonNumber, "a number"),
        (str, "a string"),
        (list, "an array"),
    )
    return next((name for kind, name in kinds if isinstance(value, kind or ())), "an object")


def _require(obj: Mapping[str, Any], name: str) -> Any:
    if name not in obj:
        raise ContractViolation(name, "missing")
    value = obj[name]
    if value is None:
        raise ContractViolation(name, "null")
    return value


def _require_string(obj_value: Any, name: str) -> str:
    if not isinstance(obj_value, str) or isinstance(obj_value, _JsonNumber | _NonFinite):
        raise ContractViolation(name, f"must be a string, got {_json_type(obj_value)}")
    return obj_value


def _parse_id(obj: Mapping[str, Any], name: str) -> str:
    value = _require_string(_require(obj, name), name)
    if not 1 <= len(value) <= MAX_ID_LENGTH:
        raise ContractViolation(name, f"length {len(value)} is outside 1..{MAX_ID_LENGTH}")
    bad = _FORBIDDEN_IN_IDS.search(value)
    if bad:
        char = bad.group()
        if unicodedata.category(char) == "Cs":
            raise ContractViolation(name, "contains an unpaired surrogate (not valid Unicode)")
        raise ContractViolation(name, f"contains the control character U+{ord(char):04X}")
    return value


def _parse_amount(value: Any) -> Decimal:
    if isinstance(value, _NonFinite):
        raise ContractViolation("amount", f"{value} is not a finite decimal")
    if isinstance(value, bool) or not isinstance(value, str):
        raise ContractViolation("amount", f"must be a string or number, got {_json_type(value)}")
    if not _PLAIN_DECIMAL.fullmatch(value):
        raise ContractViolation("amount", f"{_clip(value)!r} is not a plain decimal")
    _, _, fraction = value.partition(".")
    if len(fraction) > AMOUNT_SCALE:
        raise ContractViolation(
            "amount", f"{len(fraction)} fraction digits, at most {AMOUNT_SCALE} allowed"
        )
    try:
        amount = Decimal(value)
    except InvalidOperation:  # unreachable after the regex; kept as a guard, not a crash
        raise ContractViolation("amount", f"{_clip(value)!r} is not a decimal") from None
    if amount.copy_abs() >= NUMERIC_LIMIT:  # copy_abs: abs() would round to 28 digits
        raise ContractViolation("amount", f"more than {AMOUNT_INTEGER_DIGITS} integer digits")
    # Quantising to the warehouse scale is exact here (at most 9 fraction digits) and gives equal
    # values one representation: 10.5 and 10.50 both become 10.500000000.
    return MONEY_CONTEXT.add(amount.quantize(_QUANTUM, context=MONEY_CONTEXT), 0)  # -0 -> 0


def _parse_currency(value: Any) -> str:
    value = _require_string(value, "currency")
    if not _CURRENCY.fullmatch(value):
        raise ContractViolation("currency", f"{_clip(value)!r} is not three uppercase letters")
    return value


def _parse_status(value: Any) -> str:
    value = _require_string(value, "status")
    if value not in STATUSES:
        raise ContractViolation("status", f"{_clip(value)!r} is not one of {', '.join(STATUSES)}")
    return value


def parse_timestamp(value: Any, name: str) -> dt.datetime:
    """RFC 3339 date-time with an offset, to an aware UTC datetime (microsecond precision)."""
    value = _require_string(value, name)
    if _RFC3339_UTC_MICROS.fullmatch(value):
        try:
            utc = dt.datetime.fromisoformat(value)
        except ValueError:
            pass  # e.g. February 30: the general path below names the problem
        else:
            if utc <= MAX_EVENT_TIME:
                return utc
    return _parse_rfc3339(value, name)


def _parse_rfc3339(value: str, name: str) -> dt.datetime:
    """parse_timestamp's general path: every RFC 3339 shape, and the reason a value is refused."""
    match = _RFC3339.fullmatch(value)
    if not match:
        raise ContractViolation(name, f"{_clip(value)!r} is not an RFC 3339 date-time with offset")
    parts = match.groupdict()
    fraction = parts["fraction"] or ""
    if fraction[6:].strip("0"):
        raise ContractViolation(name, "has precision finer than microseconds")
    if parts["second"] == "60":
        raise ContractViolation(name, "leap seconds cannot be represented in UTC timestamps")
    offset = parts["offset"].upper()
    try:
        if offset == "Z":
            tz = dt.UTC
        else:
            hours, minutes = int(offset[1:3]), int(offset[4:6])
            if hours > 23 or minutes > 59:
                raise ValueError("offset out of range")
            sign = -1 if offset[0] == "-" else 1
            tz = dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))
        local = dt.datetime(
            int(parts["year"]),
            int(parts["month"]),
            int(parts["day"]),
            int(parts["hour"]),
            int(parts["minute"]),
            int(parts["second"]),
            int(fraction[:6].ljust(6, "0")),
            tzinfo=tz,
        )
        utc = local.astimezone(dt.UTC)
    except (ValueError, OverflowError) as error:
        raise ContractViolation(
            name, f"{_clip(value)!r} is not a valid date-time ({error})"
        ) from None
    if utc > MAX_EVENT_TIME:
        raise ContractViolation(name, f"is after {format_timestamp(MAX_EVENT_TIME)}")
    return utc


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# --- what the pipeline hands to the warehouse ----------------------------------------------------


class LedgerCandidate(NamedTuple):
    """One version of an event on its way to the ledger, with its event-time window.

    ``primary`` is the dedup step's verdict: True for the version it chose for this event_id
    (the first one seen, or in bounded runs the earliest), False for a *different* version of an
    event_id it has already seen. The warehouse has the last word: whatever version its ledger
    already holds wins, and every other version becomes a conflict dead letter there.
    ``source_time`` is when the source delivered it (the Pub/Sub publish time), used to track
    how far the input is safely committed; for file input it is the event time.
    """

    event: Event
    primary: bool
    window_start: dt.datetime
    window_end: dt.datetime
    source_time: dt.datetime | None = None


@functools.lru_cache(maxsize=4096)
def window_bound(micros: int) -> dt.datetime:
    """A window bound as a datetime: :func:`from_micros`, cached, since bounds repeat across
    many candidates (one per window, not per event)."""
    return from_micros(micros)


class LedgerCandidateCoder(beam.coders.Coder):
    """The event's fields, the verdict and three times as one tuple of primitives (one pass of
    Beam's fast coder, not a nested encoding)."""

    _event = EventCoder()

    def encode(self, value: LedgerCandidate) -> bytes:
        fields = _event_fields(value.event)
        source = value.source_time
        if source is None:
            source_micros = None
        elif source is value.event.event_time:  # file input: the source time is the event time
            source_micros = fields[-1]
        else:
            source_micros = to_micros(source)
        return _PRIMITIVES.encode(
            (
                *fields,
                value.primary,
                to_micros(value.window_start),
                to_micros(value.window_end),
                source_micros,
            )
        )

    def estimate_size(self, value: LedgerCandidate) -> int:
        # The event's fields, the flag and three times, in one tuple (see EventCoder's).
        source = value.source_time
        return (
            _estimated_event_size(value.event)
            + _BOOL_BYTES
            + _time_bytes(value.window_start)
            + _time_bytes(value.window_end)
            + (_NONE_BYTES if source is None else _time_bytes(source))
        )

    def decode(self, encoded: bytes) -> LedgerCandidate:
        fields = _PRIMITIVES.decode(encoded)  # the event's seven, then the four below
        event = _event_from_fields(fields)
        source = fields[10]
        if source is None:
            source_time = None
        elif source == fields[6]:
            source_time = event.event_time
        else:
            source_time = from_micros(source)
        return _new_tuple(
            LedgerCandidate,
            (event, fields[7], window_bound(fields[8]), window_bound(fields[9]), source_time),
        )

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> type:
        return LedgerCandidate


beam.coders.registry.register_coder(LedgerCandidate, LedgerCandidateCoder)

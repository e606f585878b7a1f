"""The kinds of field an event contract may declare (pipeline/contract.py), and for each kind
everything the pipeline does with its values: parse from JSON with an error naming the field,
write canonical JSON, encode for Beam, store in a warehouse column, generate examples.

A kind is a rule, not a type: ``Text(max_length=16, pattern="[A-Z]{3}")`` and ``OneOf("A", "B")``
are both strings. Four kinds cover a transaction domain: :class:`Text`, :class:`Money`,
:class:`OneOf` and :class:`Timestamp`. Each kind is a frozen dataclass, so a contract is plain
data that tests can compare, copy and extend.

Money is exact: ``Decimal`` quantised to the warehouse scale of 9 fraction digits, so ``10.5``
and ``"10.50"`` are the same value; nothing passes through ``float``. Times are UTC ``datetime``
objects with microseconds, so ``02:00+02:00`` and ``00:00Z`` are the same instant.
"""

from __future__ import annotations

import datetime as dt
import random
import re
import unicodedata
from dataclasses import dataclass, field
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Rounded
from typing import Any, ClassVar

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

# The last instant an event may carry. BigQuery TIMESTAMP ends at 9999-12-31T23:59:59.999999Z;
# keeping a day of margin guarantees that the end of any window (at most one day long, see
# options.py) is still a valid warehouse timestamp.
MAX_EVENT_TIME = dt.datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=dt.UTC)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class ContractViolation(ValueError):
    """Raised when input breaks the event contract; ``field`` names what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


# --- values --------------------------------------------------------------------------------------


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


def from_micros(micros: int) -> dt.datetime:
    # Positional (days, seconds, microseconds): exact for ints, and twice as fast as the keyword
    # form on this hot path (every decoded event).
    return EPOCH + dt.timedelta(0, 0, micros)


# --- JSON values as the parser sees them ---------------------------------------------------------


class JsonNumber(str):
    """The literal text of a JSON number, kept so amounts never pass through float."""


class NonFinite(str):
    """NaN / Infinity / -Infinity, which Python's json accepts but JSON does not."""


def json_type(value: object) -> str:
    if isinstance(value, NonFinite):
        return f"the non-JSON constant {value}"
    kinds: tuple[tuple[type | None, str], ...] = (
        (type(None), "null"),
        (bool, "a boolean"),
        (JsonNumber, "a number"),
        (str, "a string"),
        (list, "an array"),
    )
    return next((name for kind, name in kinds if isinstance(value, kind or ())), "an object")


def _require_string(value: Any, name: str) -> str:
    if not isinstance(value, str) or isinstance(value, JsonNumber | NonFinite):
        raise ContractViolation(name, f"must be a string, got {json_type(value)}")
    return value


def clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# --- Beam's fast coder, counted -------------------------------------------------------------------
# Beam's fast coder writes a tuple as a type tag and its length, then each field: a string as a
# tag, its UTF-8 length and bytes; an int as a tag and a var-int; a bool as a tag and a byte; None
# as a tag. The estimates below count exactly that.
INT_TAG = 1
BOOL_BYTES = 2
NONE_BYTES = 1


def varint_bytes(value: int) -> int:
    """Bytes of Beam's var-int of ``value``: 7 bits a byte; a negative int64 (a time before
    1970) is written as its unsigned 64-bit value, which takes 10."""
    return 10 if value < 0 else max(1, (value.bit_length() + 6) // 7)


def text_bytes(text: str) -> int:
    size = len(text) if text.isascii() else len(text.encode())
    return size + (2 if size < 128 else 1 + varint_bytes(size))


def time_bytes(value: dt.datetime) -> int:
    # Times from late 1987 to 2254 all take 8 var-int bytes: compared, not converted, on this
    # path that Beam takes for every row of a sampled group.
    if _EIGHT_BYTE_TIMES_FROM <= value < _EIGHT_BYTE_TIMES_UNTIL:
        return INT_TAG + 8
    return INT_TAG + varint_bytes(to_micros(value))


_EIGHT_BYTE_TIMES_FROM = from_micros(1 << 49)
_EIGHT_BYTE_TIMES_UNTIL = from_micros(1 << 56)


# --- the kinds -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """What every kind provides. ``column_type`` is the warehouse's logical type
    (pipeline/tables.py); ``in_transactions``: the field is copied to the ``transactions`` row
    of the event's transaction (the ledger holds every field)."""

    description: str
    in_transactions: bool = field(default=True, kw_only=True)

    column_type: ClassVar[str]
    python_type: ClassVar[type]

    def parse(self, value: Any, name: str) -> Any:
        """A JSON value (not null) to the field's normalised value, or ContractViolation."""
        raise NotImplementedError

    def to_json(self, value: Any) -> object:
        """The canonical JSON value: equal values give equal text."""
        return value

    def encode(self, value: Any) -> object:
        """A primitive Beam's fast coder writes exactly (``decode`` is its inverse)."""
        return value

    def decode(self, value: Any) -> Any:
        return value

    def encoded_bytes(self, value: Any) -> int:
        return text_bytes(value)

    def example(self, rng: random.Random) -> Any:
        """A valid value, for generated events."""
        raise NotImplementedError


# Unicode categories Cc (control characters) and Cs (surrogates, which JSON's \\u escapes can
# produce unpaired and which no warehouse can store): one regex instead of a per-character loop.
_FORBIDDEN_IN_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True)
class Text(Kind):
    """A string of ``min_length`` to ``max_length`` characters, without control characters or
    unpaired surrogates; with ``pattern``, it must match it whole (and ``examples`` gives values
    that do, for generated events)."""

    min_length: int = 1
    max_length: int = 128
    pattern: str | None = None
    examples: tuple[str, ...] = ()

    column_type: ClassVar[str] = "STRING"
    python_type: ClassVar[type] = str

    def __post_init__(self) -> None:
        if not 0 <= self.min_length <= self.max_length:
            raise ValueError(f"Text lengths {self.min_length}..{self.max_length} are not a range")
        if self.pattern is not None:
            compiled = re.compile(self.pattern)
            if not self.examples or not all(compiled.fullmatch(e) for e in self.examples):
                raise ValueError(f"Text pattern {self.pattern!r} needs examples that match it")

    def parse(self, value: Any, name: str) -> str:
        value = _require_string(value, name)
        if not self.min_length <= len(value) <= self.max_length:
            raise ContractViolation(
                name, f"length {len(value)} is outside {self.min_length}..{self.max_length}"
            )
        bad = _FORBIDDEN_IN_TEXT.search(value)
        if bad:
            char = bad.group()
            if unicodedata.category(char) == "Cs":
                raise ContractViolation(name, "contains an unpaired surrogate (not valid Unicode)")
            raise ContractViolation(name, f"contains the control character U+{ord(char):04X}")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise ContractViolation(name, f"{clip(value)!r} does not match {self.pattern}")
        return value

    def example(self, rng: random.Random) -> str:
        if self.examples:
            return rng.choice(self.examples)
        length = rng.randint(max(self.min_length, 1), min(self.max_length, 24))
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(length))


@dataclass(frozen=True)
class OneOf(Kind):
    """One of the listed strings, exactly."""

    values: tuple[str, ...] = ()

    column_type: ClassVar[str] = "STRING"
    python_type: ClassVar[type] = str

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("OneOf needs values")

    def parse(self, value: Any, name: str) -> str:
        value = _require_string(value, name)
        if value not in self.values:
            raise ContractViolation(name, f"{clip(value)!r} is not one of {', '.join(self.values)}")
        return value

    def example(self, rng: random.Random) -> str:
        return rng.choice(self.values)


_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


@dataclass(frozen=True)
class Money(Kind):
    """An exact decimal of the warehouse's NUMERIC(38, 9): a JSON string or number in plain
    notation, at most 9 fraction digits and 29 integer digits, never a float."""

    column_type: ClassVar[str] = "NUMERIC"
    python_type: ClassVar[type] = Decimal

    def parse(self, value: Any, name: str) -> Decimal:
        if isinstance(value, NonFinite):
            raise ContractViolation(name, f"{value} is not a finite decimal")
        if isinstance(value, bool) or not isinstance(value, str):
            raise ContractViolation(name, f"must be a string or number, got {json_type(value)}")
        if not _PLAIN_DECIMAL.fullmatch(value):
            raise ContractViolation(name, f"{clip(value)!r} is not a plain decimal")
        _, _, fraction = value.partition(".")
        if len(fraction) > AMOUNT_SCALE:
            raise ContractViolation(
                name, f"{len(fraction)} fraction digits, at most {AMOUNT_SCALE} allowed"
            )
        try:
            amount = Decimal(value)
        except InvalidOperation:  # unreachable after the regex; kept as a guard, not a crash
            raise ContractViolation(name, f"{clip(value)!r} is not a decimal") from None
        if amount.copy_abs() >= NUMERIC_LIMIT:  # copy_abs: abs() would round to 28 digits
            raise ContractViolation(name, f"more than {AMOUNT_INTEGER_DIGITS} integer digits")
        # Quantising to the warehouse scale is exact here (at most 9 fraction digits) and gives
        # equal values one representation: 10.5 and 10.50 both become 10.500000000.
        return MONEY_CONTEXT.add(amount.quantize(_QUANTUM, context=MONEY_CONTEXT), 0)  # -0 -> 0

    def to_json(self, value: Decimal) -> str:
        return format_amount(value)

    def encode(self, value: Decimal) -> str:
        # str() round-trips a Decimal exactly (value and exponent); values are already quantised
        # at parse, so no formatting work is needed on this hot path.
        return str(value)

    def decode(self, value: str) -> Decimal:
        return Decimal(value)

    def encoded_bytes(self, value: Decimal) -> int:
        return text_bytes(str(value))

    def example(self, rng: random.Random) -> Decimal:
        return Decimal(rng.randint(1, 5_000_00)).scaleb(-2)


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
    return parse_rfc3339(value, name)


def parse_rfc3339(value: str, name: str) -> dt.datetime:
    """parse_timestamp's general path: every RFC 3339 shape, and the reason a value is refused."""
    match = _RFC3339.fullmatch(value)
    if not match:
        raise ContractViolation(name, f"{clip(value)!r} is not an RFC 3339 date-time with offset")
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
        problem = f"{clip(value)!r} is not a valid date-time ({error})"
        raise ContractViolation(name, problem) from None
    if utc > MAX_EVENT_TIME:
        raise ContractViolation(name, f"is after {format_timestamp(MAX_EVENT_TIME)}")
    return utc


@dataclass(frozen=True)
class Timestamp(Kind):
    """An RFC 3339 date-time with an offset, held in UTC with microseconds."""

    column_type: ClassVar[str] = "TIMESTAMP"
    python_type: ClassVar[type] = dt.datetime

    def parse(self, value: Any, name: str) -> dt.datetime:
        return parse_timestamp(value, name)

    def to_json(self, value: dt.datetime) -> str:
        return format_timestamp(value)

    def encode(self, value: dt.datetime) -> int:
        return to_micros(value)

    def decode(self, value: int) -> dt.datetime:
        return from_micros(value)

    def encoded_bytes(self, value: dt.datetime) -> int:
        return time_bytes(value)

    def example(self, rng: random.Random) -> dt.datetime:
        return dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=rng.randrange(86400))

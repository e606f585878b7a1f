"""Events in the pipeline: raw input parsed against the contract (pipeline/contract.py), the
order in which versions of an event are chosen, and the Beam coders of events and candidates.

Everything downstream relies on one property established here: two events are equal (``==``,
``hash``) exactly when their contract fields are equal after normalisation (see
pipeline/field_kinds.py). Dedup compares events with ``==``; nothing ever goes through ``float``.

Input that breaks the contract raises :class:`ContractViolation`, whose ``field`` names the
offending field (or ``payload`` when the whole record is unusable); the parse step turns it into
a dead letter. Fields outside the contract are ignored.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.coders import FastPrimitivesCoder

from pipeline.contract import CONTRACT_FIELDS, FIELD, FIELDS, TRANSACTION_FIELDS, Event
from pipeline.field_kinds import (
    AMOUNT_INTEGER_DIGITS,
    AMOUNT_SCALE,
    BOOL_BYTES,
    EPOCH,
    MAX_EVENT_TIME,
    MONEY_CONTEXT,
    NONE_BYTES,
    NUMERIC_LIMIT,
    ContractViolation,
    JsonNumber,
    Kind,
    NonFinite,
    format_amount,
    format_timestamp,
    from_micros,
    json_type,
    parse_rfc3339,
    parse_timestamp,
    time_bytes,
    to_micros,
)

__all__ = [
    "AMOUNT_INTEGER_DIGITS",
    "AMOUNT_SCALE",
    "CONTRACT_FIELDS",
    "EPOCH",
    "FIELDS",
    "MAX_EVENT_TIME",
    "MONEY_CONTEXT",
    "NUMERIC_LIMIT",
    "TRANSACTION_FIELDS",
    "ContractViolation",
    "Event",
    "EventCoder",
    "LedgerCandidate",
    "LedgerCandidateCoder",
    "format_amount",
    "format_timestamp",
    "from_micros",
    "parse_event",
    "parse_rfc3339",
    "parse_timestamp",
    "to_micros",
    "version_order",
]

_TUPLE_HEADER = 2


def _order_sql(name: str) -> str:
    return name if FIELD[name].required else f"{name} ASC NULLS LAST"


# The order in which one of several versions of an event is chosen: the earliest event time,
# then the smallest field by field in the contract's order (an absent optional value last). The
# dedup step (``version_order``) and both warehouses' SQL (``VERSION_ORDER_SQL``, ORDER BY
# columns) sort by the same fields, so all of them choose the same version.
_VERSION_ORDER = (
    "event_time",
    *(n for n in CONTRACT_FIELDS if n not in ("event_id", "event_time")),
)
VERSION_ORDER_SQL = ", ".join(_order_sql(name) for name in _VERSION_ORDER)
_ORDER_INDEXES = tuple(CONTRACT_FIELDS.index(name) for name in _VERSION_ORDER)
_OPTIONAL = frozenset(i for i, f in enumerate(FIELDS) if not f.required)


def version_order(event: Event) -> tuple[Any, ...]:
    """The sort key of ``VERSION_ORDER_SQL``: (0, value) sorts before (1,), an absent value."""
    return tuple(
        ((1,) if event[i] is None else (0, event[i])) if i in _OPTIONAL else event[i]
        for i in _ORDER_INDEXES
    )


# Each field's conversion to and from the primitive Beam's fast coder writes exactly (money as
# its canonical string, times as integer microseconds), None (an absent optional value) as None.
# Fields whose value is already a primitive (text) are passed as they are: this runs for every
# element of every shuffle.
def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


def _conversions(method: str) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
    result = []
    for index, f in enumerate(FIELDS):
        convert = getattr(f.kind, method)
        if getattr(type(f.kind), method) is getattr(Kind, method):
            continue  # the identity (text)
        result.append((index, convert if f.required else _optional(convert)))
    return tuple(result)


_ENCODINGS = _conversions("encode")
_DECODINGS = _conversions("decode")
_SIZES = tuple(
    (lambda v, k=f.kind: NONE_BYTES if v is None else k.encoded_bytes(v))
    if not f.required
    else f.kind.encoded_bytes
    for f in FIELDS
)
_WIDTH = len(FIELDS)
_EVENT_TIME = CONTRACT_FIELDS.index("event_time")


def _estimated_event_size(value: Event) -> int:
    return _TUPLE_HEADER + sum(size(v) for size, v in zip(_SIZES, value, strict=True))


def _event_fields(value: Event) -> list[Any]:
    """The event's fields as primitives, in the contract's order."""
    fields = list(value)
    for index, convert in _ENCODINGS:
        fields[index] = convert(fields[index])
    return fields


# Beam's compiled coder itself, not the Python-level Coder object around it (one call less per
# field tuple, on every element of every shuffle).
_PRIMITIVES = FastPrimitivesCoder().get_impl()
# A named tuple built by tuple.__new__, as its own _make does, skips the Python-level __new__ of
# the class; the decoders below always pass every field.
_new_tuple = tuple.__new__


def _event_from_fields(fields: Sequence[Any]) -> Event:
    """An event from the first ``_WIDTH`` of ``fields`` (as :func:`_event_fields` made them)."""
    values = list(fields[:_WIDTH])
    for index, convert in _DECODINGS:
        values[index] = convert(values[index])
    return _new_tuple(Event, values)


class EventCoder(beam.coders.Coder):
    """Deterministic, compact coder for :class:`Event`.

    Without it Beam would pickle every event between stages. Encoding the fields as primitives
    (amount as its canonical string, time as integer microseconds) is both faster and exact.
    The fields are written in the contract's order, derived from it: a field added to the
    contract is encoded with the others (pipelines are updated by drain and replace, docs/
    CONTRACT.md, so no encoding of another contract is ever decoded).
    """

    def encode(self, value: Event) -> bytes:
        return _PRIMITIVES.encode(tuple(_event_fields(value)))

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
    parse_float=JsonNumber,
    parse_int=JsonNumber,
    parse_constant=NonFinite,
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
        raise ContractViolation("payload", f"not a JSON object but {json_type(value)}")
    return value


_PARSERS = tuple((f.name, f.kind.parse, f.required) for f in FIELDS)


def parse_event(payload: bytes) -> Event:
    """Validate one raw record against the contract and return the normalised event. Fields are
    checked in the contract's order; the first one broken is named. An optional field may be
    absent or null."""
    obj = decode_payload(payload)
    for name in getattr(obj, "duplicates", ()):
        if name in CONTRACT_FIELDS:
            raise ContractViolation(name, "appears more than once in the object")
    values: list[Any] = []
    for name, parse, required in _PARSERS:
        value = obj.get(name)
        if value is None:
            if required:
                raise ContractViolation(name, "missing" if name not in obj else "null")
            values.append(None)
        else:
            values.append(parse(value, name))
    return _new_tuple(Event, values)


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


# The candidate's encoding: the event's fields, then these, at offsets named here so that a
# field added to the contract moves them all (nothing is read at a fixed position).
_PRIMARY, _WINDOW_START, _WINDOW_END, _SOURCE = range(_WIDTH, _WIDTH + 4)


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
            source_micros = fields[_EVENT_TIME]
        else:
            source_micros = to_micros(source)
        fields += (
            value.primary,
            to_micros(value.window_start),
            to_micros(value.window_end),
            source_micros,
        )
        return _PRIMITIVES.encode(tuple(fields))

    def estimate_size(self, value: LedgerCandidate) -> int:
        # The event's fields, the flag and three times, in one tuple (see EventCoder's).
        source = value.source_time
        return (
            _estimated_event_size(value.event)
            + BOOL_BYTES
            + time_bytes(value.window_start)
            + time_bytes(value.window_end)
            + (NONE_BYTES if source is None else time_bytes(source))
        )

    def decode(self, encoded: bytes) -> LedgerCandidate:
        fields = _PRIMITIVES.decode(encoded)
        event = _event_from_fields(fields)
        source = fields[_SOURCE]
        if source is None:
            source_time = None
        elif source == fields[_EVENT_TIME]:
            source_time = event.event_time
        else:
            source_time = from_micros(source)
        return _new_tuple(
            LedgerCandidate,
            (
                event,
                fields[_PRIMARY],
                window_bound(fields[_WINDOW_START]),
                window_bound(fields[_WINDOW_END]),
                source_time,
            ),
        )

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self) -> type:
        return LedgerCandidate


beam.coders.registry.register_coder(LedgerCandidate, LedgerCandidateCoder)

"""The event contract, declared once: the fields of an event, their kind and rules.

To adapt the template to your events, edit the fields of :class:`Event` below and run
``make contract`` (docs/CONTRACT.md). Everything else is derived from this class: parsing and
its field-naming errors, the canonical JSON of a version, the Beam coders, the tables' columns,
both warehouses' SQL, the BigQuery JSON schemas Terraform reads, the event generator and the
tests' strategies.

A field is ``name: Annotated[type, Kind(...)]``, its kind one of pipeline/field_kinds.py
(``Text``, ``Money``, ``OneOf``, ``Timestamp``). A required field's type is the kind's Python type;
an optional field's is ``type | None`` with ``= None``, after the required ones. Optional fields
may be added to a running deployment: their columns are added to existing tables at start-up and
events from before the change still land. Anything else (a new required field, a removed field,
a changed kind) needs a migration, and the pipeline refuses to start on a warehouse that does not
have it yet, saying what to do.

The pipeline's semantics rest on six fields, which must stay with these names and kinds:
``event_id`` (the idempotency key), ``transaction_id`` and ``account_id`` (the keys of
``transactions`` and the totals), ``amount`` (summed), ``currency`` (totals are per currency) and
``event_time`` (windows, and the order of versions).
"""

from __future__ import annotations

import datetime as dt
import json
import types
import typing
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, NamedTuple

from pipeline.field_kinds import Kind, Money, OneOf, Text, Timestamp


class Event(NamedTuple):
    """A transaction event that satisfies the contract, in normalised form. Two events are equal
    (``==``, ``hash``) exactly when their fields are equal after normalisation."""

    event_id: Annotated[str, Text("Idempotency key: one row per event, never updated.")]
    transaction_id: Annotated[str, Text("Business transaction the event belongs to.")]
    account_id: Annotated[str, Text("Account the amount is booked on.")]
    amount: Annotated[Decimal, Money("Exact amount, NUMERIC(38, 9); never a float.")]
    currency: Annotated[
        str,
        Text(
            "ISO 4217 code, three uppercase letters.",
            max_length=3,
            pattern="[A-Z]{3}",
            examples=("USD", "EUR", "GBP", "JPY", "CHF"),
        ),
    ]
    status: Annotated[str, OneOf("PENDING, POSTED or REVERSED.", ("PENDING", "POSTED", "REVERSED"))]
    event_time: Annotated[dt.datetime, Timestamp("When the event happened, UTC.")]

    # --- nothing below needs editing: the methods read the fields above --------------------------

    def json_fields(self) -> dict[str, object]:
        """The canonical JSON value of each field. An optional field without a value is left
        out, so an event from before the field was added keeps its text."""
        return {
            f.name: f.kind.to_json(value)
            for f, value in zip(FIELDS, self, strict=True)
            if value is not None
        }

    def to_json(self) -> str:
        """Canonical JSON: equal events give equal text (the identity of a version in dead
        letters)."""
        return json.dumps(self.json_fields(), ensure_ascii=False, separators=(",", ":"))

    def differing_fields(self, other: Event) -> list[str]:
        """Names of the contract fields in which two versions of an event differ."""
        return [f.name for f, a, b in zip(FIELDS, self, other, strict=True) if a != b]


@dataclass(frozen=True)
class Field:
    """One field of the contract, as the rest of the pipeline reads it."""

    name: str
    kind: Kind
    required: bool

    @property
    def in_transactions(self) -> bool:
        return self.kind.in_transactions


def fields_of(event_class: type) -> tuple[Field, ...]:
    """The declared fields of an event class, checked: each annotated with one kind whose Python
    type it has, optional exactly when ``| None`` with a default of None."""
    hints = typing.get_type_hints(event_class, include_extras=True)
    defaults = getattr(event_class, "_field_defaults", {})
    result = []
    for name in event_class._fields:  # type: ignore[attr-defined]
        hint = hints[name]
        kinds = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Kind)]
        if typing.get_origin(hint) is not Annotated or len(kinds) != 1:
            raise TypeError(f"{name}: annotate it as Annotated[type, Kind(...)]")
        kind = kinds[0]
        base = typing.get_args(hint)[0]
        members = set(typing.get_args(base)) if isinstance(base, types.UnionType) else {base}
        optional = type(None) in members
        if members - {type(None)} != {kind.python_type}:
            raise TypeError(f"{name}: a {type(kind).__name__} field holds {kind.python_type}")
        if optional != (name in defaults) or defaults.get(name) is not None:
            raise TypeError(f"{name}: an optional field is `T | None = None`, a required one `T`")
        result.append(Field(name, kind, not optional))
    return tuple(result)


def _check_core(fields: tuple[Field, ...]) -> None:
    kinds = {f.name: f for f in fields}
    core: dict[str, type[Any]] = {
        "event_id": Text,
        "transaction_id": Text,
        "account_id": Text,
        "amount": Money,
        "currency": Text,
        "event_time": Timestamp,
    }
    for name, kind in core.items():
        found = kinds.get(name)
        if found is None or not isinstance(found.kind, kind) or not found.required:
            raise TypeError(f"the contract needs the required {kind.__name__} field {name}")
        if not found.in_transactions and name != "event_id":
            raise TypeError(f"{name} is part of every transactions row (in_transactions=True)")


FIELDS = fields_of(Event)
_check_core(FIELDS)
CONTRACT_FIELDS = tuple(f.name for f in FIELDS)
FIELD = {f.name: f for f in FIELDS}
# The fields copied to ``transactions`` besides its key, transaction_id, and its event_id.
TRANSACTION_FIELDS = tuple(
    f.name for f in FIELDS if f.in_transactions and f.name not in ("event_id", "transaction_id")
)

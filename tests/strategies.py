"""Hypothesis strategies shared by the property tests, derived from the contract
(pipeline/contract.py): a field added there is generated with the others."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from hypothesis import strategies as st

from pipeline.contract import FIELDS, Field
from pipeline.events import Event
from pipeline.field_kinds import Money, OneOf, Text, Timestamp

# Every instant the contract accepts (events.MAX_EVENT_TIME), in UTC as parsed events hold them.
event_times = st.datetimes(
    min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.just(dt.UTC)
)

# Amounts at NUMERIC's scale, large enough that sums of a few exceed 28 digits.
amounts = st.decimals(
    min_value=Decimal("-1e28"), max_value=Decimal("1e28"), places=9, allow_nan=False
)

# Short ids collide often, so that transactions and windows are shared between events.
_SHAPES: dict[str, st.SearchStrategy[object]] = {
    "event_id": st.text(min_size=1, max_size=20),
    "transaction_id": st.text(min_size=1, max_size=5),
    "account_id": st.text(min_size=1, max_size=5),
    "currency": st.sampled_from(["USD", "EUR"]),
    "status": st.sampled_from(["PENDING", "POSTED"]),
}


def _values(field: Field) -> st.SearchStrategy[object]:
    """Values of the field's kind: any characters within its bounds (its examples when it has a
    pattern), its listed values, exact money, any instant; optional fields also None."""
    kind = field.kind
    values: st.SearchStrategy[object]
    if field.name in _SHAPES:
        values = _SHAPES[field.name]
    elif isinstance(kind, Text):
        values = (
            st.sampled_from(kind.examples)
            if kind.pattern
            else st.text(min_size=kind.min_length, max_size=min(kind.max_length, 20))
        )
    elif isinstance(kind, OneOf):
        values = st.sampled_from(kind.values)
    elif isinstance(kind, Money):
        values = amounts
    elif isinstance(kind, Timestamp):
        values = event_times
    else:
        raise TypeError(f"no strategy for {type(kind).__name__} ({field.name})")
    return values if field.required else st.none() | values


# Any event that satisfies the contract.
events = st.builds(Event, **{f.name: _values(f) for f in FIELDS})

"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from hypothesis import strategies as st

from pipeline.events import Event

# Every instant the contract accepts (events.MAX_EVENT_TIME), in UTC as parsed events hold them.
event_times = st.datetimes(
    min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.just(dt.UTC)
)

# Any event that satisfies the contract, ids with any characters, amounts at NUMERIC's scale.
events = st.builds(
    Event,
    event_id=st.text(min_size=1, max_size=20),
    transaction_id=st.text(min_size=1, max_size=5),
    account_id=st.text(min_size=1, max_size=5),
    amount=st.decimals(
        min_value=Decimal("-1e28"), max_value=Decimal("1e28"), places=9, allow_nan=False
    ),
    currency=st.sampled_from(["USD", "EUR"]),
    status=st.sampled_from(["PENDING", "POSTED"]),
    event_time=event_times,
)

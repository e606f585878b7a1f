"""Property-based: for any set of events, any shuffle, split and duplication of its lines gives
the tables an independent Python oracle computes from the clean set."""

from __future__ import annotations

import datetime as dt
import itertools
import tempfile
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.events import Event, LedgerCandidate
from pipeline.sinks.duckdb import DuckDBWarehouse
from pipeline.tools.reconcile import expected_totals, expected_transactions, window_of
from tests.helpers import event_line, read_tables, run_lines
from tests.warehouses import duckdb_factory

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
WINDOW = 60


@st.composite
def event_sets(draw: st.DrawFn, max_events: int = 12) -> list[Event]:
    """Distinct events of a few transactions and accounts, spread over a few windows."""
    count = draw(st.integers(min_value=1, max_value=max_events))
    events = []
    for index in range(count):
        account = draw(st.sampled_from(["a1", "a2"]))
        events.append(
            Event(
                event_id=f"e{index}",
                transaction_id=draw(st.sampled_from(["t1", "t2", "t3", "t4"])),
                account_id=account,
                amount=draw(
                    st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False)
                ),
                currency="USD" if account == "a1" else "EUR",
                status=draw(st.sampled_from(["PENDING", "POSTED", "REVERSED"])),
                # Few distinct instants, so event-time ties within a transaction are common.
                event_time=T0 + dt.timedelta(seconds=draw(st.sampled_from([0, 30, 59, 60, 200]))),
            )
        )
    return events


def _line(event: Event, spelling: int) -> bytes:
    """Equivalent spellings of one event: the contract normalises them to the same event."""
    fields = dict(
        transaction_id=event.transaction_id,
        account_id=event.account_id,
        currency=event.currency,
        status=event.status,
    )
    if spelling == 0:
        return event_line(
            event.event_id,
            amount=str(event.amount),
            event_time=event.event_time.isoformat(),
            **fields,
        )
    if spelling == 1:  # a JSON number, another offset, an unknown field
        offset = dt.timezone(dt.timedelta(hours=-3, minutes=-30))
        return event_line(
            event.event_id,
            amount=Decimal(f"{event.amount:f}0"),
            event_time=event.event_time.astimezone(offset).isoformat(),
            retry=True,
            **fields,
        )
    return event_line(
        event.event_id,
        amount=f"{event.amount:f}000",
        event_time=event.event_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        **fields,
    )


def _expected(events: list[Event]) -> dict[str, list[dict[str, object]]]:
    rows = [e._asdict() for e in events]
    return {
        "transaction_events": sorted(rows, key=lambda r: str(r["event_id"])),
        "transactions": [v for _, v in sorted(expected_transactions(rows).items())],
        "account_window_totals": [
            {
                "account_id": a,
                "currency": c,
                "window_start": s,
                "window_end": end,
                "event_count": n,
                "total_amount": total,
                "total_overflow": overflow,
            }
            for (a, c, s), (end, n, total, overflow) in sorted(
                expected_totals(rows, WINDOW).items()
            )
        ],
        "dead_letters": [],
    }


def _normalised(tables: dict[str, list[dict[str, object]]]) -> dict[str, list[dict[str, object]]]:
    return {
        name: [
            {k: (v.astimezone(dt.UTC) if isinstance(v, dt.datetime) else v) for k, v in row.items()}
            for row in rows
        ]
        for name, rows in tables.items()
    }


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=event_sets(),
    copies=st.lists(st.tuples(st.integers(0, 11), st.integers(0, 2)), max_size=12),
    order=st.randoms(use_true_random=False),
    parts=st.integers(1, 3),
)
def test_pipeline_tables_ignore_order_split_and_duplication(
    events: list[Event], copies: list[tuple[int, int]], order: object, parts: int
) -> None:
    lines = [_line(e, 0) for e in events]
    lines += [_line(events[i % len(events)], spelling) for i, spelling in copies]
    order.shuffle(lines)  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as folder:
        factory = duckdb_factory(str(Path(folder) / "w.duckdb"))
        size = -(-len(lines) // parts)
        for start in range(0, len(lines), size):
            run_lines(lines[start : start + size], factory, max_batch_rows=3)
        assert _normalised(read_tables(factory)) == _expected(events)


@settings(max_examples=60, deadline=None)
@given(
    events=event_sets(max_events=20),
    data=st.data(),
)
def test_warehouse_tables_ignore_batch_order_split_and_repeats(
    events: list[Event], data: st.DataObject
) -> None:
    """The same property one level down, without Beam: any batches, any order, any repeats."""
    candidates = [LedgerCandidate(e, True, *window_of(e.event_time, WINDOW)) for e in events]
    stream = data.draw(
        st.permutations(candidates + data.draw(st.lists(st.sampled_from(candidates), max_size=10)))
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    batches = [stream[a:b] for a, b in itertools.pairwise([0, *cuts, len(stream)]) if b > a]
    with tempfile.TemporaryDirectory() as folder:
        warehouse = DuckDBWarehouse(str(Path(folder) / "w.duckdb"))
        warehouse.create_tables()
        for batch in batches + batches[:1]:  # the first batch retried at the end
            warehouse.merge_events(batch)
        warehouse.close()
        tables = read_tables(duckdb_factory(str(Path(folder) / "w.duckdb")))
    assert _normalised(tables) == _expected(events)

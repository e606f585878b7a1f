"""DuckDB's types, and rows between Python and DuckDB: a batch as the Arrow table DuckDB reads in
bulk (no row-by-row INSERT), stored versions read back as events and conflict dead letters, the
exact window total from its integer parts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pyarrow as pa

from pipeline.dead_letters import DeadLetter, conflict_dead_letter
from pipeline.events import (
    AMOUNT_SCALE,
    CONTRACT_FIELDS,
    MONEY_CONTEXT,
    NUMERIC_LIMIT,
    Event,
    LedgerCandidate,
    to_micros,
)
from pipeline.tables import (
    CONTRACT_COLUMNS,
    DEAD_LETTERS,
    TRANSACTION_EVENTS,
)

DUCKDB_TYPES = {
    "STRING": "VARCHAR",
    "NUMERIC": "DECIMAL(38, 9)",
    "TIMESTAMP": "TIMESTAMPTZ",
    "INT64": "BIGINT",
    "BOOL": "BOOLEAN",
    "JSON": "VARCHAR",  # DuckDB's JSON type needs an extension; the text is kept verbatim
}
# The same types as information_schema.columns spells them.
INFORMATION_SCHEMA_TYPES = {
    **DUCKDB_TYPES,
    "NUMERIC": "DECIMAL(38,9)",
    "TIMESTAMP": "TIMESTAMP WITH TIME ZONE",
}
ARROW_TYPES = {
    "STRING": pa.string(),
    "NUMERIC": pa.decimal128(38, 9),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
    "INT64": pa.int64(),
    "BOOL": pa.bool_(),
    "JSON": pa.string(),
}

EVENT_COLUMNS = CONTRACT_FIELDS  # the ledger's columns are the contract's fields
TIME_FIELDS = frozenset(c.name for c in CONTRACT_COLUMNS if c.type == "TIMESTAMP")
EVENT_FIELD_LIST = ", ".join(EVENT_COLUMNS)
TYPE_OF_STAGED = {
    **{c.name: c.type for c in TRANSACTION_EVENTS.columns},
    "window_start": "TIMESTAMP",
    "window_end": "TIMESTAMP",
    "is_primary": "BOOL",
}
DUCKDB_TYPE_OF = {name: DUCKDB_TYPES[kind] for name, kind in TYPE_OF_STAGED.items()}
STAGE_EVENTS_SCHEMA = pa.schema(
    [
        *(pa.field(c.name, ARROW_TYPES[c.type]) for c in CONTRACT_COLUMNS),
        pa.field("is_primary", pa.bool_()),
        pa.field("window_start", ARROW_TYPES["TIMESTAMP"]),
        pa.field("window_end", ARROW_TYPES["TIMESTAMP"]),
    ]
)
STAGE_DEAD_LETTERS_SCHEMA = pa.schema(
    [pa.field(c.name, ARROW_TYPES[c.type]) for c in DEAD_LETTERS.columns]
)


def exact_total(whole_units: int, nanos: int) -> Decimal | None:
    """The exact window total from its integer parts, or None when it does not fit NUMERIC."""
    total = MONEY_CONTEXT.add(Decimal(whole_units), Decimal(nanos).scaleb(-AMOUNT_SCALE))
    return total if total.copy_abs() < NUMERIC_LIMIT else None


UTC_MICROS = pa.timestamp("us", tz="UTC")


def timestamps(micros: list[int]) -> pa.Array:
    """Integer microseconds as an Arrow timestamp column: a zero-copy cast, where Arrow would
    convert every aware datetime on its own."""
    return pa.array(micros, pa.int64()).cast(UTC_MICROS)


def window_bounds(values: Sequence[dt.datetime]) -> pa.Array:
    # A batch has one bound per window, not per row: each distinct one is converted once.
    micros = {value: to_micros(value) for value in set(values)}
    return timestamps([micros[value] for value in values])


def stage_events_table(candidates: Sequence[LedgerCandidate]) -> pa.Table:
    """A batch as the Arrow table of ``stage_events``. The rows are transposed into columns by
    ``zip`` (candidates and events are tuples), not by a getattr per field and row, and times go
    through integer microseconds: both halve the cost of a row against the per-value way
    (measured: BENCHMARKS.md, section 1)."""
    events, primaries, starts, ends, _ = zip(*candidates, strict=True)
    by_field = dict(zip(Event._fields, zip(*events, strict=True), strict=True))
    times = by_field.pop("event_time")  # nearly all distinct: converted one by one
    columns = {
        name: pa.array(values, STAGE_EVENTS_SCHEMA.field(name).type)
        for name, values in by_field.items()
    }
    columns.update(
        event_time=timestamps([to_micros(time) for time in times]),
        is_primary=pa.array(primaries, pa.bool_()),
        window_start=window_bounds(starts),
        window_end=window_bounds(ends),
    )
    return pa.Table.from_arrays(
        [columns[name] for name in STAGE_EVENTS_SCHEMA.names], schema=STAGE_EVENTS_SCHEMA
    )


TIME_INDEXES = tuple(EVENT_COLUMNS.index(name) for name in TIME_FIELDS)


def stored_event(row: tuple[Any, ...]) -> Event:
    """A row of ``read_columns`` (times naive, in UTC) as an Event."""
    values = list(row)
    for index in TIME_INDEXES:
        if values[index] is not None:
            values[index] = values[index].replace(tzinfo=dt.UTC)
    return Event(*values)


EVENT_WIDTH = len(EVENT_COLUMNS)


def conflict(row: tuple[Any, ...]) -> DeadLetter:
    """A row of ``conflicts_sql`` as its dead letter. A primary whose id the ledger does not
    hold after the insert cannot happen (the insert adds every absent id's primary): fail
    loudly, never guess."""
    version = stored_event(row[:EVENT_WIDTH])
    primary, held = row[EVENT_WIDTH], row[EVENT_WIDTH + 1]
    if primary and not held:
        raise RuntimeError(f"the ledger MERGE did not insert event {version.event_id!r}")
    return conflict_dead_letter(version, stored_event(row[EVENT_WIDTH + 2 :]) if held else None)

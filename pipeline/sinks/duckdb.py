"""DuckDB: the embedded warehouse for local runs and tests, with the same semantics as BigQuery.

Written by staged appends and merge cycles: workers append their rows in bulk (an
Arrow table, no row-by-row INSERT) to ``staged_events``; a merge cycle takes what is staged when
it starts and merges each UTC day of it as one batch, then deletes exactly the rows it took.
A batch (a day of a cycle, or one given to ``merge_events``) is one transaction of set-based
statements: its distinct versions and their primary (``_STAGE_VERSIONS_SQL``), one MERGE per
table, and the versions that differ from what the ledger then holds, the only rows read back
into Python (as conflict dead letters). These are the rules of :mod:`pipeline.sinks.ledger_rules`
written in SQL; the warehouse contract tests hold both warehouses to them. Values reach DuckDB
only as staged data or bound parameters; identifiers come from :mod:`pipeline.tables` and are
validated there.

Flat cost, and why it is safe. The ledger MERGE matches ``event_id`` only within the batch's
event-time range, so DuckDB scans the row groups of that range instead of the whole table (the
cost stays flat as the ledger grows; see BENCHMARKS.md). Restricting the match could in principle
let a version of an event with a *different* event_time, stored outside the range, look absent
and be inserted as a second row. It cannot: ``event_id`` is the table's PRIMARY KEY, so such an
insert fails with a constraint error, the transaction rolls back and the batch is merged again
without the restriction (``used_fallback``), where the stored version is found and the new one is
dead-lettered as a conflict. The ``transactions`` MERGE is restricted to the batch's range widened
by ``TRANSACTION_LOOKBACK``; its PRIMARY KEY (``transaction_id``) catches a row further away in
the same way, and that batch is merged again with an upsert through the key's index, which finds
the row wherever it lies, not with whole-table scans. Totals need no fallback: a window's row can
only sit at its window_start.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any

import duckdb
import pyarrow as pa

from pipeline.dead_letters import DeadLetter, conflict_dead_letter
from pipeline.events import (
    AMOUNT_SCALE,
    CONTRACT_FIELDS,
    MONEY_CONTEXT,
    NUMERIC_LIMIT,
    TRANSACTION_FIELDS,
    VERSION_ORDER_SQL,
    Event,
    LedgerCandidate,
    to_micros,
)
from pipeline.sinks import ledger_rules
from pipeline.sinks.schema_evolution import StoredColumn, evolution
from pipeline.sinks.warehouse import MergeOutcome, Warehouse
from pipeline.tables import (
    ACCOUNT_WINDOW_TOTALS,
    ALL_TABLES,
    DEAD_LETTERS,
    INGEST_CHECKPOINTS,
    TRANSACTION_EVENTS,
    TRANSACTIONS,
    Column,
    Table,
    validate_identifier,
)

_LOG = logging.getLogger(__name__)

_DUCKDB_TYPES = {
    "STRING": "VARCHAR",
    "NUMERIC": "DECIMAL(38, 9)",
    "TIMESTAMP": "TIMESTAMPTZ",
    "INT64": "BIGINT",
    "BOOL": "BOOLEAN",
    "JSON": "VARCHAR",  # DuckDB's JSON type needs an extension; the text is kept verbatim
}
# The same types as information_schema.columns spells them.
_INFORMATION_SCHEMA_TYPES = {
    **_DUCKDB_TYPES,
    "NUMERIC": "DECIMAL(38,9)",
    "TIMESTAMP": "TIMESTAMP WITH TIME ZONE",
}
_ARROW_TYPES = {
    "STRING": pa.string(),
    "NUMERIC": pa.decimal128(38, 9),
    "TIMESTAMP": pa.timestamp("us", tz="UTC"),
    "INT64": pa.int64(),
    "BOOL": pa.bool_(),
    "JSON": pa.string(),
}

_EVENT_COLUMNS = CONTRACT_FIELDS  # the ledger's columns are the contract's fields
_TIME_FIELDS = frozenset(
    c.name
    for c in TRANSACTION_EVENTS.columns
    if c.name in CONTRACT_FIELDS and c.type == "TIMESTAMP"
)
_EVENT_FIELD_LIST = ", ".join(_EVENT_COLUMNS)
_TYPE_OF_STAGED = {
    **{c.name: c.type for c in TRANSACTION_EVENTS.columns},
    "window_start": "TIMESTAMP",
    "window_end": "TIMESTAMP",
    "is_primary": "BOOL",
}
_DUCKDB_TYPE_OF = {name: _DUCKDB_TYPES[kind] for name, kind in _TYPE_OF_STAGED.items()}
_STAGE_EVENTS_SCHEMA = pa.schema(
    [
        *(
            pa.field(c.name, _ARROW_TYPES[c.type])
            for c in TRANSACTION_EVENTS.columns
            if c.name in _EVENT_COLUMNS
        ),
        pa.field("is_primary", pa.bool_()),
        pa.field("window_start", _ARROW_TYPES["TIMESTAMP"]),
        pa.field("window_end", _ARROW_TYPES["TIMESTAMP"]),
    ]
)
_STAGE_DEAD_LETTERS_SCHEMA = pa.schema(
    [pa.field(c.name, _ARROW_TYPES[c.type]) for c in DEAD_LETTERS.columns]
)


def exact_total(whole_units: int, nanos: int) -> Decimal | None:
    """The exact window total from its integer parts, or None when it does not fit NUMERIC."""
    total = MONEY_CONTEXT.add(Decimal(whole_units), Decimal(nanos).scaleb(-AMOUNT_SCALE))
    return total if total.copy_abs() < NUMERIC_LIMIT else None


_UTC_MICROS = pa.timestamp("us", tz="UTC")


def _timestamps(micros: list[int]) -> pa.Array:
    """Integer microseconds as an Arrow timestamp column: a zero-copy cast, where Arrow would
    convert every aware datetime on its own."""
    return pa.array(micros, pa.int64()).cast(_UTC_MICROS)


def _window_bounds(values: Sequence[dt.datetime]) -> pa.Array:
    # A batch has one bound per window, not per row: each distinct one is converted once.
    micros = {value: to_micros(value) for value in set(values)}
    return _timestamps([micros[value] for value in values])


def stage_events_table(candidates: Sequence[LedgerCandidate]) -> pa.Table:
    """A batch as the Arrow table of ``stage_events``. The rows are transposed into columns by
    ``zip`` (candidates and events are tuples), not by a getattr per field and row, and times go
    through integer microseconds: both halve the cost of a row against the per-value way
    (measured: BENCHMARKS.md, section 1)."""
    events, primaries, starts, ends, _ = zip(*candidates, strict=True)
    by_field = dict(zip(Event._fields, zip(*events, strict=True), strict=True))
    times = by_field.pop("event_time")  # nearly all distinct: converted one by one
    columns = {
        name: pa.array(values, _STAGE_EVENTS_SCHEMA.field(name).type)
        for name, values in by_field.items()
    }
    columns.update(
        event_time=_timestamps([to_micros(time) for time in times]),
        is_primary=pa.array(primaries, pa.bool_()),
        window_start=_window_bounds(starts),
        window_end=_window_bounds(ends),
    )
    return pa.Table.from_arrays(
        [columns[name] for name in _STAGE_EVENTS_SCHEMA.names], schema=_STAGE_EVENTS_SCHEMA
    )


# DuckDB caches one database instance per file per process; connections to it from several
# threads (the streaming DirectRunner) are fine, but creating tables concurrently is not.
_CREATE_LOCK = threading.Lock()


def create_table_sql(table: Table) -> str:
    columns = ", ".join(
        f"{c.name} {_DUCKDB_TYPES[c.type]}{' NOT NULL' if c.required else ''}"
        for c in table.columns
    )
    return (
        f"CREATE TABLE IF NOT EXISTS {table.name} ({columns}, PRIMARY KEY ({', '.join(table.key)}))"
    )


# Staged appends (``stage_events``) wait here for the next merge cycle (``merge_staged``). A
# sequence number tells the rows one cycle took from rows staged while it ran.
STAGED_EVENTS = "staged_events"
_STAGED_COLUMNS = ", ".join(_STAGE_EVENTS_SCHEMA.names)
_STAGED_DECLARED = tuple(
    Column(field.name, type_name, False, "")
    for field in _STAGE_EVENTS_SCHEMA
    for type_name in [_TYPE_OF_STAGED[field.name]]
)  # all nullable, as _CREATE_STAGED_SQL makes them
_CREATE_STAGED_SQL = (
    f"CREATE SEQUENCE IF NOT EXISTS {STAGED_EVENTS}_seq;"
    f" CREATE TABLE IF NOT EXISTS {STAGED_EVENTS} ("
    f"staged_seq BIGINT NOT NULL DEFAULT nextval('{STAGED_EVENTS}_seq'), "
    + ", ".join(f"{field.name} {_DUCKDB_TYPE_OF[field.name]}" for field in _STAGE_EVENTS_SCHEMA)
    + ")"
)

# A cycle's rows: what staging holds when it starts, with the UTC day of each row's event time.
# Each day is merged as one batch, so each MERGE's time range stays within a day.
_CYCLE_SQL = f"""
    CREATE OR REPLACE TEMP TABLE merge_cycle AS
    SELECT *, CAST(timezone('UTC', event_time) AS DATE) AS day FROM {STAGED_EVENTS}
    ORDER BY day, event_time, event_id
"""

# A batch's distinct versions, from its staged rows (``stage_rows``: a batch's candidates, or a
# day of a merge cycle), with how many copies of each arrived. A version is primary when any of
# its copies is; of several primary versions of one event_id (possible when dedup state expired
# between them) only the first in ``version_order`` (pipeline/events.py) stays primary. Two rows
# of a MERGE's source then never match one target row. In event-time order, as the ledger is
# appended to.
_VERSION_ORDER = VERSION_ORDER_SQL
_STAGE_VERSIONS_SQL = f"""
    CREATE OR REPLACE TEMP TABLE stage_events AS
    WITH versions AS (
        SELECT {_EVENT_FIELD_LIST}, bool_or(is_primary) AS is_primary,
               min(window_start) AS window_start, min(window_end) AS window_end,
               count(*) AS copies
        FROM stage_rows GROUP BY {_EVENT_FIELD_LIST}
    )
    SELECT {_EVENT_FIELD_LIST},
           is_primary AND row_number() OVER (
               PARTITION BY event_id ORDER BY is_primary DESC, {_VERSION_ORDER}) = 1 AS is_primary,
           window_start, window_end, copies
    FROM versions
    ORDER BY event_time, event_id  -- the ledger grows in time order: see "Flat cost" above
"""


def _range(restricted: bool, column: str, low: str, high: str) -> str:
    return f" AND {column} BETWEEN {low} AND {high}" if restricted else ""


def _ledger_merge_sql(restricted: bool) -> str:
    cols = _EVENT_FIELD_LIST
    return f"""
        MERGE INTO {TRANSACTION_EVENTS.name} AS t
        USING (SELECT {cols} FROM stage_events WHERE is_primary) AS s
        ON t.event_id = s.event_id{_range(restricted, "t.event_time", "$lo", "$hi")}
        WHEN NOT MATCHED THEN INSERT ({cols}, ingested_at)
            VALUES ({", ".join("s." + c for c in _EVENT_COLUMNS)}, $now)
    """


def _read_columns(alias: str) -> str:
    """An event's columns as Python reads them: event_time as a naive UTC TIMESTAMP, since the
    client converts a TIMESTAMPTZ through a time zone lookup per value, ten times slower."""
    return ", ".join(
        f"timezone('UTC', {alias}.{c})" if c in _TIME_FIELDS else f"{alias}.{c}"
        for c in _EVENT_COLUMNS
    )


# The ids of a batch with no primary version: their ledger row, if any, may lie anywhere.
_WITHOUT_PRIMARY_SQL = (
    "SELECT event_id FROM stage_events GROUP BY event_id HAVING NOT bool_or(is_primary)"
)


def _conflicts_sql(restricted: bool, outside: bool) -> str:
    """The batch's versions that differ from the version the ledger holds for their id once the
    insert ran, or whose id it does not hold, beside the held version. Restricted, the ledger is
    read within the batch's range, where every id with a primary in the batch now has its row
    (had it one outside, the insert would have broken the key); ``outside``: and beyond it for
    the ids ``$outside``, those without a primary (rare: a conflicting version whose primary
    came in another batch), so that the common batch never reads beyond its range."""
    ledger = f"""
        SELECT {_EVENT_FIELD_LIST} FROM {TRANSACTION_EVENTS.name}
        WHERE event_id IN (SELECT event_id FROM stage_events)
        {_range(restricted, "event_time", "$lo", "$hi")}
    """
    if restricted and outside:
        ledger += f"""
        UNION ALL
        SELECT {_EVENT_FIELD_LIST} FROM {TRANSACTION_EVENTS.name}
        WHERE event_id IN (SELECT unnest($outside)) AND event_time NOT BETWEEN $lo AND $hi
        """
    differs = " OR ".join(
        f"s.{c} IS DISTINCT FROM l.{c}" for c in _EVENT_COLUMNS if c != "event_id"
    )
    return f"""
        SELECT {_read_columns("s")}, s.is_primary, l.event_id IS NOT NULL, {_read_columns("l")}
        FROM stage_events AS s LEFT JOIN ({ledger}) AS l ON l.event_id = s.event_id
        WHERE l.event_id IS NULL OR {differs}
    """


# ``transactions``: each touched transaction's newest ledger row. DuckDB's MERGE joins by scanning
# its target, so the MERGE restricts the target to the batch's range widened by
# TRANSACTION_LOOKBACK, where nearly every transaction's row lies: flat as the table grows. A row
# further away (a payment settled days after its authorisation) is invisible to it, and its
# insert trips the PRIMARY KEY. That batch is merged again with the upsert, which finds every row
# through the key's index wherever it lies (``ON CONFLICT DO UPDATE``). Why two paths: the
# upsert's index lookups cost more as the table grows, so the MERGE stays the common path; and
# without the upsert such a batch would be merged again unrestricted, every statement scanning
# its table whole (measured: BENCHMARKS.md, section 2).
TRANSACTION_LOOKBACK = dt.timedelta(days=1)
_TRANSACTION_FIELDS = (*TRANSACTION_FIELDS, "event_id")


def _newer(source: str) -> str:
    """The ``source`` row's event is newer than the target ``t``'s (ties to the greater id)."""
    s = source
    return (
        f"({s}.event_time > t.event_time"
        f" OR ({s}.event_time = t.event_time AND {s}.event_id > t.event_id))"
    )


def _newest_per_transaction_sql(restricted: bool) -> str:
    return f"""
        SELECT transaction_id, {", ".join(_TRANSACTION_FIELDS)} FROM {TRANSACTION_EVENTS.name}
        WHERE event_id IN (SELECT event_id FROM stage_events)
        {_range(restricted, "event_time", "$lo", "$hi")}
        QUALIFY row_number() OVER (
            PARTITION BY transaction_id ORDER BY event_time DESC, event_id DESC) = 1
    """


def _transactions_merge_sql(restricted: bool) -> str:
    fields = _TRANSACTION_FIELDS
    return f"""
        MERGE INTO {TRANSACTIONS.name} AS t
        USING ({_newest_per_transaction_sql(restricted)}) AS s
        ON t.transaction_id = s.transaction_id
            AND t.event_time BETWEEN $lo - $lookback AND $hi + $lookback
        WHEN MATCHED AND {_newer("s")}
            THEN UPDATE SET {", ".join(f"{f} = s.{f}" for f in fields)}, updated_at = $now
        WHEN NOT MATCHED THEN INSERT (transaction_id, {", ".join(fields)}, updated_at)
            VALUES (s.transaction_id, {", ".join("s." + f for f in fields)}, $now)
    """


def _transactions_upsert_sql(restricted: bool) -> str:
    fields = _TRANSACTION_FIELDS
    return f"""
        INSERT INTO {TRANSACTIONS.name} AS t (transaction_id, {", ".join(fields)}, updated_at)
        SELECT *, $now AS updated_at FROM ({_newest_per_transaction_sql(restricted)})
        ON CONFLICT (transaction_id) DO UPDATE
            SET {", ".join(f"{f} = excluded.{f}" for f in fields)},
                updated_at = excluded.updated_at
            WHERE {_newer("excluded")}
    """


class _TransactionOutsideLookback(Exception):
    """The transactions MERGE met a transaction whose row lies outside its range."""


# Windows are recomputed from the ledger, never incremented: a total is then exact whatever was
# duplicated, replayed or retried. Both the ledger scan and the target are restricted to the
# batch's windows; a window's row can only be at its window_start, so no fallback is needed.
# One window per key of the totals table (rows staged by runs with another window size would
# give one window_start two ends), so no target row meets two source rows.
#
# The sum of NUMERIC(38, 9) amounts may not fit NUMERIC(38, 9), and DuckDB's SUM would then fail
# the batch for good (a crash loop on valid input). So the sum is read as two integer parts that
# cannot overflow (whole units and nanos, each as HUGEINT) and combined exactly in Python, which
# stores NULL with total_overflow = TRUE when the exact total does not fit.
_WINDOW_SUMS_SQL = f"""
    SELECT w.account_id, w.currency, w.window_start, w.window_end,
           count(l.event_id) AS event_count,
           coalesce(sum(trunc(l.amount)::HUGEINT), 0) AS whole_units,
           coalesce(sum(((l.amount - trunc(l.amount)) * 1000000000)::HUGEINT), 0) AS nanos
    FROM (SELECT account_id, currency, window_start, max(window_end) AS window_end
          FROM stage_events GROUP BY account_id, currency, window_start) AS w
    LEFT JOIN {TRANSACTION_EVENTS.name} AS l
        ON l.account_id = w.account_id AND l.currency = w.currency
        AND l.event_time >= w.window_start AND l.event_time < w.window_end
        AND l.event_time >= $wlo AND l.event_time < $whi
    GROUP BY w.account_id, w.currency, w.window_start, w.window_end
"""

# Exact totals in SQL: the nanos sum is split into whole units (floor) and a fraction in [0, 1);
# a window whose whole units are within one of the NUMERIC limit is left to Python
# (exact_total), which alone can tell exactly whether its total fits.
_STAGE_TOTALS_SQL = f"""
    CREATE OR REPLACE TEMP TABLE stage_totals AS
    WITH sums AS ({_WINDOW_SUMS_SQL}),
    parts AS (
        SELECT *, ((nanos % 1000000000) + 1000000000) % 1000000000 AS fraction_nanos
        FROM sums
    ),
    normal AS (
        SELECT *, whole_units + (nanos - fraction_nanos) // 1000000000 AS whole
        FROM parts
    )
    SELECT account_id, currency, window_start, window_end, event_count, whole_units, nanos,
           abs(whole) >= {10**29 - 1} AS near_limit,
           CASE WHEN abs(whole) < {10**29 - 1}
                THEN TRY_CAST(whole AS DECIMAL(38, 9))
                     + (CAST(fraction_nanos AS DECIMAL(38, 9)) * 0.000000001)::DECIMAL(38, 9)
           END AS total_amount,
           FALSE AS total_overflow
    FROM normal
"""

_TOTALS_MERGE_SQL = f"""
    MERGE INTO {ACCOUNT_WINDOW_TOTALS.name} AS t
    USING stage_totals AS s
    ON t.account_id = s.account_id AND t.currency = s.currency
        AND t.window_start = s.window_start AND t.window_start BETWEEN $wlo AND $whi
    WHEN MATCHED AND (t.event_count <> s.event_count
                      OR t.total_amount IS DISTINCT FROM s.total_amount
                      OR t.window_end <> s.window_end)
        THEN UPDATE SET window_end = s.window_end, event_count = s.event_count,
                        total_amount = s.total_amount, total_overflow = s.total_overflow,
                        updated_at = $now
    WHEN NOT MATCHED AND s.event_count > 0 THEN INSERT
        (account_id, currency, window_start, window_end, event_count, total_amount,
         total_overflow, updated_at)
        VALUES (s.account_id, s.currency, s.window_start, s.window_end, s.event_count,
                s.total_amount, s.total_overflow, $now)
"""

_CHECKPOINT_MERGE_SQL = f"""
    MERGE INTO {INGEST_CHECKPOINTS.name} AS t
    USING (SELECT $source AS source, $replay_from AS replay_from, $now AS updated_at) AS s
    ON t.source = s.source
    WHEN MATCHED THEN UPDATE SET replay_from = s.replay_from, updated_at = s.updated_at
    WHEN NOT MATCHED THEN INSERT (source, replay_from, updated_at)
        VALUES (s.source, s.replay_from, s.updated_at)
"""

_DEAD_LETTERS_MERGE_SQL = f"""
    MERGE INTO {DEAD_LETTERS.name} AS t
    USING stage_dead_letters AS s
    ON t.dead_letter_id = s.dead_letter_id
    WHEN NOT MATCHED THEN INSERT ({", ".join(DEAD_LETTERS.column_names)})
        VALUES ({", ".join("s." + c for c in DEAD_LETTERS.column_names)})
"""


CHECKPOINT_THRESHOLD = "256MB"

_PARAMETER = re.compile(r"\$([a-z_]+)")


def _bind(sql: str, values: dict[str, Any]) -> dict[str, Any]:
    """The named parameters a statement uses (DuckDB refuses unused ones)."""
    return {name: values[name] for name in set(_PARAMETER.findall(sql))}


def _count(cursor: duckdb.DuckDBPyConnection) -> int:
    row = cursor.fetchone()
    return int(row[0]) if row else 0


_TIME_INDEXES = tuple(_EVENT_COLUMNS.index(name) for name in _TIME_FIELDS)


def _stored_event(row: tuple[Any, ...]) -> Event:
    """A row of ``_read_columns`` (times naive, in UTC) as an Event."""
    values = list(row)
    for index in _TIME_INDEXES:
        if values[index] is not None:
            values[index] = values[index].replace(tzinfo=dt.UTC)
    return Event(*values)


_FIELDS = len(_EVENT_COLUMNS)


def _conflict(row: tuple[Any, ...]) -> DeadLetter:
    """A row of ``_conflicts_sql`` as its dead letter. A primary whose id the ledger does not
    hold after the insert cannot happen (the insert adds every absent id's primary): fail
    loudly, never guess."""
    version = _stored_event(row[:_FIELDS])
    primary, held = row[_FIELDS], row[_FIELDS + 1]
    if primary and not held:
        raise RuntimeError(f"the ledger MERGE did not insert event {version.event_id!r}")
    return conflict_dead_letter(version, _stored_event(row[_FIELDS + 2 :]) if held else None)


class DuckDBWarehouse(Warehouse):
    """The four tables in one DuckDB file; every batch in one transaction."""

    def __init__(
        self,
        path: str,
        connect: Callable[[str], duckdb.DuckDBPyConnection] = duckdb.connect,
    ) -> None:
        """``connect`` is the client seam: tests pass a wrapper around ``duckdb.connect`` that
        injects faults into the real connection."""
        self.path = path
        self._connect = connect
        self._connection: duckdb.DuckDBPyConnection | None = None

    # --- connection ---------------------------------------------------------------------------

    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        if self._connection is None:
            directory = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(directory, exist_ok=True)
            self._connection = self._connect(self.path)
            self._connection.execute("SET TimeZone = 'UTC'")
            # A checkpoint rewrites the primary-key indexes, at a cost that grows with the table
            # (about 1.2 s at 10M ledger rows); with DuckDB's 16 MB default it follows every few
            # batches. A larger WAL between checkpoints keeps the per-batch cost flat
            # (BENCHMARKS.md); the WAL is replayed on open after a crash, so nothing is lost.
            self._connection.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def is_transient(self, error: BaseException) -> bool:
        # Optimistic concurrency: two transactions touching the same rows; the loser may retry.
        return isinstance(error, duckdb.TransactionException) or (
            isinstance(error, duckdb.IOException) and "lock" in str(error).lower()
        )

    def create_tables(self) -> None:
        """Create the tables if absent; evolve existing ones to this version's columns (or
        refuse to start: pipeline/sinks/schema_evolution.py)."""
        with _CREATE_LOCK:
            for table in ALL_TABLES:
                self.connection.execute(create_table_sql(table))
                self._evolve(table.name, table.columns)
            self.connection.execute(_CREATE_STAGED_SQL)
            self._evolve(STAGED_EVENTS, _STAGED_DECLARED, own_columns=("staged_seq",))

    def _evolve(
        self, table: str, declared: Sequence[Column], own_columns: Sequence[str] = ()
    ) -> None:
        rows = self.connection.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
            " WHERE table_catalog = current_database() AND table_schema = current_schema()"
            " AND table_name = $table",
            {"table": table},
        ).fetchall()
        stored = {name: StoredColumn(kind, nullable == "NO") for name, kind, nullable in rows}
        change = evolution(
            table, declared, stored, lambda c: _INFORMATION_SCHEMA_TYPES[c.type], own_columns
        )
        for column in change.add:
            _LOG.warning("Adding column %s.%s (a new optional field)", table, column.name)
            self.connection.execute(
                f"ALTER TABLE {table} ADD COLUMN {column.name} {_DUCKDB_TYPES[column.type]}"
            )
        for column in change.relax:
            _LOG.warning("Making column %s.%s nullable (an optional field)", table, column.name)
            self.connection.execute(f"ALTER TABLE {table} ALTER COLUMN {column.name} DROP NOT NULL")

    # --- staged appends and merge cycles --------------------------------------------------------

    def stage_events(self, batch: Sequence[LedgerCandidate]) -> None:
        if not batch:
            return
        self._execute_over(
            "staged_arrow",
            stage_events_table(batch),
            f"INSERT INTO {STAGED_EVENTS} ({_STAGED_COLUMNS})"
            f" SELECT {_STAGED_COLUMNS} FROM staged_arrow",
        )

    def merge_staged(self) -> MergeOutcome:
        con = self.connection
        # A snapshot of what is committed now: rows staged from here on wait for the next cycle.
        con.execute(_CYCLE_SQL)
        try:
            outcome = MergeOutcome()
            days = con.execute("SELECT DISTINCT day FROM merge_cycle ORDER BY day").fetchall()
            for (day,) in days:
                merged = self._merge_with_fallbacks(functools.partial(self._stage_day, day))
                _LOG.info("Merged %s of a cycle: %d inserted", day, merged.inserted)
                outcome += merged
            # Merged (each day committed): out of staging. Only the rows this cycle took.
            con.execute(
                f"DELETE FROM {STAGED_EVENTS}"
                " WHERE staged_seq IN (SELECT staged_seq FROM merge_cycle)"
            )
        finally:
            con.execute("DROP TABLE IF EXISTS merge_cycle")
        return outcome

    def _stage_day(self, day: dt.date) -> None:
        self.connection.execute(
            "CREATE OR REPLACE TEMP TABLE stage_rows AS"
            f" SELECT {_STAGED_COLUMNS} FROM merge_cycle WHERE day = $day",
            {"day": day},
        )

    # --- events ------------------------------------------------------------------------------

    def merge_events(self, batch: Sequence[LedgerCandidate]) -> MergeOutcome:
        if not batch:
            return MergeOutcome()
        return self._merge_with_fallbacks(
            lambda: self._register_temp("stage_rows", stage_events_table(batch))
        )

    def _merge_with_fallbacks(self, stage: Callable[[], object]) -> MergeOutcome:
        """Merge the rows ``stage`` puts in ``stage_rows``: restricted to their time range, and
        again wider where a key says a row lies outside it (the module docstring)."""
        try:
            return self._merge(stage, restricted=True, keyed=False)
        except _TransactionOutsideLookback:
            pass  # merged again below, its transactions through the key (TRANSACTION_LOOKBACK)
        except duckdb.ConstraintException:
            # A version stored outside the restricted range exists: see the module docstring.
            return self._merge(stage, restricted=False, keyed=True)
        try:
            return self._merge(stage, restricted=True, keyed=True)
        except duckdb.ConstraintException:
            # The ledger's key, as above (a concurrent writer between the two attempts).
            return self._merge(stage, restricted=False, keyed=True)

    def _merge(self, stage: Callable[[], object], restricted: bool, keyed: bool) -> MergeOutcome:
        """One transaction: the staged rows' distinct versions, the ledger's insert, conflicts
        dead-lettered, transactions and window totals; set-based, so only conflicting versions
        come back to Python."""
        con = self.connection
        con.execute("BEGIN TRANSACTION")
        try:
            stage()
            con.execute(_STAGE_VERSIONS_SQL)
            bounds = con.execute(
                "SELECT min(event_time), max(event_time), min(window_start), max(window_end),"
                " sum(copies) FROM stage_events"
            ).fetchone()
            assert bounds is not None
            lo, hi, wlo, whi, rows = bounds
            if not rows:
                con.execute("ROLLBACK")
                return MergeOutcome()
            values: dict[str, Any] = {
                "lo": lo,
                "hi": hi,
                "wlo": wlo,
                "whi": whi,
                "lookback": TRANSACTION_LOOKBACK,
                "now": dt.datetime.now(dt.UTC),
            }

            def run(sql: str) -> int:
                return _count(con.execute(sql, _bind(sql, values)))

            inserted = run(_ledger_merge_sql(restricted))
            values["outside"] = [row[0] for row in con.execute(_WITHOUT_PRIMARY_SQL).fetchall()]
            sql = _conflicts_sql(restricted, bool(values["outside"]))
            conflicts = [_conflict(row) for row in con.execute(sql, _bind(sql, values)).fetchall()]
            dead_letters = self._insert_dead_letters(conflicts)
            transactions = self._write_transactions(run, restricted, keyed)
            self._stage_totals(_bind(_WINDOW_SUMS_SQL, values))
            windows = run(_TOTALS_MERGE_SQL)
            for table in ("stage_rows", "stage_events", "stage_totals"):
                con.execute(f"DROP TABLE {table}")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return MergeOutcome(
            inserted=inserted,
            duplicates=int(rows) - inserted - len(conflicts),
            conflicts=len(conflicts),
            transactions_upserted=transactions,
            windows_upserted=windows,
            dead_letters_inserted=dead_letters,
            used_fallback=not restricted,
        )

    @staticmethod
    def _write_transactions(run: Callable[[str], int], restricted: bool, keyed: bool) -> int:
        if keyed:
            return run(_transactions_upsert_sql(restricted))
        try:
            return run(_transactions_merge_sql(restricted))
        except duckdb.ConstraintException as error:
            # Only the key can trip here: a transaction's row outside the MERGE's range.
            raise _TransactionOutsideLookback(str(error)) from error

    def _stage_totals(self, params: dict[str, Any]) -> None:
        con = self.connection
        con.execute(_STAGE_TOTALS_SQL, params)
        # The rare windows at or past the NUMERIC boundary: decided exactly in Python.
        edge = con.execute(
            "SELECT account_id, currency, window_start, whole_units, nanos"
            " FROM stage_totals WHERE near_limit"
        ).fetchall()
        for account_id, currency, start, whole_units, nanos in edge:
            total = exact_total(whole_units, nanos)
            con.execute(
                "UPDATE stage_totals SET total_amount = $total, total_overflow = $overflow"
                " WHERE account_id = $account AND currency = $currency AND window_start = $start",
                {
                    "total": total,
                    "overflow": total is None,
                    "account": account_id,
                    "currency": currency,
                    "start": start,
                },
            )

    def _execute_over(self, name: str, arrow: pa.Table, sql: str) -> int:
        """Run ``sql`` with ``arrow`` readable as the view ``name`` for that statement only (the
        bulk path: no row-by-row INSERT); returns the rows it changed."""
        self.connection.register(validate_identifier(name), arrow)
        try:
            return _count(self.connection.execute(sql))
        finally:
            self.connection.unregister(name)

    def _register_temp(self, name: str, arrow: pa.Table) -> None:
        """Copy an Arrow table into a temporary table of this transaction (the bulk stage)."""
        self._execute_over(
            f"{name}_arrow",
            arrow,
            f"CREATE OR REPLACE TEMP TABLE {validate_identifier(name)} AS"
            f" SELECT * FROM {name}_arrow",
        )

    # --- dead letters ------------------------------------------------------------------------

    def merge_dead_letters(self, rows: Sequence[DeadLetter]) -> int:
        if not rows:
            return 0
        con = self.connection
        con.execute("BEGIN TRANSACTION")
        try:
            inserted = self._insert_dead_letters(rows)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return inserted

    def _insert_dead_letters(self, rows: Sequence[DeadLetter]) -> int:
        if not rows:
            return 0
        arrow = pa.Table.from_pylist(
            [row._asdict() for row in ledger_rules.unique_dead_letters(rows)],
            schema=_STAGE_DEAD_LETTERS_SCHEMA,
        )
        return self._execute_over("stage_dead_letters", arrow, _DEAD_LETTERS_MERGE_SQL)

    # --- replay checkpoints ------------------------------------------------------------------

    def read_checkpoint(self, source: str) -> dt.datetime | None:
        row = self.connection.execute(
            f"SELECT replay_from FROM {INGEST_CHECKPOINTS.name} WHERE source = $source",
            {"source": source},
        ).fetchone()
        return None if row is None else row[0]

    def write_checkpoint(self, source: str, replay_from: dt.datetime) -> None:
        self.connection.execute(
            _CHECKPOINT_MERGE_SQL,
            {"source": source, "replay_from": replay_from, "now": dt.datetime.now(dt.UTC)},
        )

    # --- reading -----------------------------------------------------------------------------

    def fetch_rows(self, table: str) -> list[dict[str, Any]]:
        spec = next((t for t in ALL_TABLES if t.name == validate_identifier(table)), None)
        if spec is None:
            raise ValueError(f"unknown table {table!r}")
        cursor = self.connection.execute(
            f"SELECT * FROM {spec.name} ORDER BY {', '.join(spec.key)}"
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

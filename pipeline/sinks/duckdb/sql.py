"""DuckDB's statements: the tables' DDL, staging, and a batch's set-based statements (its versions,
the ledger MERGE, the conflicts read back, transactions, window totals, dead letters and
checkpoints). Identifiers come from pipeline/tables.py, validated there; values only as bound
parameters or staged data. Why each statement is shaped as it is: the warehouse's docstring
(pipeline/sinks/duckdb/warehouse.py)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pipeline.events import (
    VERSION_ORDER_SQL,
)
from pipeline.sinks.duckdb.rows import (
    DUCKDB_TYPE_OF,
    DUCKDB_TYPES,
    EVENT_COLUMNS,
    EVENT_FIELD_LIST,
    STAGE_EVENTS_SCHEMA,
    TIME_FIELDS,
    TYPE_OF_STAGED,
)
from pipeline.tables import (
    ACCOUNT_WINDOW_TOTALS,
    DEAD_LETTERS,
    INGEST_CHECKPOINTS,
    TRANSACTION_COPIED,
    TRANSACTION_EVENTS,
    TRANSACTIONS,
    Column,
    Table,
)


def create_table_sql(table: Table) -> str:
    columns = ", ".join(
        f"{c.name} {DUCKDB_TYPES[c.type]}{' NOT NULL' if c.required else ''}" for c in table.columns
    )
    return (
        f"CREATE TABLE IF NOT EXISTS {table.name} ({columns}, PRIMARY KEY ({', '.join(table.key)}))"
    )


# Staged appends (``stage_events``) wait here for the next merge cycle (``merge_staged``). A
# sequence number tells the rows one cycle took from rows staged while it ran.
STAGED_EVENTS = "staged_events"
STAGED_COLUMNS = ", ".join(STAGE_EVENTS_SCHEMA.names)
STAGED_DECLARED = tuple(
    Column(field.name, type_name, False, "")
    for field in STAGE_EVENTS_SCHEMA
    for type_name in [TYPE_OF_STAGED[field.name]]
)  # all nullable, as CREATE_STAGED_SQL makes them
CREATE_STAGED_SQL = (
    f"CREATE SEQUENCE IF NOT EXISTS {STAGED_EVENTS}_seq;"
    f" CREATE TABLE IF NOT EXISTS {STAGED_EVENTS} ("
    f"staged_seq BIGINT NOT NULL DEFAULT nextval('{STAGED_EVENTS}_seq'), "
    + ", ".join(f"{field.name} {DUCKDB_TYPE_OF[field.name]}" for field in STAGE_EVENTS_SCHEMA)
    + ")"
)

# A cycle's rows: what staging holds when it starts, with the UTC day of each row's event time.
# Each day is merged as one batch, so each MERGE's time range stays within a day.
CYCLE_SQL = f"""
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
VERSION_ORDER = VERSION_ORDER_SQL
STAGE_VERSIONS_SQL = f"""
    CREATE OR REPLACE TEMP TABLE stage_events AS
    WITH versions AS (
        SELECT {EVENT_FIELD_LIST}, bool_or(is_primary) AS is_primary,
               min(window_start) AS window_start, min(window_end) AS window_end,
               count(*) AS copies
        FROM stage_rows GROUP BY {EVENT_FIELD_LIST}
    )
    SELECT {EVENT_FIELD_LIST},
           is_primary AND row_number() OVER (
               PARTITION BY event_id ORDER BY is_primary DESC, {VERSION_ORDER}) = 1 AS is_primary,
           window_start, window_end, copies
    FROM versions
    ORDER BY event_time, event_id  -- the ledger grows in time order: see "Flat cost" above
"""


def time_range(restricted: bool, column: str, low: str, high: str) -> str:
    return f" AND {column} BETWEEN {low} AND {high}" if restricted else ""


def ledger_merge_sql(restricted: bool) -> str:
    cols = EVENT_FIELD_LIST
    return f"""
        MERGE INTO {TRANSACTION_EVENTS.name} AS t
        USING (SELECT {cols} FROM stage_events WHERE is_primary) AS s
        ON t.event_id = s.event_id{time_range(restricted, "t.event_time", "$lo", "$hi")}
        WHEN NOT MATCHED THEN INSERT ({cols}, ingested_at)
            VALUES ({", ".join("s." + c for c in EVENT_COLUMNS)}, $now)
    """


def read_columns(alias: str) -> str:
    """An event's columns as Python reads them: event_time as a naive UTC TIMESTAMP, since the
    client converts a TIMESTAMPTZ through a time zone lookup per value, ten times slower."""
    return ", ".join(
        f"timezone('UTC', {alias}.{c})" if c in TIME_FIELDS else f"{alias}.{c}"
        for c in EVENT_COLUMNS
    )


# The ids of a batch with no primary version: their ledger row, if any, may lie anywhere.
WITHOUT_PRIMARY_SQL = (
    "SELECT event_id FROM stage_events GROUP BY event_id HAVING NOT bool_or(is_primary)"
)


def conflicts_sql(restricted: bool, outside: bool) -> str:
    """The batch's versions that differ from the version the ledger holds for their id once the
    insert ran, or whose id it does not hold, beside the held version. Restricted, the ledger is
    read within the batch's range, where every id with a primary in the batch now has its row
    (had it one outside, the insert would have broken the key); ``outside``: and beyond it for
    the ids ``$outside``, those without a primary (rare: a conflicting version whose primary
    came in another batch), so that the common batch never reads beyond its range."""
    ledger = f"""
        SELECT {EVENT_FIELD_LIST} FROM {TRANSACTION_EVENTS.name}
        WHERE event_id IN (SELECT event_id FROM stage_events)
        {time_range(restricted, "event_time", "$lo", "$hi")}
    """
    if restricted and outside:
        ledger += f"""
        UNION ALL
        SELECT {EVENT_FIELD_LIST} FROM {TRANSACTION_EVENTS.name}
        WHERE event_id IN (SELECT unnest($outside)) AND event_time NOT BETWEEN $lo AND $hi
        """
    differs = " OR ".join(f"s.{c} IS DISTINCT FROM l.{c}" for c in EVENT_COLUMNS if c != "event_id")
    return f"""
        SELECT {read_columns("s")}, s.is_primary, l.event_id IS NOT NULL, {read_columns("l")}
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


def newer(source: str) -> str:
    """The ``source`` row's event is newer than the target ``t``'s (ties to the greater id)."""
    s = source
    return (
        f"({s}.event_time > t.event_time"
        f" OR ({s}.event_time = t.event_time AND {s}.event_id > t.event_id))"
    )


def newest_per_transaction_sql(restricted: bool) -> str:
    return f"""
        SELECT transaction_id, {", ".join(TRANSACTION_COPIED)} FROM {TRANSACTION_EVENTS.name}
        WHERE event_id IN (SELECT event_id FROM stage_events)
        {time_range(restricted, "event_time", "$lo", "$hi")}
        QUALIFY row_number() OVER (
            PARTITION BY transaction_id ORDER BY event_time DESC, event_id DESC) = 1
    """


def transactions_merge_sql(restricted: bool) -> str:
    fields = TRANSACTION_COPIED
    return f"""
        MERGE INTO {TRANSACTIONS.name} AS t
        USING ({newest_per_transaction_sql(restricted)}) AS s
        ON t.transaction_id = s.transaction_id
            AND t.event_time BETWEEN $lo - $lookback AND $hi + $lookback
        WHEN MATCHED AND {newer("s")}
            THEN UPDATE SET {", ".join(f"{f} = s.{f}" for f in fields)}, updated_at = $now
        WHEN NOT MATCHED THEN INSERT (transaction_id, {", ".join(fields)}, updated_at)
            VALUES (s.transaction_id, {", ".join("s." + f for f in fields)}, $now)
    """


def transactions_upsert_sql(restricted: bool) -> str:
    fields = TRANSACTION_COPIED
    return f"""
        INSERT INTO {TRANSACTIONS.name} AS t (transaction_id, {", ".join(fields)}, updated_at)
        SELECT *, $now AS updated_at FROM ({newest_per_transaction_sql(restricted)})
        ON CONFLICT (transaction_id) DO UPDATE
            SET {", ".join(f"{f} = excluded.{f}" for f in fields)},
                updated_at = excluded.updated_at
            WHERE {newer("excluded")}
    """


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
WINDOW_SUMS_SQL = f"""
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
STAGE_TOTALS_SQL = f"""
    CREATE OR REPLACE TEMP TABLE stage_totals AS
    WITH sums AS ({WINDOW_SUMS_SQL}),
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

TOTALS_MERGE_SQL = f"""
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

CHECKPOINT_MERGE_SQL = f"""
    MERGE INTO {INGEST_CHECKPOINTS.name} AS t
    USING (SELECT $source AS source, $replay_from AS replay_from, $now AS updated_at) AS s
    ON t.source = s.source
    WHEN MATCHED THEN UPDATE SET replay_from = s.replay_from, updated_at = s.updated_at
    WHEN NOT MATCHED THEN INSERT (source, replay_from, updated_at)
        VALUES (s.source, s.replay_from, s.updated_at)
"""

DEAD_LETTERS_MERGE_SQL = f"""
    MERGE INTO {DEAD_LETTERS.name} AS t
    USING stage_dead_letters AS s
    ON t.dead_letter_id = s.dead_letter_id
    WHEN NOT MATCHED THEN INSERT ({", ".join(DEAD_LETTERS.column_names)})
        VALUES ({", ".join("s." + c for c in DEAD_LETTERS.column_names)})
"""


PARAMETER = re.compile(r"\$([a-z_]+)")


def bind(sql: str, values: dict[str, Any]) -> dict[str, Any]:
    """The named parameters a statement uses (DuckDB refuses unused ones)."""
    return {name: values[name] for name in set(PARAMETER.findall(sql))}

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
import threading
from collections.abc import Callable, Sequence
from typing import Any

import duckdb
import pyarrow as pa

from pipeline.dead_letters import DeadLetter
from pipeline.events import (
    LedgerCandidate,
)
from pipeline.sinks import ledger_rules
from pipeline.sinks.duckdb.rows import (
    DUCKDB_TYPES,
    INFORMATION_SCHEMA_TYPES,
    STAGE_DEAD_LETTERS_SCHEMA,
    conflict,
    exact_total,
    stage_events_table,
)
from pipeline.sinks.duckdb.sql import (
    CHECKPOINT_MERGE_SQL,
    CREATE_STAGED_SQL,
    CYCLE_SQL,
    DEAD_LETTERS_MERGE_SQL,
    STAGE_TOTALS_SQL,
    STAGE_VERSIONS_SQL,
    STAGED_COLUMNS,
    STAGED_DECLARED,
    STAGED_EVENTS,
    TOTALS_MERGE_SQL,
    TRANSACTION_LOOKBACK,
    WINDOW_SUMS_SQL,
    WITHOUT_PRIMARY_SQL,
    bind,
    conflicts_sql,
    create_table_sql,
    ledger_merge_sql,
    transactions_merge_sql,
    transactions_upsert_sql,
)
from pipeline.sinks.schema_evolution import StoredColumn, evolution
from pipeline.sinks.warehouse import MergeOutcome, Warehouse
from pipeline.tables import (
    ALL_TABLES,
    INGEST_CHECKPOINTS,
    Column,
    validate_identifier,
)

_LOG = logging.getLogger(__name__)

# DuckDB caches one database instance per file per process; connections to it from several
# threads (the streaming DirectRunner) are fine, but creating tables concurrently is not.
_CREATE_LOCK = threading.Lock()


class _TransactionOutsideLookback(Exception):
    """The transactions MERGE met a transaction whose row lies outside its range."""


CHECKPOINT_THRESHOLD = "256MB"


def _count(cursor: duckdb.DuckDBPyConnection) -> int:
    row = cursor.fetchone()
    return int(row[0]) if row else 0


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
            self.connection.execute(CREATE_STAGED_SQL)
            self._evolve(STAGED_EVENTS, STAGED_DECLARED, own_columns=("staged_seq",))

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
            table, declared, stored, lambda c: INFORMATION_SCHEMA_TYPES[c.type], own_columns
        )
        for column in change.add:
            _LOG.warning("Adding column %s.%s (a new optional field)", table, column.name)
            self.connection.execute(
                f"ALTER TABLE {table} ADD COLUMN {column.name} {DUCKDB_TYPES[column.type]}"
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
            f"INSERT INTO {STAGED_EVENTS} ({STAGED_COLUMNS})"
            f" SELECT {STAGED_COLUMNS} FROM staged_arrow",
        )

    def merge_staged(self) -> MergeOutcome:
        con = self.connection
        # A snapshot of what is committed now: rows staged from here on wait for the next cycle.
        con.execute(CYCLE_SQL)
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
            f" SELECT {STAGED_COLUMNS} FROM merge_cycle WHERE day = $day",
            {"day": day},
        )

    # --- events ------------------------------------------------------------------------------

    def merge_events(self, batch: Sequence[LedgerCandidate]) -> MergeOutcome:
        """The batch merged by itself, without a pass through staged_events: the benchmarks
        measure the batch statements so, and the contract tests hold both ways to the rules."""
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
            con.execute(STAGE_VERSIONS_SQL)
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
                return _count(con.execute(sql, bind(sql, values)))

            inserted = run(ledger_merge_sql(restricted))
            values["outside"] = [row[0] for row in con.execute(WITHOUT_PRIMARY_SQL).fetchall()]
            sql = conflicts_sql(restricted, bool(values["outside"]))
            conflicts = [conflict(row) for row in con.execute(sql, bind(sql, values)).fetchall()]
            dead_letters = self._insert_dead_letters(conflicts)
            transactions = self._write_transactions(run, restricted, keyed)
            self._stage_totals(bind(WINDOW_SUMS_SQL, values))
            windows = run(TOTALS_MERGE_SQL)
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
            return run(transactions_upsert_sql(restricted))
        try:
            return run(transactions_merge_sql(restricted))
        except duckdb.ConstraintException as error:
            # Only the key can trip here: a transaction's row outside the MERGE's range.
            raise _TransactionOutsideLookback(str(error)) from error

    def _stage_totals(self, params: dict[str, Any]) -> None:
        con = self.connection
        con.execute(STAGE_TOTALS_SQL, params)
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
            schema=STAGE_DEAD_LETTERS_SCHEMA,
        )
        return self._execute_over("stage_dead_letters", arrow, DEAD_LETTERS_MERGE_SQL)

    # --- replay checkpoints ------------------------------------------------------------------

    def read_checkpoint(self, source: str) -> dt.datetime | None:
        row = self.connection.execute(
            f"SELECT replay_from FROM {INGEST_CHECKPOINTS.name} WHERE source = $source",
            {"source": source},
        ).fetchone()
        return None if row is None else row[0]

    def write_checkpoint(self, source: str, replay_from: dt.datetime) -> None:
        self.connection.execute(
            CHECKPOINT_MERGE_SQL,
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

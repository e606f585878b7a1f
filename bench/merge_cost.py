"""Flat MERGE cost: 10,000-event batches merged into a ledger of 100,000 rows and into one of
10,000,000, through DuckDBWarehouse.merge_events (stage, ledger MERGE, transactions MERGE, window
recomputation: the whole batch). The target is filled in bulk by SQL (the shape the pipeline
writes); then ``repeats`` consecutive batches are merged and a final CHECKPOINT is forced, and
the time per batch includes that checkpoint's share (its cost grows with the table). Each SQL
statement is timed too, through the warehouse's connection seam (median per batch, by the
statement's first words), so a cost that grows with the table can be traced to its statement.

    python -m bench.merge_cost ROWS [REPEATS]   # prints a JSON line
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from pipeline.events import Event, LedgerCandidate
from pipeline.sinks.duckdb import DuckDBWarehouse
from pipeline.tools.reconcile import window_of

START = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
BATCH = 10_000


def _fill(path: str, rows: int) -> None:
    """A ledger of ``rows`` events, one a second from START, and their transactions, both
    appended in event-time order as the pipeline writes them (batches are chunks in event-time
    order). The order matters for DuckDB: the time-restricted MERGEs prune by each row group's
    min/max event_time, which an unordered fill would make useless (BENCHMARKS.md, section 2)."""
    warehouse = DuckDBWarehouse(path)
    warehouse.create_tables()
    warehouse.close()
    with duckdb.connect(path) as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(
            """INSERT INTO transaction_events
               SELECT 'ev-' || i, 'tx-' || (i // 2), 'acct-' || (i % 1000), (i % 9973) / 100,
                      'USD', CASE WHEN i % 2 = 0 THEN 'PENDING' ELSE 'POSTED' END,
                      $start + to_seconds(i), $start
               FROM range($rows) t(i)""",
            {"start": START, "rows": rows},
        )
        con.execute(
            """INSERT INTO transactions
               SELECT transaction_id, account_id, amount, currency, status, event_time, event_id,
                      ingested_at
               FROM transaction_events QUALIFY row_number() OVER (
                   PARTITION BY transaction_id ORDER BY event_time DESC, event_id DESC) = 1
               ORDER BY event_time"""
        )
        con.execute("CHECKPOINT")


def _batch(rows: int, offset: int = 0) -> list[LedgerCandidate]:
    """New events right after the existing ones (half of them new transactions, half updates
    of the latest ones), as the next batch of a stream would be."""
    batch = []
    for j in range(BATCH):
        i = rows + offset + j
        at = START + dt.timedelta(seconds=i)
        transaction = f"tx-{(i // 2) if j % 2 else (rows // 2 - 1 - j // 2)}"
        event = Event(f"ev-{i}", transaction, f"acct-{i % 1000}", Decimal(i % 9973) / 100,
                      "USD", "POSTED", at)  # fmt: skip
        batch.append(LedgerCandidate(event, True, *window_of(at, 60)))
    return batch


class _TimedConnection:
    """A real DuckDB connection that records how long each statement takes."""

    def __init__(self, inner: duckdb.DuckDBPyConnection) -> None:
        self._inner = inner
        self.seconds: dict[str, list[float]] = defaultdict(list)

    def execute(self, sql: str, *args: Any) -> Any:
        began = time.perf_counter()
        try:
            return self._inner.execute(sql, *args)
        finally:
            self.seconds[" ".join(sql.split()[:6])].append(time.perf_counter() - began)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def measure(rows: int, repeats: int = 5) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="merge-cost-"))
    try:
        path = str(folder / "ledger.duckdb")
        _fill(path, rows)
        batches = [_batch(rows, k * BATCH) for k in range(repeats)]
        timed: list[_TimedConnection] = []

        def connect(database: str) -> Any:
            timed.append(_TimedConnection(duckdb.connect(database)))
            return timed[-1]

        warehouse = DuckDBWarehouse(path, connect=connect)
        warehouse.create_tables()
        timed[0].seconds.clear()  # the batches' statements only
        times = []
        started = time.perf_counter()
        for batch in batches:
            began = time.perf_counter()
            outcome = warehouse.merge_events(batch)
            times.append(time.perf_counter() - began)
            assert outcome.inserted == BATCH and not outcome.used_fallback, outcome
        checkpoint = time.perf_counter()
        warehouse.connection.execute("CHECKPOINT")
        ended = time.perf_counter()
        warehouse.close()
        return {
            "target_rows": rows,
            "batch": BATCH,
            "batches": repeats,
            "median_batch_ms": round(1000 * statistics.median(times)),
            "checkpoint_ms": round(1000 * (ended - checkpoint)),
            "per_batch_ms_with_checkpoint": round(1000 * (ended - started) / repeats),
            "statement_ms": {
                statement: round(1000 * statistics.median(seconds), 1)
                for statement, seconds in timed[0].seconds.items()
                if len(seconds) >= repeats  # per batch, not the final CHECKPOINT
            },
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 5)))

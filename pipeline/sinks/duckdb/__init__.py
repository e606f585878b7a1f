"""The embedded DuckDB warehouse, by concern: ``warehouse.py`` the warehouse (connections,
staged appends, merge cycles, batches with their fallbacks), ``sql.py`` its statements,
``rows.py`` its types and row conversions. What callers use is exported here."""

from pipeline.sinks.duckdb.rows import exact_total, stage_events_table
from pipeline.sinks.duckdb.sql import STAGED_EVENTS, TRANSACTION_LOOKBACK, create_table_sql
from pipeline.sinks.duckdb.warehouse import DuckDBWarehouse

__all__ = [
    "STAGED_EVENTS",
    "TRANSACTION_LOOKBACK",
    "DuckDBWarehouse",
    "create_table_sql",
    "exact_total",
    "stage_events_table",
]

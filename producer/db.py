"""Connections and the schema.

Every module here takes a psycopg 3 connection in autocommit mode and opens its transactions
explicitly (``with conn.transaction():``), so the extent of each transaction is visible in the
code: the service's are one request each, the relay's are a few milliseconds each and never span
a network call to Pub/Sub.
"""

from __future__ import annotations

from importlib import resources

import psycopg

# Any constant: serialises concurrent schema applications (CREATE ... IF NOT EXISTS can race).
_SCHEMA_LOCK = 0x0_0B0C_5EED


def connect(dsn: str) -> psycopg.Connection:
    """An autocommit connection. ``dsn`` is a libpq string or URL; empty means the PG*
    environment variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD...)."""
    return psycopg.connect(dsn, autocommit=True)


def schema_sql() -> str:
    return resources.files("producer").joinpath("schema.sql").read_text(encoding="utf-8")


def apply_schema(conn: psycopg.Connection) -> None:
    """Create the tables and indexes if absent. Safe to run again and from several processes."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
        conn.execute(schema_sql().encode("utf-8"))

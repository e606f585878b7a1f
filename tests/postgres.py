"""PostgreSQL for the outbox tests: a throwaway cluster (``producer.local_postgres``) shared by a
test module (the ``postgres`` fixture of tests/conftest.py), and a fresh database with the schema
per test.

Missing server binaries (or no ``postgres`` OS user when running as root) fail the test with
what to install: CI must run these tests, never skip them. The cluster and its processes are
stopped and its directory removed when the module ends, failed tests included.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import pytest

from producer.db import apply_schema, connect
from producer.local_postgres import Postgres, PostgresUnavailable, running_postgres

_numbers = itertools.count(1)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[Postgres]:
    try:
        with running_postgres() as cluster:
            yield cluster
    except PostgresUnavailable as error:
        pytest.fail(f"PostgreSQL is required for the outbox tests: {error}", pytrace=False)


def fresh_database(cluster: Postgres, prefix: str = "test") -> str:
    """A new database with the producer's schema; returns its DSN."""
    dsn = cluster.create_database(f"{prefix}_{next(_numbers)}")
    with connect(dsn) as conn:
        apply_schema(conn)
    return dsn

"""Fixtures: real local services. ``warehouse`` runs a test once per warehouse: the embedded
DuckDB (a fresh file) and BigQuery on the local emulator (fresh datasets of one emulator shared
by the session, behind the production rules of tests/production_bigquery/). ``emulator``
(Google's Pub/Sub emulator) and ``postgres`` (a throwaway cluster) are started once per test
module that asks for them and stopped after it. A missing service is an error, never a skip."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.sinks.warehouse import WarehouseFactory
from pipeline.tools.pubsub_emulator import Emulator, running_emulator
from producer.local_postgres import Postgres
from tests.bigquery_emulator import BigQueryEmulator, bigquery_emulator
from tests.postgres import postgres_cluster
from tests.production_bigquery import ProductionBigQuery
from tests.warehouses import WAREHOUSES, duckdb_factory, fresh_bigquery


@pytest.fixture(scope="session")
def bq_emulator() -> Iterator[BigQueryEmulator]:
    with bigquery_emulator() as emulator:
        yield emulator


@pytest.fixture(scope="session")
def production_bigquery(bq_emulator: BigQueryEmulator) -> Iterator[ProductionBigQuery]:
    """The emulator as BigQuery behaves in production (tests/production_bigquery/): what every
    BigQuery warehouse test talks to."""
    with ProductionBigQuery(bq_emulator.endpoint, emulator_grpc=bq_emulator.grpc_address) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with running_emulator() as running:
        yield running


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture
def duckdb_path(tmp_path: Path) -> str:
    return str(tmp_path / "warehouse.duckdb")


@pytest.fixture(params=WAREHOUSES)
def warehouse(request: pytest.FixtureRequest, duckdb_path: str) -> WarehouseFactory:
    """A factory of a real, empty warehouse: each test runs on DuckDB and on BigQuery."""
    if request.param == "duckdb":
        return duckdb_factory(duckdb_path)
    return fresh_bigquery(request.getfixturevalue("production_bigquery"))


@pytest.fixture
def duckdb_warehouse(duckdb_path: str) -> WarehouseFactory:
    """DuckDB only, for tests of what only the embedded warehouse does."""
    return duckdb_factory(duckdb_path)


# The fixtures that start a local service; a test parametrized with "bigquery" (the ``warehouse``
# fixture, or a ``kind``) asks for the BigQuery emulator too.
_SERVICES = {"emulator", "postgres", "bq_emulator", "production_bigquery"}


def _needs_service(item: pytest.Item) -> bool:
    if _SERVICES & set(getattr(item, "fixturenames", ())):
        return True
    callspec = getattr(item, "callspec", None)
    return callspec is not None and any(
        str(value).startswith("bigquery") for value in callspec.params.values()
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Marks the tests that need a local service (``service``: ``make test-fast`` leaves them
    out). Long proofs first: with ``-n 2`` the workers then start them at once and the many
    short tests fill in around them, instead of one worker ending the run alone on a long tail."""
    for item in items:
        if _needs_service(item):
            item.add_marker(pytest.mark.service)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)

"""Warehouse factories for tests: the embedded DuckDB and BigQuery on the local emulator.

Factories are picklable (Beam ships them to its workers, even on the DirectRunner), so they hold
plain values and build clients when called.
"""

from __future__ import annotations

import dataclasses
import functools
import uuid
from dataclasses import dataclass

from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from pipeline.sinks.bigquery import BigQueryWarehouse
from pipeline.sinks.duckdb import DuckDBWarehouse
from pipeline.sinks.warehouse import WarehouseFactory

WAREHOUSES = ("duckdb", "bigquery")


@dataclass(frozen=True)
class EmulatorClient:
    """The client seam of BigQueryWarehouse, pointed at the local emulator, offline."""

    endpoint: str

    def __call__(self, project: str) -> bigquery.Client:
        return bigquery.Client(
            project=project,
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=self.endpoint),
        )


@dataclass(frozen=True)
class EmulatorWarehouse:
    """One pipeline run's warehouse factory: every instance it makes shares its run id."""

    endpoint: str
    project: str
    dataset: str
    run_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __call__(self) -> BigQueryWarehouse:
        return BigQueryWarehouse(
            self.project,
            self.dataset,
            client_factory=EmulatorClient(self.endpoint),
            run_id=self.run_id,
        )


def another_run(factory: WarehouseFactory) -> WarehouseFactory:
    """The same warehouse, as a later, separately launched run sees it."""
    if isinstance(factory, EmulatorWarehouse):
        return dataclasses.replace(factory, run_id=uuid.uuid4().hex[:12])
    return factory


def duckdb_factory(path: str) -> WarehouseFactory:
    return functools.partial(DuckDBWarehouse, path)


def fresh_bigquery(endpoint: str, project: str) -> EmulatorWarehouse:
    """A factory of a warehouse in a dataset no other test uses."""
    return EmulatorWarehouse(endpoint, project, f"test_{uuid.uuid4().hex[:12]}")

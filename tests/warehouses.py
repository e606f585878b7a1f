"""Warehouse factories for tests: the embedded DuckDB and BigQuery on the local emulator.

Factories are picklable (Beam ships them to its workers, even on the DirectRunner), so they hold
plain values and build clients when called.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from pipeline.sinks.bigquery import BigQueryWarehouse
from pipeline.sinks.duckdb import DuckDBWarehouse
from pipeline.sinks.warehouse import WarehouseFactory
from tests.bigquery_emulator import DEFAULT_PROJECT
from tests.production_bigquery import ProductionBigQuery, provision

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
    """One pipeline run's warehouse factory: every instance it makes shares its run id.
    ``endpoint`` is the production-rules proxy's (tests/production_bigquery/)."""

    endpoint: str
    project: str
    dataset: str
    run_id: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex[:12])
    location: str | None = None  # --bigquery_location; None: the datasets' own

    def __call__(self) -> BigQueryWarehouse:
        return BigQueryWarehouse(
            self.project,
            self.dataset,
            client_factory=EmulatorClient(self.endpoint),
            run_id=self.run_id,
            location=self.location,
        )


def another_run(factory: WarehouseFactory) -> WarehouseFactory:
    """The same warehouse, as a later, separately launched run sees it."""
    if isinstance(factory, EmulatorWarehouse):
        return dataclasses.replace(factory, run_id=uuid.uuid4().hex[:12])
    return factory


def duckdb_factory(path: str) -> WarehouseFactory:
    return functools.partial(DuckDBWarehouse, path)


class BatchMergedDuckDB(DuckDBWarehouse):
    """DuckDB written as BigQuery is, each batch merged as it comes (``UpsertLedger``), so the
    per-batch design's Beam side runs in the fast tests too."""

    stages = False


def batch_merged_duckdb_factory(path: str) -> WarehouseFactory:
    return functools.partial(BatchMergedDuckDB, path)


def fresh_bigquery(
    bigquery_rules: ProductionBigQuery, project: str = DEFAULT_PROJECT, tables: bool = True
) -> EmulatorWarehouse:
    """A factory of a warehouse in datasets no other test uses, set up as Terraform sets them up
    (in a region, with the tables unless ``tables`` is False, and the worker's grants on them)
    and reached through the production rules."""
    dataset = f"test_{uuid.uuid4().hex[:12]}"
    admin = bigquery_rules.admin_client(project)
    try:
        provisioned = provision(admin, project, dataset, tables=tables)
    finally:
        admin.close()
    bigquery_rules.grant_worker(project, provisioned.dataset, provisioned.staging_dataset)
    return EmulatorWarehouse(bigquery_rules.endpoint, project, dataset)


@dataclass(frozen=True)
class CommandLineWarehouse:
    """A warehouse as the command line names it, the environment that reaches it, and a factory
    to read it back (for tests that run ``python -m pipeline`` as a user does)."""

    url: str  # the --warehouse value
    environment: dict[str, str]
    factory: WarehouseFactory


def command_line_warehouse(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> CommandLineWarehouse:
    """A fresh warehouse of ``kind``: a DuckDB file, or datasets on the session's local BigQuery,
    reached through the production rules with ``BIGQUERY_EMULATOR_HOST`` (see
    bigquery.default_client)."""
    if kind == "duckdb":
        database = str(tmp_path / "warehouse.duckdb")
        factory = duckdb_factory(database)
        return CommandLineWarehouse(f"duckdb:{database}", dict(os.environ), factory)
    factory = fresh_bigquery(request.getfixturevalue("production_bigquery"))
    return CommandLineWarehouse(
        f"bigquery:{factory.project}.{factory.dataset}",
        {**os.environ, "BIGQUERY_EMULATOR_HOST": factory.endpoint},
        factory,
    )

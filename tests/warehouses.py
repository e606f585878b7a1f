"""Warehouse factories for tests: the embedded DuckDB and BigQuery on the local emulator.

Factories are picklable (Beam ships them to its workers, even on the DirectRunner), so they hold
plain values and build clients when called.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from pipeline.dead_letters import DeadLetter
from pipeline.events import LedgerCandidate
from pipeline.sinks.bigquery import BigQueryWarehouse
from pipeline.sinks.bigquery.appends import (
    STORAGE_EMULATOR_ENV,
    WriteClientFactory,
    emulator_write_client,
)
from pipeline.sinks.duckdb import DuckDBWarehouse
from pipeline.sinks.warehouse import MergeOutcome, Warehouse, WarehouseFactory
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
    write_address: str | None = None  # the write API's rules (write_api.py); None: no appends
    dedup_horizon_days: int = 0  # --bigquery_dedup_horizon_days

    def __call__(self) -> BigQueryWarehouse:
        return BigQueryWarehouse(
            self.project,
            self.dataset,
            client_factory=EmulatorClient(self.endpoint),
            run_id=self.run_id,
            location=self.location,
            write_client_factory=self.write_client_factory(),
            dedup_horizon_days=self.dedup_horizon_days,
        )

    def write_client_factory(self) -> WriteClientFactory | None:
        if self.write_address is None:
            return None
        return functools.partial(emulator_write_client, self.write_address)


def another_run(factory: WarehouseFactory) -> WarehouseFactory:
    """The same warehouse, as a later, separately launched run sees it."""
    if isinstance(factory, EmulatorWarehouse):
        return dataclasses.replace(factory, run_id=uuid.uuid4().hex[:12])
    return factory


def duckdb_factory(path: str) -> WarehouseFactory:
    return functools.partial(DuckDBWarehouse, path)


class DelegatingWarehouse(Warehouse):
    """A real warehouse behind the interface, every call passed through: the base of the
    test seams that change one behaviour of a real warehouse."""

    def __init__(self, inner: Warehouse) -> None:
        self.inner = inner

    def create_tables(self) -> None:
        self.inner.create_tables()

    def merge_events(self, batch: Sequence[LedgerCandidate]) -> MergeOutcome:
        return self.inner.merge_events(batch)

    def stage_events(self, batch: Sequence[LedgerCandidate]) -> None:
        self.inner.stage_events(batch)

    def merge_staged(self) -> MergeOutcome:
        return self.inner.merge_staged()

    def merge_dead_letters(self, rows: Sequence[DeadLetter]) -> int:
        return self.inner.merge_dead_letters(rows)

    def read_checkpoint(self, source: str) -> dt.datetime | None:
        return self.inner.read_checkpoint(source)

    def write_checkpoint(self, source: str, replay_from: dt.datetime) -> None:
        self.inner.write_checkpoint(source, replay_from)

    def fetch_rows(self, table: str) -> list[dict[str, Any]]:
        return self.inner.fetch_rows(table)

    def is_transient(self, error: BaseException) -> bool:
        return self.inner.is_transient(error)

    def close(self) -> None:
        self.inner.close()


class MergedByCycles(DelegatingWarehouse):
    """A warehouse whose ``merge_events`` stages the batch and runs one merge cycle over it, so
    the warehouse contract tests hold merge cycles to the rules a merged batch keeps."""

    def merge_events(self, batch: Sequence[LedgerCandidate]) -> MergeOutcome:
        self.inner.stage_events(batch)
        return self.inner.merge_staged()


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
    return EmulatorWarehouse(
        bigquery_rules.endpoint, project, dataset, write_address=bigquery_rules.write_address
    )


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
        {
            **os.environ,
            "BIGQUERY_EMULATOR_HOST": factory.endpoint,
            STORAGE_EMULATOR_ENV: factory.write_address or "",
        },
        factory,
    )


def count_rows(warehouse: Warehouse, table: str, staging: bool = False) -> int:
    """Rows in one of the warehouse's tables (``staging``: BigQuery's staging dataset), for tests
    that look at what waits between appends and merge cycles."""
    if isinstance(warehouse, DuckDBWarehouse):
        row = warehouse.connection.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(row[0]) if row else 0
    assert isinstance(warehouse, BigQueryWarehouse)
    ref = warehouse._staging_ref(table) if staging else warehouse.table_ref(table)
    (row,) = warehouse.client.query(f"SELECT COUNT(*) AS n FROM {ref}").result()
    return int(row["n"])

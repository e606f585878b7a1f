"""From a ``--warehouse`` URL to a warehouse: ``duckdb:PATH`` or ``bigquery:PROJECT.DATASET``.

The backends are imported only here, and only the one a URL names (a run needs only the client
of the warehouse it uses); they import the interface (pipeline/sinks/warehouse.py), never this
module.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass

from pipeline.sinks.warehouse import Warehouse, WarehouseFactory

WAREHOUSE_KINDS = ("duckdb", "bigquery")


def parse_warehouse_url(url: str) -> tuple[str, str]:
    """``duckdb:PATH`` or ``bigquery:PROJECT.DATASET`` -> (kind, location); ValueError if not."""
    kind, sep, location = url.partition(":")
    if not sep or kind not in WAREHOUSE_KINDS or not location:
        raise ValueError(
            f"--warehouse must be duckdb:PATH or bigquery:PROJECT.DATASET, got {url!r}"
        )
    if kind == "bigquery":
        from pipeline.sinks.bigquery import parse_dataset  # noqa: PLC0415

        parse_dataset(location)
    return kind, location


@dataclass(frozen=True)
class BigQuerySettings:
    """How a BigQuery warehouse is reached beyond its URL (the ``--bigquery_*`` options)."""

    staging_dataset: str | None = None  # PROJECT.DATASET; default: the dataset's name + _staging
    location: str | None = None  # where the datasets must be; None: wherever they are
    create_datasets: bool = False  # create missing datasets (a local run; not the worker's right)
    dedup_horizon_days: int = 0  # a merge cycle's ledger lookup; 0: the whole ledger


def open_warehouse(
    url: str, bigquery: BigQuerySettings | None = None, run_id: str | None = None
) -> Warehouse:
    kind, location = parse_warehouse_url(url)
    # Imported here so a run needs only the client of the warehouse it uses.
    if kind == "duckdb":
        from pipeline.sinks.duckdb import DuckDBWarehouse  # noqa: PLC0415

        return DuckDBWarehouse(location)
    from pipeline.sinks.bigquery import BigQueryWarehouse, parse_dataset  # noqa: PLC0415

    project, dataset = parse_dataset(location)
    settings = bigquery or BigQuerySettings()
    return BigQueryWarehouse(
        project,
        dataset,
        settings.staging_dataset,
        location=settings.location,
        create_datasets=settings.create_datasets,
        dedup_horizon_days=settings.dedup_horizon_days,
        run_id=run_id,
    )


def warehouse_factory(
    url: str, bigquery: BigQuerySettings | None = None, run_id: str | None = None
) -> WarehouseFactory:
    """A picklable factory for the workers. ``run_id`` identifies one launched pipeline: every
    worker's warehouse gets the same one (BigQuery scopes its job ids by it)."""
    parse_warehouse_url(url)  # fail at construction time, not on the workers
    return functools.partial(open_warehouse, url, bigquery, run_id or uuid.uuid4().hex[:12])

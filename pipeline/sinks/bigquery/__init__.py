"""The BigQuery warehouse, by concern: ``warehouse.py`` the warehouse (datasets and tables,
staged appends, merge cycles, dead letters, checkpoints), ``jobs.py`` how its jobs run,
``appends.py`` the Storage Write API appends, ``cycle.py`` a merge cycle's SQL script, ``rows.py``
rows and query parameters. What callers use is exported here."""

from pipeline.sinks.bigquery.jobs import BigQueryBatchError, default_client, is_transient
from pipeline.sinks.bigquery.warehouse import (
    BigQuerySetupError,
    BigQueryWarehouse,
    parse_dataset,
)

__all__ = [
    "BigQueryBatchError",
    "BigQuerySetupError",
    "BigQueryWarehouse",
    "default_client",
    "is_transient",
    "parse_dataset",
]

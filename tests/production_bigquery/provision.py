"""What ``terraform apply`` creates in BigQuery, done with the emulator's administrator client: the
two datasets in one location, the staging dataset's default table expiration, and the tables with
the schemas of terraform/schemas/ and the layout of main.tf's ``local.tables``. Read from the HCL,
so the tests follow the Terraform; then :meth:`ProductionBigQuery.grant_worker` grants the worker
what terraform/iam.tf grants it."""

from __future__ import annotations

import json
from dataclasses import dataclass

from google.cloud import bigquery

from tests.terraform_hcl import TERRAFORM, named, terraform_locals

# A region, not a multi-region: jobs there are found only with their location, as in most
# production projects (Terraform's default puts the datasets in the Dataflow region).
TEST_LOCATION = "europe-west1"


@dataclass(frozen=True)
class Provisioned:
    project: str
    dataset: str
    staging_dataset: str
    location: str


def provision(
    admin: bigquery.Client,
    project: str,
    dataset: str,
    *,
    staging_dataset: str | None = None,
    location: str = TEST_LOCATION,
    tables: bool = True,
) -> Provisioned:
    staging_dataset = staging_dataset or f"{dataset}_staging"
    warehouse = bigquery.Dataset(f"{project}.{dataset}")
    warehouse.location = location
    admin.create_dataset(warehouse)
    staging = bigquery.Dataset(f"{project}.{staging_dataset}")
    staging.location = location
    hours = named(TERRAFORM, "variable")["staging_table_expiration_hours"]["default"]
    staging.default_table_expiration_ms = int(hours) * 3600 * 1000
    admin.create_dataset(staging)
    if tables:
        for spec in terraform_locals(TERRAFORM)["tables"]:
            schema = json.loads((TERRAFORM / "schemas" / f"{spec['name']}.json").read_text())
            table = bigquery.Table(
                f"{project}.{dataset}.{spec['name']}",
                schema=[bigquery.SchemaField.from_api_repr(field) for field in schema],
            )
            table.description = spec["description"]
            if spec["partitioned"]:
                table.time_partitioning = bigquery.TimePartitioning(
                    type_=bigquery.TimePartitioningType.DAY, field=spec["time_column"]
                )
            if spec["clustering"]:
                table.clustering_fields = list(spec["clustering"])
            admin.create_table(table)
    return Provisioned(project, dataset, staging_dataset, location)

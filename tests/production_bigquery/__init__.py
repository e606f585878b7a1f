"""BigQuery as in production, for tests: the local emulator behind a proxy that enforces what the
emulator leaves out (permissions from terraform/iam.tf, job locations, job ids, request size, the
mutating-DML queue and conflicts, load quotas, latency, lost responses).

    with ProductionBigQuery(emulator.endpoint) as bigquery:            # proxy.py
        provisioned = provision(emulator.client(), project, "ledger")  # provision.py: Terraform
        bigquery.grant_worker(project, provisioned.dataset, provisioned.staging_dataset)
        ... BigQueryWarehouse(project, "ledger", client_factory=<a client of bigquery.endpoint>)

tests/conftest.py provides it as the session fixture ``production_bigquery``; every BigQuery
warehouse test goes through it.
"""

from tests.production_bigquery.iam import Grants, WorkerRoles, worker_roles_from_terraform
from tests.production_bigquery.jobs import (
    NO_LATENCY,
    PRODUCTION_LATENCY,
    Job,
    JobFailed,
    Latency,
    Scheduler,
)
from tests.production_bigquery.provision import TEST_LOCATION, Provisioned, provision
from tests.production_bigquery.proxy import MAX_REQUEST_BYTES, ProductionBigQuery

__all__ = [
    "MAX_REQUEST_BYTES",
    "NO_LATENCY",
    "PRODUCTION_LATENCY",
    "TEST_LOCATION",
    "Grants",
    "Job",
    "JobFailed",
    "Latency",
    "ProductionBigQuery",
    "Provisioned",
    "Scheduler",
    "WorkerRoles",
    "provision",
    "worker_roles_from_terraform",
]

"""Who may do what: the roles ``terraform/iam.tf`` grants the worker, the BigQuery permissions in
each role, and where each permission is checked, as Google documents them.

Roles: https://cloud.google.com/bigquery/docs/access-control (BigQuery permissions only; the
roles hold others, for other services, that no BigQuery call checks). Permissions per method:
https://cloud.google.com/bigquery/docs/access-control#bq-permissions and each method's REST page.

A permission is held on a resource when a role holding it is granted on that resource or on its
project. ``bigquery.datasets.create`` is checked on the project, so the worker, which holds
dataEditor (which lists it) only on its two datasets, cannot create a dataset: BigQuery answers
403 before it looks whether the dataset exists. An unknown role fails loudly: a grant added to
the Terraform must be added here, or the tests would check less than the deploy grants.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from tests.terraform_hcl import TERRAFORM, resources

_TABLE_READ = frozenset({"bigquery.tables.get", "bigquery.tables.getData", "bigquery.tables.list"})
_TABLE_WRITE = frozenset(
    {
        "bigquery.tables.create",
        "bigquery.tables.delete",
        "bigquery.tables.update",
        "bigquery.tables.updateData",
        "bigquery.tables.export",
    }
)
_DATA_EDITOR = frozenset(
    {
        "bigquery.datasets.create",  # listed in the role, but only a project grant creates one
        "bigquery.datasets.get",
        "bigquery.datasets.getIamPolicy",
        "bigquery.datasets.updateTag",
        *_TABLE_READ,
        *_TABLE_WRITE,
    }
)

ROLE_PERMISSIONS: Mapping[str, frozenset[str]] = {
    "roles/bigquery.jobUser": frozenset({"bigquery.jobs.create", "bigquery.config.get"}),
    "roles/bigquery.user": frozenset(
        {
            "bigquery.jobs.create",
            "bigquery.config.get",
            "bigquery.datasets.create",
            "bigquery.datasets.get",
            "bigquery.tables.list",
        }
    ),
    "roles/bigquery.dataViewer": frozenset({"bigquery.datasets.get", *_TABLE_READ}),
    "roles/bigquery.dataEditor": _DATA_EDITOR,
    "roles/bigquery.dataOwner": _DATA_EDITOR
    | {"bigquery.datasets.update", "bigquery.datasets.delete", "bigquery.datasets.setIamPolicy"},
    "roles/bigquery.admin": _DATA_EDITOR
    | {
        "bigquery.jobs.create",
        "bigquery.jobs.get",
        "bigquery.jobs.update",
        "bigquery.datasets.update",
        "bigquery.datasets.delete",
        "bigquery.datasets.setIamPolicy",
    },
    # Roles of other services that the worker holds: no BigQuery permission.
    "roles/dataflow.worker": frozenset(),
}


@dataclass(frozen=True)
class Grants:
    """The roles one principal holds: on projects, and on datasets (``project.dataset``)."""

    project_roles: Mapping[str, frozenset[str]] = field(default_factory=dict)
    dataset_roles: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for role in {r for roles in self._all_roles() for r in roles}:
            if role not in ROLE_PERMISSIONS:
                raise ValueError(
                    f"{role} is granted but its BigQuery permissions are not modelled: add it to"
                    " ROLE_PERMISSIONS in tests/production_bigquery/iam.py"
                )

    def _all_roles(self) -> Iterable[frozenset[str]]:
        yield from self.project_roles.values()
        yield from self.dataset_roles.values()

    def on_project(self, project: str, permission: str) -> bool:
        return _holds(self.project_roles.get(project, frozenset()), permission)

    def on_dataset(self, project: str, dataset: str, permission: str) -> bool:
        roles = self.dataset_roles.get(f"{project}.{dataset}", frozenset())
        return self.on_project(project, permission) or _holds(roles, permission)

    def with_datasets(self, project: str, roles_by_dataset: Mapping[str, Iterable[str]]) -> Grants:
        merged = dict(self.dataset_roles)
        for dataset, roles in roles_by_dataset.items():
            key = f"{project}.{dataset}"
            merged[key] = merged.get(key, frozenset()) | frozenset(roles)
        return Grants(self.project_roles, merged)


def _holds(roles: Iterable[str], permission: str) -> bool:
    return any(permission in ROLE_PERMISSIONS[role] for role in roles)


@dataclass(frozen=True)
class WorkerRoles:
    """What terraform/iam.tf grants the worker service account: roles on its project, and roles
    on the warehouse and staging datasets (bound to real dataset names by :meth:`grants`)."""

    project: frozenset[str]
    warehouse_dataset: frozenset[str]
    staging_dataset: frozenset[str]

    def grants(self, project: str, warehouse: str, staging: str) -> Grants:
        return Grants({project: self.project}).with_datasets(
            project, {warehouse: self.warehouse_dataset, staging: self.staging_dataset}
        )


_WORKER = "${local.worker_member}"
_ROLE = re.compile(r"roles/[A-Za-z0-9_.]+")
# How iam.tf names the two datasets (outputs of modules/bigquery).
_DATASET_EXPRESSIONS = {
    "${module.bigquery.dataset_id}": "warehouse",
    "${module.bigquery.staging_dataset_id}": "staging",
}


def worker_roles_from_terraform() -> WorkerRoles:
    """Read the worker's BigQuery-relevant grants from terraform/iam.tf."""
    project: set[str] = set()
    for body in resources(TERRAFORM, "google_project_iam_member").values():
        if body.get("member") == _WORKER:
            project.update(_roles(body))
    datasets: dict[str, set[str]] = {"warehouse": set(), "staging": set()}
    for body in resources(TERRAFORM, "google_bigquery_dataset_iam_member").values():
        if body.get("member") != _WORKER:
            continue
        targets = body.get("for_each")
        if not isinstance(targets, dict):
            raise ValueError(f"unexpected dataset grant in terraform/iam.tf: {body}")
        for expression in targets.values():
            datasets[_DATASET_EXPRESSIONS[expression]].update(_roles(body))
    return WorkerRoles(
        frozenset(project), frozenset(datasets["warehouse"]), frozenset(datasets["staging"])
    )


def _roles(body: Mapping[str, object]) -> set[str]:
    """The roles of one iam_member resource: its literal role, or each role of its for_each."""
    role = str(body.get("role", ""))
    if role == "${each.value}":
        return set(_ROLE.findall(str(body.get("for_each", ""))))
    return set(_ROLE.findall(role))

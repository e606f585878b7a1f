"""The Terraform, checked offline (the google provider cannot be downloaded here): terraform fmt,
a checkov scan with every skip justified, and the HCL (parsed with python-hcl2) compared with the
package: the tables and their schema files, the subscription that makes replay possible, the
template parameters the job passes, the worker's roles, the alerts' metrics, and the names that
make/dataflow.mk derives. checkov comes from `make tf-tools`, terraform with the machine (tf-tools
checks it); these tests fail, not skip, without them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pipeline import metrics
from pipeline.gcp_names import PROJECT_ID
from pipeline.tables import ALL_TABLES
from pipeline.tools import template_metadata
from tests.terraform_hcl import (
    ROOT,
    TERRAFORM,
    blocks,
    named,
    parse,
    resources,
    terraform_locals,
    unescape,
)

MODULES = [TERRAFORM, TERRAFORM / "modules" / "pubsub", TERRAFORM / "modules" / "bigquery"]
DATAFLOW_MK = ROOT / "make" / "dataflow.mk"


def _metadata_parameters() -> list[dict[str, object]]:
    parameters = template_metadata.metadata()["parameters"]
    assert isinstance(parameters, list)
    return parameters


def _tool(name: str, hint: str, local: Path | None = None) -> str:
    if local is not None and local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {hint}", pytrace=False)
    return found


# --- tools: fmt and checkov


def test_terraform_fmt() -> None:
    terraform = _tool(
        os.environ.get("TERRAFORM", "terraform"),
        "install Terraform >= 1.5 (no provider download is needed); make tf-tools checks it",
    )
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"run: terraform fmt -recursive terraform\n{result.stdout}"


def _skips_in_files() -> list[tuple[str, str, str]]:
    skips = []
    for path in sorted(TERRAFORM.rglob("*.tf")):
        for line in path.read_text(encoding="utf-8").splitlines():
            match = re.search(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?", line)
            if match:
                skips.append((str(path.relative_to(ROOT)), match[1], (match[2] or "").strip()))
    return skips


def test_checkov_finds_nothing_unexplained() -> None:
    checkov = _tool(
        "checkov", "run: make tf-tools", ROOT / ".tools" / "checkov" / "bin" / "checkov"
    )
    result = subprocess.run(
        [
            checkov,
            "--directory",
            str(TERRAFORM),
            "--framework",
            "terraform",
            "--skip-download",
            "--output",
            "json",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.stdout.strip(), result.stderr
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    summary = report["summary"]
    failed = [
        f"{check['check_id']} {check['resource']} ({check['file_path']}): {check['check_name']}"
        for check in report["results"]["failed_checks"]
    ]
    assert not failed, "checkov failed checks (fix, or skip inline with a reason):\n" + "\n".join(
        failed
    )
    assert summary["parsing_errors"] == 0
    assert summary["passed"] > 10
    skipped = {check["check_id"] for check in report["results"]["skipped_checks"]}
    for check in report["results"]["skipped_checks"]:
        comment = check["check_result"].get("suppress_comment") or ""
        assert len(comment) > 30, f"{check['check_id']} on {check['resource']} needs a reason"
    # Every inline skip is justified and still skips something (no stale skips).
    for path, check_id, reason in _skips_in_files():
        assert len(reason) > 30, f"{path}: checkov:skip={check_id} needs a reason after ':'"
        assert check_id in skipped, f"{path}: checkov:skip={check_id} skips nothing any more"


# --- structure: versions, variables, outputs, example.tfvars


def test_versions_terraform_1_5_and_google_pinned_to_one_major() -> None:
    (settings,) = blocks(TERRAFORM, "terraform")
    assert settings["required_version"] == ">= 1.5"
    (providers,) = settings["required_providers"]
    assert set(providers) == {"google", "google-beta"}
    majors = set()
    for name, provider in providers.items():
        assert provider["source"] == f"hashicorp/{name}"
        match = re.fullmatch(r"~> (\d+)\.0", provider["version"])
        assert match, f"pin {name} to a major: ~> N.0, not {provider['version']}"
        majors.add(match[1])
    assert len(majors) == 1, "google and google-beta must be the same major"
    (major,) = majors
    for module in MODULES[1:]:
        (module_settings,) = blocks(module, "terraform")
        (module_providers,) = module_settings["required_providers"]
        version = module_providers["google"]["version"]
        assert version == f">= {major}.0, < {int(major) + 1}.0", (module, version)


@pytest.mark.parametrize("folder", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_variable_is_typed_and_described(folder: Path) -> None:
    variables = named(folder, "variable")
    assert variables
    for name, variable in variables.items():
        assert variable.get("type"), f"{folder}: variable {name} has no type"
        description = str(variable.get("description", "")).strip()
        assert len(description) > 10, f"{folder}: variable {name} has no description"


def test_the_project_id_is_validated_as_the_pipeline_validates_it() -> None:
    """terraform/variables.tf writes PROJECT_ID in HCL; it must be pipeline/gcp_names.py's."""
    (project,) = [v for name, v in named(TERRAFORM, "variable").items() if name == "project_id"]
    (validation,) = project["validation"]
    assert f'regex("^{PROJECT_ID}$", var.project_id)' in validation["condition"]


@pytest.mark.parametrize("folder", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_output_is_described(folder: Path) -> None:
    outputs = named(folder, "output")
    assert outputs
    for name, output in outputs.items():
        assert len(str(output.get("description", ""))) > 10, f"{folder}: output {name}"


def test_modules_get_every_required_variable_and_nothing_else() -> None:
    for name, call in named(TERRAFORM, "module").items():
        folder = (TERRAFORM / call["source"]).resolve()
        variables = named(folder, "variable")
        arguments = set(call) - {"source", "depends_on", "count", "for_each", "providers"}
        assert arguments <= set(variables), (name, arguments - set(variables))
        required = {v for v, body in variables.items() if "default" not in body}
        assert required <= arguments, (name, required - arguments)


def test_example_tfvars_sets_every_required_variable_and_only_declared_ones() -> None:
    example = parse(TERRAFORM / "example.tfvars")
    variables = named(TERRAFORM, "variable")
    assert set(example) <= set(variables)
    required = {name for name, body in variables.items() if "default" not in body}
    assert required == {"project_id", "region"}
    assert required <= set(example)


# --- agreement with the package


def test_tables_agree_with_pipeline_tables() -> None:
    tables = terraform_locals(TERRAFORM)["tables"]
    expected = [
        {
            "name": table.name,
            "description": table.description,
            "time_column": table.time_column,
            "partitioned": table.partitioned,
            "clustering": list(table.clustering),
        }
        for table in ALL_TABLES
    ]
    assert tables == expected, "terraform/main.tf local.tables drifted from pipeline/tables.py"


def test_tables_read_the_generated_schema_files() -> None:
    call = named(TERRAFORM, "module")["bigquery"]
    assert 'file("${path.module}/schemas/${table.name}.json")' in call["tables"].replace("\\", "")
    for table in ALL_TABLES:
        assert (TERRAFORM / "schemas" / f"{table.name}.json").exists(), table.name


def test_each_table_is_day_partitioned_on_its_time_column_and_clustered() -> None:
    (resource,) = resources(TERRAFORM / "modules" / "bigquery", "google_bigquery_table").values()
    assert resource["for_each"] == "${{for table in var.tables : table.name => table}}"
    assert resource["schema"] == "${each.value.schema}"
    assert "each.value.clustering" in resource["clustering"]
    (dynamic,) = resource["dynamic"]
    partitioning = dynamic["time_partitioning"]
    assert partitioning["for_each"] == "${each.value.partitioned ? [each.value.time_column] : []}"
    assert partitioning["content"] == [{"type": "DAY", "field": "${time_partitioning.value}"}]


def test_the_staging_dataset_expires_its_tables() -> None:
    datasets = resources(TERRAFORM / "modules" / "bigquery", "google_bigquery_dataset")
    assert "default_table_expiration_ms" in datasets["staging"]
    assert "default_table_expiration_ms" not in datasets["warehouse"]


def test_the_pipeline_subscription_keeps_messages_for_replay() -> None:
    pubsub = TERRAFORM / "modules" / "pubsub"
    subscription = resources(pubsub, "google_pubsub_subscription")["pipeline"]
    assert subscription["retain_acked_messages"] is True
    assert subscription["message_retention_duration"] == "${var.message_retention}"
    assert subscription["expiration_policy"] == [{"ttl": ""}]
    assert "dead_letter_policy" not in subscription  # Dataflow does not support one
    call = named(TERRAFORM, "module")["pubsub"]
    assert call["message_retention"] == "${var.message_retention_days * 86400}s"
    assert named(TERRAFORM, "variable")["message_retention_days"]["default"] == 7


def test_dead_letters_of_other_consumers_and_service_agent_only_where_it_applies() -> None:
    pubsub = TERRAFORM / "modules" / "pubsub"
    consumers = resources(pubsub, "google_pubsub_subscription")["consumers"]
    (policy,) = consumers["dead_letter_policy"]
    assert policy["dead_letter_topic"] == "${google_pubsub_topic.dead_letters.id}"
    hold = resources(pubsub, "google_pubsub_subscription")["dead_letters_hold"]
    assert hold["topic"] == "${google_pubsub_topic.dead_letters.id}"
    publisher = resources(pubsub, "google_pubsub_topic_iam_member")
    assert list(publisher) == ["service_agent_publishes_dead_letters"]
    grant = publisher["service_agent_publishes_dead_letters"]
    assert grant["count"] == "${length(var.consumer_subscriptions) > 0 ? 1 : 0}"
    assert grant["role"] == "roles/pubsub.publisher"
    subscriber = resources(pubsub, "google_pubsub_subscription_iam_member")
    assert list(subscriber) == ["service_agent_acks_dead_letters"]
    assert subscriber["service_agent_acks_dead_letters"]["for_each"] == (
        "${google_pubsub_subscription.consumers}"
    )


def _job() -> dict[str, Any]:
    return resources(TERRAFORM, "google_dataflow_flex_template_job")["streaming"]


def test_the_optional_job_runs_the_template_at_least_once_on_streaming_engine() -> None:
    job = _job()
    assert job["count"] == "${var.dataflow_job == null ? 0 : 1}"
    assert job["provider"] == "google-beta"
    assert job["enable_streaming_engine"] is True
    assert job["on_delete"] == "drain"
    assert job["sdk_container_image"] == "${var.dataflow_job.image}"
    assert job["service_account_email"] == "${google_service_account.worker.email}"
    experiments = terraform_locals(TERRAFORM)["streaming_mode_experiments"]
    assert experiments == {"at_least_once": ["streaming_mode_at_least_once"], "exactly_once": []}
    assert job["additional_experiments"] == (
        "${local.streaming_mode_experiments[var.dataflow_job.streaming_mode]}"
    )
    variable = named(TERRAFORM, "variable")["dataflow_job"]
    assert variable["default"] is None
    assert 'streaming_mode = optional(string, "at_least_once")' in variable["type"].replace(
        "\\", ""
    )


def test_the_job_passes_template_parameters_the_metadata_declares() -> None:
    parameters = unescape(_job()["parameters"])
    prefix, suffix = "${merge(var.dataflow_job.parameters, {", "})}"
    assert parameters.startswith(prefix) and parameters.endswith(suffix), parameters
    fields = re.split(r", (?=\w+ = )", parameters.removeprefix(prefix).removesuffix(suffix))
    passed = dict(field.split(" = ", 1) for field in fields)
    metadata = {str(p["name"]): p for p in _metadata_parameters()}
    assert set(passed) <= set(metadata)
    required = {name for name, p in metadata.items() if not p["isOptional"]}
    assert required <= set(passed)
    assert passed == {
        "input_subscription": "module.pubsub.subscription_id",
        "warehouse": '"bigquery:${var.project_id}.${module.bigquery.dataset_id}"',
        "bigquery_staging_dataset": '"${var.project_id}.${module.bigquery.staging_dataset_id}"',
        "bigquery_location": "local.bigquery_location",
    }


def test_worker_roles_are_least_privilege() -> None:
    project_roles = resources(TERRAFORM, "google_project_iam_member")["worker"]["for_each"]
    assert set(re.findall(r"roles/[\w.]+", project_roles)) == {
        "roles/dataflow.worker",
        "roles/bigquery.jobUser",
    }
    subscription = resources(TERRAFORM, "google_pubsub_subscription_iam_member")["worker"]
    assert subscription["subscription"] == "${module.pubsub.subscription_name}"
    assert set(re.findall(r"roles/[\w.]+", subscription["for_each"])) == {
        "roles/pubsub.subscriber",
        "roles/pubsub.viewer",
    }
    datasets = resources(TERRAFORM, "google_bigquery_dataset_iam_member")["worker"]
    assert datasets["role"] == "roles/bigquery.dataEditor"
    bucket = resources(TERRAFORM, "google_storage_bucket_iam_member")["worker"]
    assert bucket["role"] == "roles/storage.objectAdmin"
    assert bucket["bucket"] == "${google_storage_bucket.dataflow.name}"
    registry = resources(TERRAFORM, "google_artifact_registry_repository_iam_member")["worker"]
    assert registry["role"] == "roles/artifactregistry.reader"
    # No authoritative bindings or policies, and no broad role anywhere.
    text = "\n".join(path.read_text(encoding="utf-8") for path in TERRAFORM.rglob("*.tf"))
    assert not re.search(r'resource "google_\w+_iam_(binding|policy)"', text)
    roles = set(re.findall(r"roles/[\w.]+", text))
    assert not roles & {"roles/owner", "roles/editor", "roles/viewer", "roles/pubsub.editor"}


def test_alerts_watch_the_counter_the_sinks_increment_and_the_backlog() -> None:
    policies = resources(TERRAFORM, "google_monitoring_alert_policy")
    assert set(policies) == {
        "dead_letters_growing",
        "subscription_backlog_age",
        "job_failed",
        "merge_cycle_bytes_billed",
    }
    (condition,) = policies["dead_letters_growing"]["conditions"]
    (promql,) = condition["condition_prometheus_query_language"]
    query = unescape(promql["query"])
    assert "dataflow_googleapis_com:job_user_counter" in query
    assert f'metric_name="{metrics.DEAD_LETTERS_INSERTED}"' in query
    (condition,) = policies["subscription_backlog_age"]["conditions"]
    (threshold,) = condition["condition_threshold"]
    assert "pubsub.googleapis.com/subscription/oldest_unacked_message_age" in threshold["filter"]
    assert "${module.pubsub.subscription_name}" in threshold["filter"]
    for policy in policies.values():
        assert policy["notification_channels"] == "${var.notification_channels}"


# --- agreement with make/dataflow.mk


def _make_defaults() -> dict[str, str]:
    text = DATAFLOW_MK.read_text(encoding="utf-8")
    return dict(re.findall(r"^([A-Z][A-Z_]*) \?= ?(.*)$", text, re.MULTILINE))


def _expand(value: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: variables[m[1]], value)


def test_make_env_output_sets_variables_make_reads() -> None:
    value = named(TERRAFORM, "output")["make_env"]["value"]
    keys = re.findall(r"^(\w+) := ", value, re.MULTILINE)
    assert keys and set(keys) <= set(_make_defaults())
    assert {"PROJECT", "REGION", "BUCKET", "SERVICE_ACCOUNT", "SUBSCRIPTION", "DATASET"} <= set(
        keys
    )


def test_make_defaults_name_what_terraform_creates_by_default() -> None:
    variables = named(TERRAFORM, "variable")
    make = _make_defaults()
    prefix = variables["name_prefix"]["default"]
    assert make["NAME_PREFIX"] == prefix
    assert make["DATASET"] == variables["dataset_id"]["default"]
    assert make["STAGING_DATASET"] == variables["staging_dataset_id"]["default"]
    values = {**make, "PROJECT": "my-project", "REGION": "europe-west1", "IMAGE_TAG": "t"}

    def terraform(expression: str) -> str:
        return expression.replace("${var.name_prefix}", prefix).replace(
            "${var.project_id}", "my-project"
        )

    pubsub = named(TERRAFORM, "module")["pubsub"]
    assert _expand(make["SUBSCRIPTION"], values) == (
        "projects/my-project/subscriptions/" + terraform(pubsub["subscription_name"])
    )
    assert _expand(make["BUCKET"], values) == terraform("${var.project_id}-${var.name_prefix}")
    assert "${var.project_id}-${var.name_prefix}" in terraform_locals(TERRAFORM)["bucket_name"]
    account = resources(TERRAFORM, "google_service_account")["worker"]["account_id"]
    assert _expand(make["SERVICE_ACCOUNT"], values) == (
        terraform(account) + "@my-project.iam.gserviceaccount.com"
    )
    repository = resources(TERRAFORM, "google_artifact_registry_repository")["images"]
    assert _expand(make["AR_REPOSITORY"], values) == terraform(repository["repository_id"])
    assert _expand(make["JOB_NAME"], values) == f"{prefix}-streaming"
    assert '"${var.name_prefix}-streaming"' in _job()["name"].replace("\\", "")

"""The dashboard (terraform/dashboard.tf) and the alert policies (terraform/monitoring.tf) compared
with the package, offline, as tests/test_terraform.py reads the HCL: every Beam counter they name
is one the pipeline declares in pipeline/metrics.py, the dashboard shows the run summary's
counters, the cost meter, the backlog and the lag, and the bytes-billed alert divides the two
counters the cost meter adds to. A renamed counter fails here instead of leaving a flat chart."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline import metrics
from tests.terraform_hcl import ROOT, TERRAFORM, named, parse, resources, unescape

# How Dataflow exports a Beam Distribution to Cloud Monitoring: four user counters, the
# distribution's name with these suffixes (Dataflow's guide "Use Cloud Monitoring for Dataflow
# pipelines", custom metrics; apache_beam/runners/dataflow/dataflow_metrics.py reads them back).
DISTRIBUTION_SUFFIXES = ("_MEAN", "_MAX", "_MIN", "_COUNT")

# A counter named in a Cloud Monitoring filter or MQL (metric.labels.metric_name = "x") or in
# PromQL (metric_name="x"). Every mention of metric_name must be one of these, with the name
# written out: a regex matcher or an interpolated name would escape the check.
_FILTER = re.compile(
    r"""metric\.labels?\.(?:"metric_name"|metric_name)\s*(==|=)\s*["']([^"']*)["']"""
)
_PROMQL = re.compile(r"""metric_name\s*(=~|!~|!=|=)\s*"([^"]*)\"""")
_NAME = re.compile(r"[a-z][a-z0-9_]*(?:_(?:MEAN|MAX|MIN|COUNT))?")

DASHBOARD = TERRAFORM / "dashboard.tf"


def _declared() -> set[str]:
    """The counter and distribution names pipeline/metrics.py declares: its string constants."""
    return {
        value
        for name, value in vars(metrics).items()
        if name.isupper() and not name.startswith("_") and name != "NAMESPACE"
        if isinstance(value, str)
    }


def _strings(node: Any) -> Iterator[str]:
    """Every string in parsed HCL (comments are not parsed)."""
    if isinstance(node, str):
        yield unescape(node)
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _counters_named(path: Path) -> list[str]:
    names: list[str] = []
    for text in _strings(parse(path)):
        mentions = text.count("metric_name")
        found = [(m[1], m[2]) for m in _FILTER.finditer(text)]
        rest = _FILTER.sub("", text)
        found += [(m[1], m[2]) for m in _PROMQL.finditer(rest)]
        rel = path.relative_to(ROOT)
        assert len(found) == mentions, f"{rel}: metric_name used other than as name = literal"
        for operator, name in found:
            assert operator in ("=", "=="), f"{rel}: match {name!r} exactly, not with {operator}"
            assert _NAME.fullmatch(name), f"{rel}: {name!r} is not a counter's name written out"
            names.append(name)
    return names


def _split(name: str) -> tuple[str, str]:
    """A named series as (the pipeline's metric, the distribution suffix or '')."""
    for suffix in DISTRIBUTION_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix), suffix
    return name, ""


def _all_named() -> dict[str, list[str]]:
    return {
        str(path.relative_to(ROOT)): _counters_named(path)
        for path in sorted(TERRAFORM.glob("*.tf"))
    }


def _dashboard_metrics() -> set[str]:
    return {_split(name)[0] for name in _counters_named(DASHBOARD)}


class _Recording(Mapping[str, int]):
    """Counters with no values that remember which ones were read."""

    def __init__(self) -> None:
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> int:
        self.read.add(key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _run_summary_counters() -> set[str]:
    counters = _Recording()
    metrics.RunSummary(counters).render()
    return counters.read


# --- every name is the pipeline's


def test_every_counter_the_terraform_names_is_one_the_pipeline_declares() -> None:
    declared = _declared()
    assert len(declared) > 10, "pipeline/metrics.py's constants were not found"
    named_by_file = _all_named()
    assert named_by_file["terraform/dashboard.tf"] and named_by_file["terraform/monitoring.tf"]
    unknown = [
        f"{path}: {name}"
        for path, names in named_by_file.items()
        for name in names
        if _split(name)[0] not in declared
    ]
    assert not unknown, "counters pipeline/metrics.py does not declare:\n" + "\n".join(unknown)


def test_a_metric_is_charted_as_a_counter_or_as_a_distribution_never_both() -> None:
    """Dataflow exports a Distribution only under its suffixed names and a Counter only under its
    own: a name used both ways charts nothing on one side."""
    bare: set[str] = set()
    suffixed: set[str] = set()
    for names in _all_named().values():
        for name in names:
            metric, suffix = _split(name)
            (suffixed if suffix else bare).add(metric)
    assert not bare & suffixed, sorted(bare & suffixed)


# --- what the dashboard shows


def test_the_dashboard_is_json_built_from_hcl_in_a_mosaic_with_sections() -> None:
    (dashboard,) = resources(TERRAFORM, "google_monitoring_dashboard").values()
    assert dashboard["project"] == "${var.project_id}"
    built = unescape(dashboard["dashboard_json"])
    assert built.startswith("${jsonencode({") and "mosaicLayout" in built, built
    text = DASHBOARD.read_text(encoding="utf-8")
    assert "sectionHeader" in text and "xyChart" in text and "prometheusQuery" in text
    sections = parse(DASHBOARD)["locals"][0]["dashboard_sections"]
    assert len(sections) >= 4
    for section in sections:
        assert section["title"] and section["subtitle"] and section["charts"]
        for chart in section["charts"]:
            assert chart["title"] and chart["y_axis"] and chart["unit"] and chart["series"]
            for series in chart["series"]:
                assert series["legend"] and series["query"], chart["title"]


def test_the_dashboard_watches_the_jobs_and_the_subscription_the_alerts_watch() -> None:
    dashboard_locals = parse(DASHBOARD)["locals"][0]
    assert dashboard_locals["dashboard_jobs"] == (
        'monitored_resource="dataflow_job",job_name=~"${local.job_name_prefix}.*"'
    )
    assert dashboard_locals["dashboard_subscription"] == (
        'monitored_resource="pubsub_subscription",'
        'subscription_id="${module.pubsub.subscription_name}"'
    )
    queries = "\n".join(_strings(dashboard_locals["dashboard_sections"]))
    for metric in (
        "dataflow_googleapis_com:job_user_counter{",
        "dataflow_googleapis_com:job_system_lag{${local.dashboard_jobs}}",
        "dataflow_googleapis_com:job_data_watermark_age{${local.dashboard_jobs}}",
        "pubsub_googleapis_com:subscription_oldest_unacked_message_age{${local.dashboard_subscription}}",
        "pubsub_googleapis_com:subscription_num_undelivered_messages{${local.dashboard_subscription}}",
    ):
        assert metric in queries, metric
    for query in re.findall(r"job_user_counter\{[^}]*\}", queries):
        assert "${local.dashboard_jobs}" in query, query


def test_the_dashboard_shows_the_run_summarys_counters() -> None:
    shown = _dashboard_metrics()
    assert len(shown & _declared()) >= 6
    summary = _run_summary_counters()
    assert len(summary) > 6
    # Only the DuckDB warehouse falls back to an unrestricted merge: a BigQuery job counts none.
    missing = summary - {metrics.MERGE_FALLBACKS} - shown
    assert not missing, f"the run summary reports counters the dashboard does not chart: {missing}"


def test_the_dashboard_charts_the_cost_meter_of_merge_cycles() -> None:
    named = set(_counters_named(DASHBOARD))
    # Counters: charted as rates, and bytes billed per cycle.
    assert {metrics.MERGE_CYCLE_BYTES_BILLED, metrics.MERGE_CYCLE_SLOT_MS} <= named
    # Distributions: what Dataflow exports of them.
    for distribution in (metrics.MERGE_CYCLE_SECONDS, metrics.MERGE_CYCLE_LAG_SECONDS):
        assert {f"{distribution}_MEAN", f"{distribution}_MAX"} <= named, distribution
    per_cycle = [
        query
        for query in _strings(parse(DASHBOARD)["locals"][0]["dashboard_sections"])
        if f'"{metrics.MERGE_CYCLE_BYTES_BILLED}"' in query and f'"{metrics.MERGE_CYCLES}"' in query
    ]
    assert len(per_cycle) == 1 and "[${local.cycle_cost_window_minutes}m]" in per_cycle[0]


# --- the bytes-billed alert


def test_the_bytes_billed_alert_divides_bytes_by_cycles_against_the_cost_model() -> None:
    policy = resources(TERRAFORM, "google_monitoring_alert_policy")["merge_cycle_bytes_billed"]
    assert policy["notification_channels"] == "${var.notification_channels}"
    (condition,) = policy["conditions"]
    (promql,) = condition["condition_prometheus_query_language"]
    query = " ".join(unescape(promql["query"]).split())
    window = "[${local.cycle_cost_window_minutes}m]"
    bytes_billed = f'metric_name="{metrics.MERGE_CYCLE_BYTES_BILLED}"'
    cycles = f'metric_name="{metrics.MERGE_CYCLES}"'
    numerator, denominator = query.split(" / ")
    assert bytes_billed in numerator and window in numerator and "delta(" in numerator
    assert cycles in denominator and window in denominator and ") > 0 )" in denominator
    assert query.endswith("> ${var.expected_cycle_bytes_billed * var.cycle_bytes_alert_factor}")
    assert "bench.cost_model" in policy["documentation"][0]["content"]

    variables = named(TERRAFORM, "variable")
    expected = variables["expected_cycle_bytes_billed"]
    assert expected["type"] == "number" and expected["default"] > 0
    assert (
        "bench.cost_model" in expected["description"]
        and "cycle_bytes_billed" in (expected["description"])
    )
    factor = variables["cycle_bytes_alert_factor"]
    assert factor["type"] == "number" and factor["default"] == 2

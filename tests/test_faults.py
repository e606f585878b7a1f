"""Injected faults, on each warehouse, end with tables equal to the ground truth: a failure before
staging, after staging, after the MERGE committed but before the bundle completed, a warehouse
unreachable for a while (retried with backoff, then a loud failure), and a batch process killed
with SIGKILL mid-run and started again. Faults go through seams around the real clients."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import metrics
from pipeline.sinks.bigquery.appends import STAGED_EVENTS
from pipeline.sinks.warehouse import WarehouseFactory
from pipeline.tools.generate import GeneratorConfig, generate, write
from pipeline.tools.reconcile import Report, Truth, check_invariants, check_truth, fetch_tables
from tests.faults import FaultPlan, FaultyWarehouseFactory
from tests.helpers import read_tables, run_lines
from tests.warehouses import WAREHOUSES, another_run, command_line_warehouse, count_rows

# Each warehouse's faults: around a staged append and a merge cycle, and inside the cycle's
# transaction (DuckDB: its ledger MERGE fails with a conflict; BigQuery: the cycle's script is
# aborted at its commit by a concurrent update), both transient.
_STAGED = ["before_stage", "after_stage", "before_cycle", "after_cycle", "dead_letters_before"]
FAULTS = {
    "bigquery": [*_STAGED, "fails_before_commit:cycle"],
    "duckdb": [*_STAGED, "after_staging"],
}
BEFORE_WRITE = "before_stage"
AFTER_COMMIT = "after_cycle"


@pytest.fixture(scope="module")
def dataset() -> tuple[list[bytes], Truth]:
    config = GeneratorConfig(events=200, seed=31, files=1, accounts=20, span_hours=2)
    lines, truth = generate(config)
    return [line.payload for line in lines], Truth(truth.versions, truth.malformed, len(lines))


def _exact(factory: WarehouseFactory, truth: Truth) -> list[str]:
    warehouse = factory()
    try:
        report = Report()
        tables = fetch_tables(warehouse)
        check_invariants(tables, report)
        check_truth(tables, truth, report)
        return report.problems
    finally:
        warehouse.close()


@pytest.mark.parametrize(
    ("warehouse", "fault"),
    [(kind, fault) for kind in WAREHOUSES for fault in FAULTS[kind]],
    indirect=["warehouse"],
)
def test_transient_faults_are_retried_in_place_and_end_exact(
    dataset: tuple[list[bytes], Truth], warehouse: WarehouseFactory, tmp_path: Path, fault: str
) -> None:
    lines, truth = dataset
    plan = FaultPlan(str(tmp_path / "faults.json")).arm(fault, times=2)
    summary = run_lines(lines, FaultyWarehouseFactory(warehouse, plan))
    assert plan.fired(fault) == 2
    assert summary.get(metrics.MERGE_RETRIES) >= 2
    assert _exact(warehouse, truth) == []


def test_a_failure_after_commit_fails_loudly_and_the_same_run_again_is_exact(
    dataset: tuple[list[bytes], Truth], warehouse: WarehouseFactory, tmp_path: Path
) -> None:
    lines, truth = dataset
    fault = AFTER_COMMIT
    plan = FaultPlan(str(tmp_path / "faults.json")).arm(fault, times=1)
    with pytest.raises(Exception, match=fault):
        run_lines(lines, FaultyWarehouseFactory(warehouse, plan, transient=False))
    assert plan.fired(fault) == 1
    assert read_tables(warehouse)["transaction_events"], "the failing merge had committed"
    run_lines(lines, warehouse)  # the operator runs the same command again
    assert _exact(warehouse, truth) == []


def test_an_unreachable_warehouse_is_retried_then_fails_loudly_then_recovers(
    dataset: tuple[list[bytes], Truth], warehouse: WarehouseFactory, tmp_path: Path
) -> None:
    lines, truth = dataset
    fault = BEFORE_WRITE
    plan = FaultPlan(str(tmp_path / "faults.json")).arm(fault, times=1000)
    with pytest.raises(Exception, match=fault):
        run_lines(lines, FaultyWarehouseFactory(warehouse, plan), merge_retries=2)
    assert plan.fired(fault) == 3  # the first try and two retries, with backoff
    assert read_tables(warehouse)["transaction_events"] == []  # failed loudly, wrote nothing
    plan.arm(fault, times=4)  # down for a while, then back within the retries
    run_lines(lines, FaultyWarehouseFactory(warehouse, plan), merge_retries=5)
    assert _exact(warehouse, truth) == []


def _cli(files: str, warehouse_url: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "pipeline", f"--input_files={files}",
        f"--warehouse={warehouse_url}", "--max_batch_rows=200", *extra,
    ]  # fmt: skip


def _staged(factory: WarehouseFactory) -> int:
    """Rows waiting in the warehouse's staging table."""
    warehouse = factory()
    try:
        return count_rows(warehouse, STAGED_EVENTS.name, staging=True)
    finally:
        warehouse.close()


@pytest.mark.parametrize("kind", WAREHOUSES)
def test_a_batch_run_killed_mid_way_then_run_again_is_exact(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    lines, truth_data = generate(GeneratorConfig(events=6000, seed=32, files=4))
    write(lines, truth_data, str(tmp_path / "events"), files=4)
    truth = Truth(truth_data.versions, truth_data.malformed, len(lines))
    target = command_line_warehouse(kind, tmp_path, request)
    url, environment, factory = target.url, target.environment, target.factory
    files = f"{tmp_path}/events/events-*.jsonl"

    process = subprocess.Popen(
        _cli(files, url, "--log_level=INFO"), stderr=subprocess.PIPE, text=True, env=environment
    )
    # Killed after the third staged append, so the run dies with rows staged and none merged
    # (its merge cycle comes at the end).
    written = 0
    assert process.stderr is not None
    for line in process.stderr:
        written += "Staged a batch" in line
        if written == 3:
            process.kill()  # SIGKILL: no cleanup, a batch may be half-way
            break
    process.wait()
    assert written == 3, "the run ended before it could be killed mid-way"
    assert read_tables(factory)["transaction_events"] == [], "killed before its merge cycle"
    assert 0 < _staged(factory) < len(lines), "killed mid-way through staging"

    again = subprocess.run(
        _cli(files, url), capture_output=True, text=True, check=False, env=environment
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert _exact(another_run(factory), truth) == []

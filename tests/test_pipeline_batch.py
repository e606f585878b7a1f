"""The whole pipeline on bounded input into a real DuckDB warehouse: effectively-once under
re-runs, shuffles, re-splits, extra copies and sink failures."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from pipeline import metrics
from pipeline.sinks.warehouse import WarehouseFactory
from pipeline.tools.generate import GeneratorConfig, generate
from pipeline.tools.reconcile import Report, Truth, check_invariants, check_truth, fetch_tables
from tests.helpers import read_tables, run_lines
from tests.warehouses import EmulatorWarehouse, duckdb_factory


def _dataset(events: int = 600, seed: int = 3, **rates: float) -> tuple[list[bytes], Truth]:
    config = GeneratorConfig(events=events, seed=seed, files=1, accounts=40, span_hours=2, **rates)
    lines, truth = generate(config)
    return [line.payload for line in lines], Truth(truth.versions, truth.malformed, len(lines))


@pytest.fixture(scope="module")
def dataset() -> tuple[list[bytes], Truth]:
    return _dataset()


def _reconcile(factory: WarehouseFactory, truth: Truth | None) -> list[str]:
    warehouse = factory()
    try:
        report = Report()
        tables = fetch_tables(warehouse)
        check_invariants(tables, report)
        if truth is not None:
            check_truth(tables, truth, report)
        return report.problems
    finally:
        warehouse.close()


def _accounting_holds(summary: metrics.RunSummary) -> None:
    """Every line read ends in exactly one outcome."""
    assert summary.get(metrics.LINES_READ) == (
        summary.get(metrics.LEDGER_INSERTED)
        + summary.identical_duplicates
        + summary.get(metrics.CONFLICTS)
        + summary.get(metrics.DEAD_LETTERS_PARSE)
    )


def test_generated_input_reconciles_with_its_ground_truth(
    dataset: tuple[list[bytes], Truth], warehouse: WarehouseFactory
) -> None:
    lines, truth = dataset
    summary = run_lines(lines, warehouse)
    assert _reconcile(warehouse, truth) == []
    assert summary.get(metrics.LINES_READ) == len(lines)
    assert summary.get(metrics.LEDGER_INSERTED) == len(truth.versions)
    assert summary.get(metrics.CONFLICTS) == sum(len(v) - 1 for v in truth.versions.values())
    assert summary.get(metrics.DEAD_LETTERS_PARSE) == len(truth.malformed)
    _accounting_holds(summary)


def test_running_again_changes_nothing(
    dataset: tuple[list[bytes], Truth], warehouse: WarehouseFactory
) -> None:
    lines, _ = dataset
    run_lines(lines, warehouse)
    first = read_tables(warehouse, drop=())
    summary = run_lines(lines, warehouse)
    assert read_tables(warehouse, drop=()) == first  # audit timestamps included
    assert summary.get(metrics.LEDGER_INSERTED) == 0
    assert summary.get(metrics.DEAD_LETTERS_INSERTED) == 0
    assert summary.get(metrics.TRANSACTIONS_UPSERTED) == 0
    assert summary.get(metrics.WINDOW_TOTALS_UPSERTED) == 0
    _accounting_holds(summary)


def _small_batches(warehouse: WarehouseFactory) -> dict[str, int]:
    """Many small batches where a batch is cheap (DuckDB); the emulator's default otherwise."""
    return {} if isinstance(warehouse, EmulatorWarehouse) else {"max_batch_rows": 17}


def _noisy(lines: list[bytes], seed: int) -> list[list[bytes]]:
    """The same input shuffled, with 30% extra copies, split into three parts."""
    rng = random.Random(seed)
    noisy = lines + rng.sample(lines, k=len(lines) * 3 // 10)
    rng.shuffle(noisy)
    third = len(noisy) // 3
    return [noisy[:third], noisy[third : 2 * third], noisy[2 * third :]]


def test_replaying_shuffled_resplit_duplicated_input_changes_nothing(
    dataset: tuple[list[bytes], Truth], warehouse: WarehouseFactory
) -> None:
    lines, truth = dataset  # with conflicting versions: the first committed one stays
    run_lines(lines, warehouse)
    first = read_tables(warehouse, drop=())
    seeds = (1, 2, 3) if not isinstance(warehouse, EmulatorWarehouse) else (1,)  # slow emulator
    for seed in seeds:
        for part in _noisy(lines, seed):
            summary = run_lines(part, warehouse, **_small_batches(warehouse))
            assert summary.get(metrics.LEDGER_INSERTED) == 0
            assert summary.get(metrics.DEAD_LETTERS_INSERTED) == 0
    assert read_tables(warehouse, drop=()) == first
    assert _reconcile(warehouse, truth) == []


def test_any_order_and_split_into_a_fresh_warehouse_gives_identical_tables(
    tmp_path: Path,
) -> None:
    # Without conflicting versions the tables are fully determined by the input. (With them,
    # which version lands depends on which run commits first: see test_conflicts_*.)
    lines, truth = _dataset(events=500, seed=4, conflict_rate=0.0)
    clean = duckdb_factory(str(tmp_path / "clean.duckdb"))
    run_lines(lines, clean)
    for seed in (1, 2):
        replayed = duckdb_factory(str(tmp_path / f"replayed-{seed}.duckdb"))
        for part in reversed(_noisy(lines, seed)):
            run_lines(part, replayed, max_batch_rows=17)
        assert read_tables(replayed) == read_tables(clean)
        assert _reconcile(replayed, truth) == []


def test_conflicts_split_across_runs_still_land_exactly_one_version(
    dataset: tuple[list[bytes], Truth], warehouse: WarehouseFactory
) -> None:
    lines, truth = dataset
    for part in _noisy(lines, seed=9):
        run_lines(part, warehouse, **_small_batches(warehouse))
    assert _reconcile(warehouse, truth) == []


def test_stateful_and_grouped_dedup_give_the_same_tables(tmp_path: Path) -> None:
    lines, truth = _dataset(events=300, seed=5, conflict_rate=0.0)
    tables = []
    for strategy in ("grouped", "stateful"):
        factory = duckdb_factory(str(tmp_path / f"{strategy}.duckdb"))
        summary = run_lines(lines, factory, dedup_strategy=strategy)
        _accounting_holds(summary)
        assert _reconcile(factory, truth) == []
        tables.append(read_tables(factory))
    assert tables[0] == tables[1]


def test_stateful_dedup_with_conflicts_reconciles(tmp_path: Path) -> None:
    lines, truth = _dataset(events=300, seed=8, conflict_rate=0.05)
    factory = duckdb_factory(str(tmp_path / "stateful.duckdb"))
    _accounting_holds(run_lines(lines, factory, dedup_strategy="stateful"))
    assert _reconcile(factory, truth) == []

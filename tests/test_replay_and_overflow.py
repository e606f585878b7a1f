"""Replays and aggregates that cannot fit, end to end through files (as `python -m pipeline` reads
them): the same input three times, each shuffled, with 30% extra duplicates and split into many
small files, gives identical tables; a window whose total overflows NUMERIC(38, 9) is flagged,
not a crash loop."""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path

import apache_beam as beam

from pipeline import metrics
from pipeline.metrics import RunSummary, read_counters
from pipeline.run import build_pipeline
from pipeline.sinks.warehouse import WarehouseFactory
from pipeline.tools.generate import GeneratorConfig, generate
from pipeline.tools.reconcile import Report, Truth, check_invariants, check_truth, fetch_tables
from tests.helpers import event_line, pipeline_options, read_tables
from tests.warehouses import another_run, duckdb_factory


def run_files(pattern: str, factory: WarehouseFactory) -> RunSummary:
    """The pipeline reading real files through its own source, as the command line does."""
    options = pipeline_options(input_files=pattern, max_batch_rows=200)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, options, warehouse=another_run(factory))
    result = pipeline.run()
    result.wait_until_finish()
    return RunSummary(read_counters(result))


def _write_variant(lines: list[bytes], folder: Path, seed: int) -> str:
    """Shuffled, 30% extra copies, split into 40 to 80 small files of uneven sizes."""
    rng = random.Random(seed)
    noisy = lines + rng.sample(lines, k=len(lines) * 3 // 10)
    rng.shuffle(noisy)
    cuts = sorted(rng.sample(range(1, len(noisy)), k=rng.randint(40, 80)))
    folder.mkdir(parents=True)
    for index, (start, end) in enumerate(zip([0, *cuts], [*cuts, len(noisy)], strict=True)):
        (folder / f"part-{index:04d}.jsonl").write_bytes(b"\n".join(noisy[start:end]) + b"\n")
    return f"{folder}/part-*.jsonl"


def test_three_replays_shuffled_duplicated_and_resplit_give_identical_tables(
    tmp_path: Path,
) -> None:
    generated, truth_data = generate(GeneratorConfig(events=1500, seed=41, files=1, accounts=40))
    lines = [line.payload for line in generated]
    truth = Truth(truth_data.versions, truth_data.malformed, len(lines))

    clean = duckdb_factory(str(tmp_path / "clean.duckdb"))
    clean_folder = tmp_path / "clean"
    clean_folder.mkdir()
    (clean_folder / "all.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    run_files(f"{clean_folder}/all.jsonl", clean)
    expected = read_tables(clean)

    together = duckdb_factory(str(tmp_path / "together.duckdb"))
    for seed in (1, 2, 3):
        pattern = _write_variant(lines, tmp_path / f"variant-{seed}", seed)
        alone = duckdb_factory(str(tmp_path / f"alone-{seed}.duckdb"))
        summary = run_files(pattern, alone)
        # Each replay on its own: conflicting versions are all in the run, so the bounded path
        # picks the same winner every time and the tables are identical to the clean run's.
        assert read_tables(alone) == expected
        assert summary.get(metrics.LINES_READ) == len(lines) + len(lines) * 3 // 10
        run_files(pattern, together)
    # And the three replays one after another into one warehouse change nothing either.
    assert read_tables(together) == expected
    report = Report()
    tables = fetch_tables(together())
    check_invariants(tables, report)
    check_truth(tables, truth, report)
    assert report.problems == []


def _totals_by_minute(factory: WarehouseFactory) -> dict[int, dict[str, object]]:
    return {
        row["window_start"].minute: row for row in read_tables(factory)["account_window_totals"]
    }


def test_a_window_total_that_overflows_numeric_is_flagged_not_a_crash(tmp_path: Path) -> None:
    big = "90000000000000000000000000000"  # 9e28: two of them do not fit NUMERIC(38, 9)
    lines = [
        event_line("big-1", transaction_id="t1", amount=big, event_time="2026-01-01T00:00:01Z"),
        event_line("big-2", transaction_id="t2", amount=big, event_time="2026-01-01T00:00:02Z"),
        event_line("small", transaction_id="t3", amount="1.5", event_time="2026-01-01T00:01:00Z"),
    ]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    factory = duckdb_factory(str(tmp_path / "w.duckdb"))
    summary = run_files(f"{tmp_path}/in.jsonl", factory)
    assert summary.get(metrics.LEDGER_INSERTED) == 3  # the events themselves are exact
    totals = {
        row["window_start"].minute: row for row in read_tables(factory)["account_window_totals"]
    }
    assert (totals[0]["event_count"], totals[0]["total_amount"], totals[0]["total_overflow"]) == (
        2,
        None,
        True,
    )
    assert (totals[1]["total_amount"], totals[1]["total_overflow"]) == (Decimal("1.5"), False)
    # A later negative event brings the window back into range: recomputed exactly.
    (tmp_path / "more.jsonl").write_bytes(
        event_line("neg", transaction_id="t4", amount="-" + big,
                   event_time="2026-01-01T00:00:03Z") + b"\n"
    )  # fmt: skip
    run_files(f"{tmp_path}/more.jsonl", factory)
    totals = {
        row["window_start"].minute: row for row in read_tables(factory)["account_window_totals"]
    }
    assert (totals[0]["event_count"], totals[0]["total_amount"]) == (3, Decimal(big))

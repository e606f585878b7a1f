"""The command line as a user runs it (``python -m pipeline``, the generator, reconcile), in
subprocesses against real files and a real DuckDB file; and reconcile catching tampering."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from pipeline import metrics
from pipeline.tools.generate import GeneratorConfig, generate
from tests.helpers import event_line


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_generator_is_deterministic_per_seed() -> None:
    config = GeneratorConfig(events=300, seed=5, files=1)
    first, _ = generate(config)
    second, _ = generate(config)
    other, _ = generate(GeneratorConfig(events=300, seed=6, files=1))
    assert [line.payload for line in first] == [line.payload for line in second]
    assert [line.payload for line in first] != [line.payload for line in other]


def test_generator_writes_every_kind_of_trouble(tmp_path: Path) -> None:
    config = GeneratorConfig(events=2000, seed=1, files=1, accounts=50)
    lines, truth = generate(config)
    payloads = [line.payload for line in lines]
    assert len(truth.versions) == 2000
    assert len(payloads) > 2000 + len(truth.malformed)  # duplicates and conflicting versions
    assert any(len(v) > 1 for v in truth.versions.values())  # conflicts
    assert {name for _, name in truth.malformed} >= {"payload", "amount", "currency", "event_time"}
    times = [line.arrival for line in lines]
    assert times == sorted(times)  # written in arrival order, which is not event order


@pytest.fixture(scope="module")
def generated_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Generate 3000 events, run the pipeline CLI on them into a DuckDB file."""
    folder = tmp_path_factory.mktemp("run")
    result = _run(
        "-m",
        "pipeline.tools.generate",
        "--out",
        str(folder / "events"),
        "--events",
        "3000",
        "--files",
        "3",
        "--seed",
        "2",
    )
    assert result.returncode == 0, result.stderr
    database = folder / "warehouse.duckdb"
    result = _run(
        "-m",
        "pipeline",
        f"--input_files={folder}/events/events-*.jsonl",
        f"--warehouse=duckdb:{database}",
    )
    assert result.returncode == 0, result.stderr
    assert "Run summary" in result.stdout
    return database, folder / "events" / "truth.jsonl"


def test_reconcile_passes_on_the_pipeline_output(generated_run: tuple[Path, Path]) -> None:
    database, truth = generated_run
    result = _run(
        "-m", "pipeline.tools.reconcile", "--warehouse", f"duckdb:{database}", "--truth", str(truth)
    )
    assert result.returncode == 0, result.stdout
    assert "OK: every check passed" in result.stdout


TAMPERING = [
    (
        "UPDATE account_window_totals SET total_amount = total_amount + 0.000000001"
        " WHERE rowid = (SELECT min(rowid) FROM account_window_totals)",
        "window",
    ),
    (
        "DELETE FROM transaction_events WHERE rowid = (SELECT min(rowid) FROM transaction_events)",
        "missing from the ledger",
    ),
    (
        "UPDATE transactions SET status = 'PENDING', event_id = 'x' WHERE rowid ="
        " (SELECT min(rowid) FROM transactions WHERE status <> 'PENDING')",
        "differs",
    ),
    (
        "DELETE FROM dead_letters WHERE stage = 'parse' AND rowid ="
        " (SELECT min(rowid) FROM dead_letters WHERE stage = 'parse')",
        "not in dead_letters",
    ),
]


@pytest.mark.parametrize(("statement", "complaint"), TAMPERING)
def test_reconcile_catches_tampering(
    generated_run: tuple[Path, Path], tmp_path: Path, statement: str, complaint: str
) -> None:
    database, truth = generated_run
    copy = tmp_path / "tampered.duckdb"
    copy.write_bytes(database.read_bytes())
    with duckdb.connect(str(copy)) as connection:
        connection.execute(statement)
    result = _run(
        "-m", "pipeline.tools.reconcile", "--warehouse", f"duckdb:{copy}", "--truth", str(truth)
    )
    assert result.returncode == 1
    assert "MISMATCHES" in result.stdout
    assert complaint in result.stdout


def test_bad_input_does_not_fail_the_run(tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    # CRLF line endings, a blank line, bytes that are not UTF-8, and one good event.
    data.write_bytes(event_line("e1") + b"\r\n" + b"\r\n" + b"\xff\xfe\r\n" + b"{bad json\n")
    database = tmp_path / "w.duckdb"
    result = _run("-m", "pipeline", f"--input_files={data}", f"--warehouse=duckdb:{database}")
    assert result.returncode == 0, result.stderr
    with duckdb.connect(str(database), read_only=True) as connection:
        assert connection.execute("SELECT event_id FROM transaction_events").fetchall() == [("e1",)]
        errors = sorted(
            r[0] for r in connection.execute("SELECT error FROM dead_letters").fetchall()
        )
    assert errors == [
        "payload: empty",
        "payload: not JSON (Expecting property name enclosed in double quotes at 1)",
        "payload: not UTF-8 (byte 0)",
    ]
    assert re.search(r"^  lines read +4$", result.stdout, re.MULTILINE), result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "exactly one of --input_files, --input_subscription, --input_topic"),
        (["--input_files=x", "--input_topic=projects/local-project/topics/t1"], "exactly one"),
        (["--input_subscription=subs/x"], "--input_subscription must be"),
        (["--input_files=x", "--warehouse=postgres:db"], "--warehouse must be"),
        (["--input_files=x", "--window_size_seconds=0"], "--window_size_seconds"),
        (["--input_files=x", "--dedup_ttl_seconds=-1"], "--dedup_ttl_seconds"),
        (["--input_files=x", "--batch_slice_seconds=7"], "--batch_slice_seconds must divide"),
        (["--input_files=x", "--batch_slice_seconds=0"], "--batch_slice_seconds must divide"),
        (["--input_files=x", "--batch_slice_seconds=172800"], "--batch_slice_seconds must"),
        (
            ["--input_files=x", "--bigquery_staging_dataset=my-project.staging"],
            "applies only to --warehouse=bigquery",
        ),
        (
            [
                "--input_files=x",
                "--warehouse=bigquery:my-project.ledger",
                "--bigquery_staging_dataset=staging-without-project",
            ],
            "--bigquery_staging_dataset must be PROJECT.DATASET",
        ),
        (
            ["--input_files=x", "--bigquery_location=EU", "--bigquery_create_datasets"],
            "--bigquery_location, --bigquery_create_datasets applies only to --warehouse=bigquery",
        ),
        (
            ["--input_files=x", "--warehouse=bigquery:my-project.l", "--bigquery_location=e u"],
            "--bigquery_location must be a BigQuery location",
        ),
        (
            ["--input_files=x", "--bigquery_dedup_horizon_days=7"],
            "--bigquery_dedup_horizon_days applies only to --warehouse=bigquery",
        ),
        (
            [
                "--input_files=x",
                "--warehouse=bigquery:my-project.l",
                "--bigquery_dedup_horizon_days=-1",
            ],
            "--bigquery_dedup_horizon_days must be 0 (the whole ledger) to 3650",
        ),
    ],
)
def test_invalid_options_fail_fast(args: list[str], message: str) -> None:
    result = _run("-m", "pipeline", *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_the_summary_reports_staged_appends_and_merge_cycles() -> None:
    counters = {metrics.ROWS_STAGED: 12, metrics.MERGE_CYCLES: 2, metrics.MERGE_RETRIES: 1}
    last = metrics.RunSummary(counters).render().splitlines()[-1].strip()
    assert last.startswith("rows staged, merge cycles (retries, unrestricted fallbacks)")
    assert last.endswith("12, 2 (1, 0)")

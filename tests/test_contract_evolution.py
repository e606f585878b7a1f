"""Adapting the contract, as a data engineer does it: a copy of the project with fields added to
the one file (pipeline/contract.py) and the one command run (``python -m pipeline.tools.schemas``,
``make contract``), launched with ``python -m pipeline`` on a warehouse this version wrote.

A new optional field evolves the warehouse by itself: its column is added at start-up (on BigQuery
through the production rules, with the worker's own roles), events from before the change still
land, and the field reaches the ledger and ``transactions``. A new required field is refused at
start-up with what to do, before anything is written. The other refusals (a removed field, a
changed kind, a field made required) are tested on DuckDB's real tables below."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from pipeline.sinks.duckdb import DuckDBWarehouse
from pipeline.sinks.schema_evolution import MigrationNeeded
from pipeline.tables import TRANSACTION_EVENTS
from tests.helpers import event_line
from tests.warehouses import CommandLineWarehouse, command_line_warehouse

ROOT = Path(__file__).resolve().parents[1]
_ANCHOR = '    event_time: Annotated[dt.datetime, Timestamp("When the event happened, UTC.")]\n'
OPTIONAL_FIELDS = """\
    merchant_category: Annotated[
        str | None,
        Text("Merchant category code.", max_length=4, pattern="[0-9]{4}", examples=("5411",)),
    ] = None
    tip: Annotated[Decimal | None, Money("Tip on top of the amount, exact.")] = None
    settled_at: Annotated[dt.datetime | None, Timestamp("When the payment settled, UTC.")] = None
    channel: Annotated[str | None, OneOf("Where the payment was made.", ("WEB", "POS"))] = None
"""
REQUIRED_FIELD = '    merchant_id: Annotated[str, Text("Merchant the payment went to.")]\n'


def adapted_copy(tmp_path: Path, fields: str) -> Path:
    """The project's package copied, ``fields`` added after event_time in its contract, and the
    command run that regenerates the files derived from it."""
    project = tmp_path / "adapted"
    shutil.copytree(ROOT / "pipeline", project / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    shutil.copytree(ROOT / "terraform" / "schemas", project / "terraform" / "schemas")
    contract = project / "pipeline" / "contract.py"
    text = contract.read_text(encoding="utf-8")
    assert text.count(_ANCHOR) == 1
    contract.write_text(text.replace(_ANCHOR, _ANCHOR + fields), encoding="utf-8")
    _run(project, ["-m", "pipeline.tools.schemas"], dict(os.environ)).check_returncode()
    return project


def _run(cwd: Path, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, check=False,
        timeout=600, env={**env, "PYTHONPATH": str(cwd)},
    )  # fmt: skip


def _pipeline(  # type: ignore[no-untyped-def]
    cwd: Path, target: CommandLineWarehouse, lines: list[bytes], events: Path
):
    """``python -m pipeline`` of the project in ``cwd`` on ``lines``, written to ``events``."""
    events.write_bytes(b"\n".join(lines) + b"\n")
    return _run(
        cwd,
        ["-m", "pipeline", f"--input_files={events}", f"--warehouse={target.url}"],
        target.environment,
    )


# What the adapted project reads: events with the new fields, and without them.
_AFTER = [
    event_line(
        "e3",
        transaction_id="txn-3",
        merchant_category="5411",
        tip="1.50",
        settled_at="2026-01-02T03:04:05.000006+01:00",
        channel="POS",
    ),
    event_line("e4", transaction_id="txn-2", status="POSTED", event_time="2026-01-01T00:00:20Z"),
    event_line("e1"),  # a replay of an event stored before the change
    event_line("e5", merchant_category="54"),  # breaks the new field's rule
]


@pytest.mark.parametrize("kind", ["duckdb", "bigquery"])
def test_an_optional_field_added_to_the_contract_evolves_a_warehouse_of_the_old_one(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    target = command_line_warehouse(kind, tmp_path, request)
    before = _pipeline(
        ROOT,
        target,
        [event_line("e1"), event_line("e2", transaction_id="txn-2")],
        tmp_path / "before.jsonl",
    )
    assert before.returncode == 0, before.stderr[-3000:]

    # On BigQuery the write API sees the added columns only later (write_api.py): appends naming
    # them are refused for a while, and must be retried until they land, not fail the run.
    rules = request.getfixturevalue("production_bigquery") if kind == "bigquery" else None
    write_api = rules.write_api if rules is not None else None
    project = adapted_copy(tmp_path, OPTIONAL_FIELDS)
    schema = json.loads((project / "terraform/schemas/transaction_events.json").read_text())
    assert {"name": "merchant_category", "type": "STRING", "mode": "NULLABLE"}.items() <= (
        next(c for c in schema if c["name"] == "merchant_category").items()
    )
    assert next(c for c in schema if c["name"] == "tip")["type"] == "NUMERIC"

    if write_api is not None:
        write_api.schema_lag_seconds, refused_before = 15.0, write_api.refused_unseen_columns
    try:
        after = _pipeline(project, target, _AFTER, tmp_path / "after.jsonl")
    finally:
        if write_api is not None:
            write_api.schema_lag_seconds = 0.0
    assert after.returncode == 0, after.stderr[-3000:]
    if write_api is not None:
        assert write_api.refused_unseen_columns > refused_before, "the lag was never met"

    warehouse = target.factory()
    try:
        ledger = {r["event_id"]: r for r in warehouse.fetch_rows("transaction_events")}
        transactions = {r["transaction_id"]: r for r in warehouse.fetch_rows("transactions")}
        dead = warehouse.fetch_rows("dead_letters")
    finally:
        warehouse.close()
    assert sorted(ledger) == ["e1", "e2", "e3", "e4"]
    new_fields = ("merchant_category", "tip", "settled_at", "channel")
    settled = dt.datetime(2026, 1, 2, 2, 4, 5, 6, tzinfo=dt.UTC)
    e3 = [ledger["e3"][name] for name in new_fields]
    assert [*e3[:2], e3[2].astimezone(dt.UTC), e3[3]] == ["5411", Decimal("1.5"), settled, "POS"]
    for old in ("e1", "e2", "e4"):
        assert [ledger[old][name] for name in new_fields] == [None] * 4
    assert transactions["txn-3"]["merchant_category"] == "5411"
    assert transactions["txn-3"]["tip"] == Decimal("1.5")
    assert transactions["txn-3"]["channel"] == "POS"
    assert transactions["txn-2"]["event_id"] == "e4"
    assert [(d["event_id"], d["error"].split(":")[0]) for d in dead] == [
        ("e5", "merchant_category")
    ]


@pytest.mark.parametrize("kind", ["duckdb", "bigquery"])
def test_a_new_required_field_is_refused_at_start_up_with_what_to_do(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    target = command_line_warehouse(kind, tmp_path, request)
    before = _pipeline(ROOT, target, [event_line("e1")], tmp_path / "before.jsonl")
    assert before.returncode == 0, before.stderr[-3000:]
    project = adapted_copy(tmp_path, REQUIRED_FIELD)
    after = _pipeline(
        project, target, [event_line("e2", merchant_id="m-1")], tmp_path / "after.jsonl"
    )
    assert after.returncode == 1
    assert "transaction_events.merchant_id is a new required field" in after.stderr
    assert "declare it optional" in after.stderr and "docs/CONTRACT.md" in after.stderr
    assert "Traceback" not in after.stderr
    warehouse = target.factory()
    try:
        assert [r["event_id"] for r in warehouse.fetch_rows("transaction_events")] == ["e1"]
    finally:
        warehouse.close()


# --- the other refusals and the relaxation, on DuckDB's own tables ---------------------------


def _old_ledger(path: Path, columns: str) -> None:
    """A ledger table as an older (or otherwise different) contract left it."""
    with duckdb.connect(str(path)) as con:
        con.execute(f"CREATE TABLE {TRANSACTION_EVENTS.name} ({columns}, PRIMARY KEY (event_id))")


_THIS_VERSION = (
    "event_id VARCHAR NOT NULL, transaction_id VARCHAR NOT NULL, account_id VARCHAR NOT NULL,"
    " amount DECIMAL(38, 9) NOT NULL, currency VARCHAR NOT NULL, status VARCHAR NOT NULL,"
    " event_time TIMESTAMPTZ NOT NULL, ingested_at TIMESTAMPTZ NOT NULL"
)


@pytest.mark.parametrize(
    ("columns", "words"),
    [
        (_THIS_VERSION + ", legacy_code VARCHAR", "legacy_code is a column this version does not"),
        (_THIS_VERSION.replace("status VARCHAR NOT NULL, ", ""), "status is a new required field"),
        (_THIS_VERSION.replace("amount DECIMAL(38, 9)", "amount VARCHAR"), "a changed kind"),
        (_THIS_VERSION.replace("status VARCHAR NOT NULL", "status VARCHAR"), "nullable in the"),
    ],
    ids=["removed field", "new required field", "changed kind", "field made required"],
)
def test_what_needs_a_migration_is_refused_naming_the_column(
    columns: str, words: str, tmp_path: Path
) -> None:
    path = tmp_path / "old.duckdb"
    _old_ledger(path, columns)
    warehouse = DuckDBWarehouse(str(path))
    try:
        with pytest.raises(MigrationNeeded, match=words) as caught:
            warehouse.create_tables()
        assert "docs/CONTRACT.md" in str(caught.value)
    finally:
        warehouse.close()


def test_a_field_made_optional_drops_its_columns_not_null(tmp_path: Path) -> None:
    """A column NOT NULL in the warehouse that this version declares nullable (a field made
    optional; dead_letters.event_id stands in for one) is relaxed at start-up, not refused."""
    path = tmp_path / "old.duckdb"
    warehouse = DuckDBWarehouse(str(path))
    warehouse.create_tables()
    warehouse.close()
    with duckdb.connect(str(path)) as con:
        con.execute("ALTER TABLE dead_letters ALTER COLUMN event_id SET NOT NULL")
    warehouse = DuckDBWarehouse(str(path))
    try:
        warehouse.create_tables()
        nullable = warehouse.connection.execute(
            "SELECT is_nullable FROM information_schema.columns"
            " WHERE table_name = 'dead_letters' AND column_name = 'event_id'"
        ).fetchone()
        assert nullable == ("YES",)
    finally:
        warehouse.close()


def test_a_required_field_added_to_the_contract_lands_in_a_new_warehouse(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The issue's example: merchant_id, required, on a warehouse created by the adapted project:
    it is in the ledger and transactions, and an event without it is a dead letter naming it."""
    project = adapted_copy(tmp_path, REQUIRED_FIELD)
    target = command_line_warehouse("duckdb", tmp_path, request)
    lines = [event_line("e1", merchant_id="m-1"), event_line("e2", transaction_id="txn-2")]
    result = _pipeline(project, target, lines, tmp_path / "events.jsonl")
    assert result.returncode == 0, result.stderr[-3000:]
    with duckdb.connect(target.url.removeprefix("duckdb:"), read_only=True) as con:
        assert con.execute("SELECT event_id, merchant_id FROM transaction_events").fetchall() == [
            ("e1", "m-1")
        ]
        assert con.execute("SELECT merchant_id FROM transactions").fetchall() == [("m-1",)]
        assert con.execute("SELECT event_id, error FROM dead_letters").fetchall() == [
            ("e2", "merchant_id: missing")
        ]

"""One schema: the BigQuery JSON files Terraform reads are generated from pipeline/tables.py."""

from __future__ import annotations

import json

import pytest

from pipeline.tables import ALL_TABLES, bigquery_schema
from pipeline.tools.schemas import DEFAULT_OUT, render


@pytest.mark.parametrize("table", ALL_TABLES, ids=lambda t: t.name)
def test_committed_schema_files_match_the_package(table) -> None:  # type: ignore[no-untyped-def]
    path = DEFAULT_OUT / f"{table.name}.json"
    assert path.exists(), "run: make contract"
    assert path.read_text(encoding="utf-8") == render(table.name), (
        f"{path} drifted from pipeline/tables.py and pipeline/contract.py; run: make contract"
    )


def test_schema_files_are_valid_bigquery_schemas() -> None:
    for table in ALL_TABLES:
        fields = json.loads((DEFAULT_OUT / f"{table.name}.json").read_text(encoding="utf-8"))
        assert [f["name"] for f in fields] == list(table.column_names)
        assert {f["mode"] for f in fields} <= {"REQUIRED", "NULLABLE"}
        assert {f["type"] for f in fields} <= {
            "STRING",
            "NUMERIC",
            "TIMESTAMP",
            "INTEGER",
            "BOOLEAN",
            "JSON",
        }
        assert fields == bigquery_schema(table)


def test_money_is_numeric_and_times_are_timestamps() -> None:
    for table in ALL_TABLES:
        for column in table.columns:
            if column.name in ("amount", "total_amount"):
                assert column.type == "NUMERIC"
            if (
                column.name.endswith(("_time", "_at", "_start", "_end"))
                or column.name == "replay_from"
            ):
                assert column.type == "TIMESTAMP", column.name

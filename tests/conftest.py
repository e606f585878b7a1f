from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.sinks.warehouse import WarehouseFactory
from tests.helpers import duckdb_factory


@pytest.fixture
def duckdb_path(tmp_path: Path) -> str:
    return str(tmp_path / "warehouse.duckdb")


@pytest.fixture
def warehouse(duckdb_path: str) -> WarehouseFactory:
    """A factory of the real embedded warehouse, in a fresh file per test."""
    return duckdb_factory(duckdb_path)

"""What only BigQuery needs: retry of contention, and cost checked on the SQL itself (the
emulator reports no bytes processed): every statement parses as BigQuery SQL, every MERGE
restricts its target to the partitions of its rows, no value enters SQL text. Merge cycles have
their own tests (test_bigquery_cycles.py)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
import sqlglot
from sqlglot import expressions as exp

from pipeline.events import Event, LedgerCandidate
from pipeline.sinks.bigquery import BigQueryWarehouse, parse_dataset
from pipeline.tables import ALL_TABLES
from pipeline.tools.reconcile import Report, check_invariants, fetch_tables, window_of
from tests.faults import FaultPlan, FaultyBigQueryFactory, RecordingBigQueryClient
from tests.production_bigquery import ProductionBigQuery
from tests.warehouses import fresh_bigquery

T0 = dt.datetime(2026, 1, 1, 0, 0, 10, tzinfo=dt.UTC)


def ev(event_id: str, at: dt.datetime = T0, amount: str = "10", tid: str = "t1") -> Event:
    return Event(event_id, tid, "a1", Decimal(amount), "USD", "POSTED", at)


def cand(event: Event, primary: bool = True) -> LedgerCandidate:
    return LedgerCandidate(event, primary, *window_of(event.event_time, 60))


def _faulty(bigquery: ProductionBigQuery, tmp_path: Path, **faults: int) -> BigQueryWarehouse:
    plan = FaultPlan(str(tmp_path / "faults.json"))
    for name, times in faults.items():
        plan.arm(name.replace("__", ":"), times)
    target = fresh_bigquery(bigquery)
    factory = FaultyBigQueryFactory(
        target.endpoint, target.project, target.dataset, plan, target.write_address
    )
    warehouse = factory()
    assert isinstance(warehouse, BigQueryWarehouse)
    warehouse.create_tables()
    return warehouse


def _recorder(warehouse: BigQueryWarehouse) -> RecordingBigQueryClient:
    client = warehouse.client
    assert isinstance(client, RecordingBigQueryClient)
    return client


def _consistent(warehouse: BigQueryWarehouse) -> None:
    report = Report()
    check_invariants(fetch_tables(warehouse), report)
    assert report.problems == []


def test_concurrent_update_errors_are_transient_and_retried(
    production_bigquery: ProductionBigQuery, tmp_path: Path
) -> None:
    """A merge cycle's transaction aborted by another one (BigQuery's concurrent-update error)
    is retried, and the retry merges the staged rows once."""
    warehouse = _faulty(production_bigquery, tmp_path, conflict__cycle=1)
    batch = [cand(ev("e1")), cand(ev("e2", tid="t2"))]
    with pytest.raises(Exception) as caught:
        warehouse.merge_events(batch)
    assert warehouse.is_transient(caught.value)
    outcome = warehouse.merge_staged()  # the rows stayed staged; the sink's retry merges them
    assert (outcome.inserted, outcome.windows_upserted) == (2, 1)
    assert len(warehouse.fetch_rows("transaction_events")) == 2
    _consistent(warehouse)


def _statements(bigquery: ProductionBigQuery, tmp_path: Path) -> list[str]:
    """Every SQL text one realistic sequence of batches sends to BigQuery."""
    warehouse = _faulty(bigquery, tmp_path)
    big = "99999999999999999999999999999.999999999"
    warehouse.merge_events([cand(ev("e1")), cand(ev("e2", tid="t2", amount=big)),
                            cand(ev("e3", tid="t2", amount=big))])  # fmt: skip
    warehouse.merge_events([cand(ev("e1", amount="5"), primary=False)])
    warehouse.merge_events([cand(ev("e4", at=T0 + dt.timedelta(days=40)))])
    warehouse.write_checkpoint("projects/p/subscriptions/s", T0)
    warehouse.read_checkpoint("projects/p/subscriptions/s")
    return list(_recorder(warehouse).statements)


@pytest.fixture(scope="module")
def statements(production_bigquery: ProductionBigQuery, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return _statements(production_bigquery, tmp_path_factory.mktemp("sql"))


def _trees(statements: list[str]) -> list[exp.Expression]:
    """Every statement, those of a merge cycle's script one by one."""
    return [t for sql in statements for t in sqlglot.parse(sql, read="bigquery") if t is not None]


def test_every_statement_parses_as_bigquery_sql(statements: list[str]) -> None:
    assert len(statements) > 5
    assert len(_trees(statements)) > 40  # raises on anything BigQuery would not parse


def test_every_merge_restricts_its_target_to_partitions(statements: list[str]) -> None:
    """MERGEs are outside merge cycles (dead letters, checkpoints); a cycle's writes are checked
    in test_bigquery_cycles.py."""
    time_column = {table.name: table.time_column for table in ALL_TABLES if table.partitioned}
    merges = [m for m in _trees(statements) if isinstance(m, exp.Merge)]
    checked = set()
    for merge in merges:
        target = merge.this
        name = target.name
        if name not in time_column:
            continue  # ingest_checkpoints: one row per input, not partitioned
        alias = target.alias_or_name
        condition = merge.args["on"]
        restrictions = [
            b for b in condition.find_all(exp.Between)
            if isinstance(b.this, exp.Column) and b.this.name == time_column[name]
            and b.this.table == alias
            and isinstance(b.args["low"], exp.Parameter | exp.Placeholder)
        ]  # fmt: skip
        assert restrictions, f"MERGE into {name} scans the whole table:\n{merge.sql('bigquery')}"
        checked.add(name)
    assert checked == {"dead_letters"}


def test_values_never_enter_sql_text(statements: list[str]) -> None:
    for tree in _trees(statements):
        strings = [s.this for s in tree.find_all(exp.Literal) if s.is_string]
        # Only formatting constants may appear; no event ids, amounts or times.
        assert set(strings) <= {"0", "-", "."}, (strings, tree.sql("bigquery"))


def test_dataset_names_are_validated() -> None:
    for bad in ["p.d;DROP", "UPPER.d", "p", "project-ok.data set"]:
        with pytest.raises(ValueError):
            parse_dataset(bad)
    assert parse_dataset("my-project.events") == ("my-project", "events")


def test_appends_naming_a_column_the_write_api_does_not_see_yet_are_retried() -> None:
    """A column added at start-up reaches the write API's view of the table minutes later;
    until then BigQuery refuses appends naming it (INVALID_ARGUMENT), which must be retried,
    not fail the run: the same refusal for a column that never comes would keep retrying, and
    start-up, which adds the columns first, rules that out."""
    from google.api_core import exceptions as api_exceptions

    from pipeline.sinks.bigquery import is_transient

    refusal = "Input schema has more fields than BigQuery schema, extra fields: 'tip'"
    assert is_transient(api_exceptions.InvalidArgument(refusal))
    assert not is_transient(api_exceptions.InvalidArgument("Field amount: invalid value"))

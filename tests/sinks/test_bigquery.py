"""What only BigQuery needs: job ids that make retries re-attach instead of running twice,
retry of contention, repair after a concurrent race, and cost checked on the SQL itself (the
emulator reports no bytes processed): every statement parses as BigQuery SQL and every MERGE
restricts its target to the partitions of its batch."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
import sqlglot
from google.cloud import bigquery
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
    factory = FaultyBigQueryFactory(target.endpoint, target.project, target.dataset, plan)
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


def test_a_lost_response_is_followed_by_re_attaching_not_running_again(
    production_bigquery: ProductionBigQuery, tmp_path: Path
) -> None:
    warehouse = _faulty(production_bigquery, tmp_path, lost_response__ledger=1)
    batch = [cand(ev("e1")), cand(ev("e2", tid="t2"))]
    with pytest.raises(Exception, match="response was lost"):
        warehouse.merge_events(batch)
    assert warehouse.is_transient(Exception("the response was lost")) is False
    outcome = warehouse.merge_events(batch)  # what the sink's retry does
    client = _recorder(warehouse)
    ledger_jobs = [job for job in client.submitted if "_ledger_" in job]
    assert len(ledger_jobs) == 1  # the retry got 409 and waited for the first job instead
    assert outcome.inserted == 2
    assert len(warehouse.fetch_rows("transaction_events")) == 2
    _consistent(warehouse)


def test_concurrent_update_errors_are_transient_and_retried(
    production_bigquery: ProductionBigQuery, tmp_path: Path
) -> None:
    warehouse = _faulty(production_bigquery, tmp_path, conflict__totals=1)
    batch = [cand(ev("e1"))]
    with pytest.raises(Exception) as caught:
        warehouse.merge_events(batch)
    assert warehouse.is_transient(caught.value)
    outcome = warehouse.merge_events(batch)
    assert outcome.windows_upserted == 1
    _consistent(warehouse)


def test_a_concurrent_race_leaving_two_versions_is_repaired(
    production_bigquery: ProductionBigQuery, tmp_path: Path
) -> None:
    warehouse = _faulty(production_bigquery, tmp_path)
    warehouse.merge_events([cand(ev("e1", amount="10"))])
    # Another worker's batch inserts a second version of e1 two days later, having looked the id
    # up just before this one landed (the race the verification step exists for).
    later = ev("e1", at=T0 + dt.timedelta(days=2), amount="99", tid="t9")
    warehouse.client.query(
        f"""INSERT INTO {warehouse.table_ref("transaction_events")}
            (event_id, transaction_id, account_id, amount, currency, status, event_time,
             ingested_at)
            VALUES ('e1', 't9', 'a1', 99, 'USD', 'POSTED', @at, @ingested_at)""",
        job_config=bigquery.QueryJobConfig(
            query_parameters=[
                bigquery.ScalarQueryParameter("at", "TIMESTAMP", later.event_time),
                bigquery.ScalarQueryParameter("ingested_at", "TIMESTAMP", dt.datetime.now(dt.UTC)),
            ]
        ),
    ).result()
    outcome = warehouse.merge_events([cand(ev("e2", tid="t2"))])  # any batch touching e1 ...
    assert outcome.conflicts == 0
    outcome = warehouse.merge_events([cand(later)])  # ... here, the other worker's own retry
    ledger = warehouse.fetch_rows("transaction_events")
    assert [(r["event_id"], r["amount"]) for r in ledger] == [
        ("e1", Decimal("10")),
        ("e2", Decimal("10")),
    ]
    dead = warehouse.fetch_rows("dead_letters")
    assert [d["event_id"] for d in dead] == ["e1"] and "conflict" in dead[0]["error"]
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


def test_every_statement_parses_as_bigquery_sql(statements: list[str]) -> None:
    assert len(statements) > 10
    for sql in statements:
        sqlglot.parse_one(sql, read="bigquery")  # raises on anything BigQuery would not parse


def test_every_merge_restricts_its_target_to_partitions(statements: list[str]) -> None:
    time_column = {table.name: table.time_column for table in ALL_TABLES if table.partitioned}
    merges = [sqlglot.parse_one(sql, read="bigquery") for sql in statements]
    merges = [m for m in merges if isinstance(m, exp.Merge)]
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
    assert checked == set(time_column)


def test_values_never_enter_sql_text(statements: list[str]) -> None:
    for sql in statements:
        tree = sqlglot.parse_one(sql, read="bigquery")
        strings = [s.this for s in tree.find_all(exp.Literal) if s.is_string]
        # Only formatting constants may appear; no event ids, amounts or times.
        assert set(strings) <= {"0"}, (strings, sql)


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

    from pipeline.sinks.bigquery import _is_transient

    refusal = "Input schema has more fields than BigQuery schema, extra fields: 'tip'"
    assert _is_transient(api_exceptions.InvalidArgument(refusal))
    assert not _is_transient(api_exceptions.InvalidArgument("Field amount: invalid value"))

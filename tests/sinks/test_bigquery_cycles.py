"""BigQuery's staged appends and merge cycles, on the local emulator behind the production rules
(tests/production_bigquery/, the Storage Write API's included): a cycle is one transaction, so a
cycle that fails anywhere changes nothing and the next takes the same rows; the versions a cycle
refused become dead letters even when it stopped after its commit; appends stay under the write
API's request limit and need the worker's right on the staging dataset; the staging tables
outlive the staging dataset's default expiration. The rules both warehouses share are in
test_merge_cycles.py and, cycle by cycle, test_warehouse_contract.py."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
import sqlglot
from google.api_core import exceptions as api_exceptions
from google.cloud.bigquery_storage_v1 import types
from sqlglot import expressions as exp

from pipeline.events import Event, LedgerCandidate
from pipeline.sinks.bigquery import BigQueryBatchError, BigQueryWarehouse
from pipeline.sinks.bigquery import warehouse as bigquery_sink
from pipeline.sinks.bigquery.appends import STAGED_EVENTS, append, append_requests, staged_rows
from pipeline.sinks.bigquery.cycle import STAGED_CONFLICTS
from pipeline.tables import ALL_TABLES
from pipeline.tools.reconcile import window_of
from tests.faults import FaultPlan, FaultyWarehouseFactory, RecordingBigQueryClient
from tests.helpers import assert_exact
from tests.production_bigquery import ProductionBigQuery
from tests.production_bigquery.write_api import MAX_APPEND_REQUEST_BYTES
from tests.warehouses import EmulatorWarehouse, count_rows, fresh_bigquery

T0 = dt.datetime(2026, 3, 1, 23, 30, tzinfo=dt.UTC)


def _candidate(i: int, amount: str = "10.50", primary: bool = True) -> LedgerCandidate:
    at = T0 + dt.timedelta(minutes=7 * i)
    event = Event(f"e{i:04d}", f"t{i % 4}", f"a{i % 3}", Decimal(amount), "EUR", "POSTED", at)
    return LedgerCandidate(event, primary, *window_of(at, 600))


ROWS = [_candidate(i) for i in range(12)]
IDS = [c.event.event_id for c in ROWS]


@pytest.fixture
def factory(production_bigquery: ProductionBigQuery) -> EmulatorWarehouse:
    made = fresh_bigquery(production_bigquery)
    warehouse = made()
    warehouse.create_tables()
    warehouse.close()
    return made


def _staged(warehouse: BigQueryWarehouse) -> int:
    return count_rows(warehouse, STAGED_EVENTS.name, staging=True)


def _pending_conflicts(warehouse: BigQueryWarehouse) -> int:
    return count_rows(warehouse, STAGED_CONFLICTS.name, staging=True)


def _faulty(factory: EmulatorWarehouse, tmp_path: Path, fault: str) -> BigQueryWarehouse:
    plan = FaultPlan(str(tmp_path / "faults.json")).arm(fault, 1)
    faulty = FaultyWarehouseFactory(factory, plan)._seamed()
    assert isinstance(faulty, BigQueryWarehouse)
    return faulty


def test_a_cycle_that_fails_before_its_commit_changes_nothing(
    factory: EmulatorWarehouse, tmp_path: Path
) -> None:
    faulty = _faulty(factory, tmp_path, "fails_before_commit:cycle")
    faulty.stage_events(ROWS)
    with pytest.raises(BigQueryBatchError, match="injected before COMMIT"):
        faulty.merge_staged()
    assert factory().fetch_rows("transaction_events") == []  # rolled back, every table
    assert factory().fetch_rows("account_window_totals") == []
    assert _staged(faulty) == len(ROWS), "the staged rows wait for the next cycle"
    outcome = faulty.merge_staged()
    assert (outcome.inserted, outcome.duplicates) == (len(ROWS), 0)
    assert _staged(faulty) == 0
    assert_exact(factory, IDS)


def test_a_cycle_whose_reply_was_lost_is_not_merged_twice(
    factory: EmulatorWarehouse, tmp_path: Path
) -> None:
    faulty = _faulty(factory, tmp_path, "lost_response:cycle")
    faulty.stage_events(ROWS)
    with pytest.raises(api_exceptions.ServiceUnavailable):
        faulty.merge_staged()
    assert faulty.is_transient(api_exceptions.ServiceUnavailable("lost"))
    tables = assert_exact(factory, IDS)  # it committed
    again = faulty.merge_staged()  # the retry finds nothing staged
    assert (again.inserted, again.duplicates, again.windows_upserted) == (0, 0, 0)
    assert assert_exact(factory, IDS) == tables


def test_conflicts_a_stopped_cycle_recorded_become_dead_letters_in_the_next(
    factory: EmulatorWarehouse, tmp_path: Path
) -> None:
    writer = factory()
    writer.stage_events(ROWS)
    writer.merge_staged()
    # The cycle commits, then dies turning its refused version into a dead letter.
    faulty = _faulty(factory, tmp_path, "conflict:merge")
    faulty.stage_events([_candidate(0, amount="99.00", primary=False)])
    with pytest.raises(api_exceptions.BadRequest, match="concurrent update"):
        faulty.merge_staged()
    assert (_staged(writer), _pending_conflicts(writer)) == (0, 1)
    assert writer.fetch_rows("dead_letters") == []
    drained = writer.merge_staged()  # nothing staged; the refused version is still due
    assert (drained.conflicts, drained.dead_letters_inserted) == (0, 1)
    assert _pending_conflicts(writer) == 0
    (letter,) = writer.fetch_rows("dead_letters")
    assert letter["event_id"] == "e0000" and "different amount" in letter["error"]
    assert_exact(factory, IDS)


def test_staging_tables_outlive_the_staging_datasets_expiration(
    factory: EmulatorWarehouse,
) -> None:
    warehouse = factory()
    staging = warehouse.client.get_dataset(
        f"{warehouse.staging_project}.{warehouse.staging_dataset}"
    )
    assert staging.default_table_expiration_ms, "provisioned as Terraform does"
    for name in (STAGED_EVENTS.name, STAGED_CONFLICTS.name):
        table = warehouse.client.get_table(
            f"{warehouse.staging_project}.{warehouse.staging_dataset}.{name}"
        )
        assert table.expires is None, name


def test_a_large_batch_is_appended_in_requests_under_the_limit(
    factory: EmulatorWarehouse, production_bigquery: ProductionBigQuery
) -> None:
    """Each request under BigQuery's 10 MB, which the seam enforces. (The emulator's own gRPC
    server takes at most 4 MB, less than BigQuery, so requests of production size are measured
    here, and refused by the seam, but not sent past it.)"""
    warehouse = factory()
    stream = (
        f"projects/{warehouse.staging_project}/datasets/{warehouse.staging_dataset}"
        f"/tables/{STAGED_EVENTS.name}/streams/_default"
    )
    # Long ids make a batch of a few thousand rows weigh more than 10 MB.
    wide = [
        c._replace(event=c.event._replace(event_id=f"{'x' * 4000}{i}"))
        for i, c in enumerate(_candidate(i % 50) for i in range(2700))
    ]
    rows = staged_rows(wide, dt.datetime.now(dt.UTC))
    assert sum(map(len, rows)) > MAX_APPEND_REQUEST_BYTES
    sizes = [len(types.AppendRowsRequest.serialize(r)) for r in append_requests(stream, rows)]
    assert len(sizes) == 2 and max(sizes) < MAX_APPEND_REQUEST_BYTES
    assert production_bigquery.write_api is not None
    refused = production_bigquery.write_api.refused
    with pytest.raises(api_exceptions.InvalidArgument, match="too large"):
        append(warehouse.write_client, stream, rows, timeout=60, limit=11 * 1024 * 1024)
    assert production_bigquery.write_api.refused == refused + 1
    assert _staged(warehouse) == 0


def test_an_append_without_the_right_on_the_staging_dataset_is_refused_for_good(
    production_bigquery: ProductionBigQuery,
) -> None:
    made = fresh_bigquery(production_bigquery)
    made().create_tables()
    elsewhere = dataclasses.replace(made, dataset=f"{made.dataset}_x")  # no grant on it
    admin = production_bigquery.admin_client(made.project)
    admin.create_dataset(f"{made.project}.{elsewhere.dataset}_staging")
    admin.query(
        f"CREATE TABLE `{made.project}.{elsewhere.dataset}_staging.{STAGED_EVENTS.name}`"
        f" AS SELECT * FROM `{made.project}.{made.dataset}_staging.{STAGED_EVENTS.name}`"
    ).result()
    admin.close()
    warehouse = elsewhere()
    denied = r"bigquery\.tables\.updateData"
    with pytest.raises(api_exceptions.PermissionDenied, match=denied) as err:
        warehouse.stage_events(ROWS[:1])
    assert not warehouse.is_transient(err.value)


def _cycle_statements(factory: EmulatorWarehouse, tmp_path: Path) -> list[exp.Expression]:
    """The statements of a real cycle's script, as the client seam recorded it."""
    warehouse = _faulty(factory, tmp_path, "nothing")
    warehouse.stage_events(ROWS)
    warehouse.merge_staged()
    client = warehouse.client
    assert isinstance(client, RecordingBigQueryClient)
    (script,) = [sql for sql in client.statements if "BEGIN TRANSACTION" in sql]
    return [tree for tree in sqlglot.parse(script, read="bigquery") if tree is not None]


def test_every_write_of_a_cycle_restricts_its_target_to_partitions(
    factory: EmulatorWarehouse, tmp_path: Path
) -> None:
    """The emulator reports no bytes: the restriction is checked on the SQL. An INSERT reads no
    target; an UPDATE reads only the partitions of its BETWEEN, bounded by script variables."""
    time_column = {table.name: table.time_column for table in ALL_TABLES if table.partitioned}
    updates = {}
    for tree in _cycle_statements(factory, tmp_path):
        if isinstance(tree, exp.Merge):
            pytest.fail(f"a MERGE in the cycle's transaction: {tree.sql('bigquery')}")
        if isinstance(tree, exp.Update | exp.Delete) and tree.this.name in time_column:
            column = time_column[tree.this.name]
            where = tree.args["where"].this
            conjuncts = where.flatten() if isinstance(where, exp.And) else [where]
            bounds = [
                b for b in conjuncts
                if isinstance(b, exp.Between) and b.this.name == column
                and isinstance(b.args["low"], exp.Column) and not b.args["low"].table
            ]  # fmt: skip
            assert bounds, f"{tree.this.name} changed without a restriction: {tree.sql()}"
            updates[tree.this.name] = column
    assert updates == {"transactions": "event_time", "account_window_totals": "window_start"}


def test_no_value_enters_a_cycles_sql_text(factory: EmulatorWarehouse, tmp_path: Path) -> None:
    for tree in _cycle_statements(factory, tmp_path):
        strings = {s.this for s in tree.find_all(exp.Literal) if s.is_string}
        assert strings <= {"0", "-", "."}, (strings, tree.sql("bigquery"))


def test_a_dedup_horizon_bounds_the_ledger_lookup_to_its_partitions(
    factory: EmulatorWarehouse, tmp_path: Path
) -> None:
    """With a horizon of N days, the lookup of a cycle's event_ids reads only the ledger's
    partitions within N days of the cycle's events: a version stored farther away is not found
    and lands as a second row (the price of the option, as with Datastream's retention); one
    within it is refused as ever. Without a horizon the lookup reads the whole ledger."""
    permanent = [t for t in _cycle_statements(factory, tmp_path) if _reads_ledger_lookup(t)]
    assert [_between(t) for t in permanent] == [None]
    bounded = dataclasses.replace(factory, dedup_horizon_days=1)
    (lookup,) = [t for t in _cycle_statements(bounded, tmp_path) if _reads_ledger_lookup(t)]
    assert _between(lookup) == ("hlo", "hhi")

    writer = bounded()
    writer.stage_events(ROWS)
    writer.merge_staged()
    near = _candidate(0)  # e0000, two hours from its stored version, another amount
    near = near._replace(event=near.event._replace(
        amount=Decimal("1"), event_time=near.event.event_time + dt.timedelta(hours=2)))  # fmt: skip
    far = _candidate(1)  # e0001, forty days away
    far = far._replace(event=far.event._replace(
        amount=Decimal("2"), event_time=far.event.event_time + dt.timedelta(days=40)))  # fmt: skip
    writer.stage_events([near])
    assert writer.merge_staged().conflicts == 1
    writer.stage_events([far])
    assert writer.merge_staged().inserted == 1
    rows = [r["event_id"] for r in writer.fetch_rows("transaction_events")]
    assert rows.count("e0000") == 1 and rows.count("e0001") == 2


def _reads_ledger_lookup(tree: exp.Expression) -> bool:
    return isinstance(tree, exp.Create) and tree.this.name == "held"


def _between(tree: exp.Expression) -> tuple[str, str] | None:
    for between in tree.find_all(exp.Between):
        if between.this.name == "event_time":
            return between.args["low"].name, between.args["high"].name
    return None


def test_a_backlog_of_refused_versions_is_drained_in_bounded_rounds(
    factory: EmulatorWarehouse, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = factory()
    writer.stage_events(ROWS)
    writer.merge_staged()
    faulty = _faulty(factory, tmp_path, "conflict:merge")  # the drain fails after the commit
    faulty.stage_events([_candidate(i, amount="99.00", primary=False) for i in range(5)])
    with pytest.raises(api_exceptions.BadRequest, match="concurrent update"):
        faulty.merge_staged()
    assert _pending_conflicts(writer) == 5
    monkeypatch.setattr(bigquery_sink, "DRAIN_ROWS", 2)
    client = faulty.client
    assert isinstance(client, RecordingBigQueryClient)
    before = len(client.statements)
    assert faulty.merge_staged().dead_letters_inserted == 5
    drains = [s for s in client.statements[before:] if "WHERE conflict_id IN UNNEST" in s]
    assert len(drains) == 3  # 2 + 2 + 1
    assert _pending_conflicts(writer) == 0
    assert len(writer.fetch_rows("dead_letters")) == 5

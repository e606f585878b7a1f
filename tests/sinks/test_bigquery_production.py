"""The BigQuery warehouse under BigQuery's production rules (tests/production_bigquery/): it
starts with only the roles terraform/iam.tf grants, carries the datasets' location on every job
call, re-attaches after a lost reply, and bounds the mutating DML one process puts in a table's
queue (requests under the size limit: test_bigquery_cycles.py). Each test failed on the
warehouse as it was before these rules were enforced."""

from __future__ import annotations

import datetime as dt
import functools
import os
import subprocess
import sys
import threading
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.dead_letters import STAGE_PARSE, make_dead_letter
from pipeline.events import Event, LedgerCandidate
from pipeline.sinks.bigquery import BigQuerySetupError, BigQueryWarehouse
from pipeline.sinks.bigquery.appends import emulator_write_client
from pipeline.tables import ALL_TABLES
from pipeline.tools.reconcile import Report, check_invariants, fetch_tables, window_of
from tests.bigquery_emulator import DEFAULT_PROJECT, BigQueryEmulator
from tests.helpers import event_line
from tests.production_bigquery import (
    TEST_LOCATION,
    Grants,
    Latency,
    ProductionBigQuery,
)
from tests.warehouses import EmulatorClient, EmulatorWarehouse, fresh_bigquery

P = DEFAULT_PROJECT
T0 = dt.datetime(2026, 1, 1, 0, 0, 10, tzinfo=dt.UTC)


def ev(event_id: str, at: dt.datetime = T0, account: str = "a1", tid: str = "t1") -> Event:
    return Event(event_id, tid, account, Decimal("10"), "USD", "POSTED", at)


def cand(event: Event) -> LedgerCandidate:
    return LedgerCandidate(event, True, *window_of(event.event_time, 60))


def _consistent(warehouse: BigQueryWarehouse) -> None:
    report = Report()
    check_invariants(fetch_tables(warehouse), report)
    assert report.problems == []


def _operations(rules: ProductionBigQuery, since: int) -> list[str]:
    return [entry.operation for entry in rules.log[since:]]


def test_the_worker_starts_on_terraforms_datasets_with_terraforms_roles(
    production_bigquery: ProductionBigQuery,
) -> None:
    factory = fresh_bigquery(production_bigquery)
    before = len(production_bigquery.log)
    warehouse = factory()
    warehouse.create_tables()
    assert warehouse.location == TEST_LOCATION  # read from the dataset
    assert "datasets.insert" not in _operations(production_bigquery, before)
    assert warehouse.merge_events([cand(ev("e1"))]).inserted == 1
    _consistent(warehouse)
    warehouse.close()


def test_absent_tables_are_created_with_the_workers_roles(
    production_bigquery: ProductionBigQuery,
) -> None:
    factory = fresh_bigquery(production_bigquery, tables=False)
    warehouse = factory()
    warehouse.create_tables()
    warehouse.create_tables()  # and again: nothing to do
    admin = production_bigquery.admin_client(P)
    tables = {t.table_id for t in admin.list_tables(f"{P}.{factory.dataset}")}
    admin.close()
    assert tables == {spec.name for spec in ALL_TABLES}
    warehouse.close()


def test_a_missing_dataset_stops_the_worker_with_what_to_do(
    production_bigquery: ProductionBigQuery,
) -> None:
    missing = EmulatorWarehouse(production_bigquery.endpoint, P, f"missing_{uuid.uuid4().hex[:8]}")
    warehouse = missing()
    with pytest.raises(BigQuerySetupError) as caught:
        warehouse.create_tables()
    message = str(caught.value)
    assert f"{P}.{missing.dataset}" in message
    assert "roles/bigquery.dataEditor" in message and "terraform/iam.tf" in message
    assert not warehouse.is_transient(caught.value)
    warehouse.close()


def test_the_command_line_names_a_missing_dataset(
    production_bigquery: ProductionBigQuery, tmp_path: Path
) -> None:
    """Before the job starts (on Dataflow: in the launcher), not in every bundle."""
    (tmp_path / "events.jsonl").write_bytes(event_line("e1") + b"\n")
    dataset = f"absent_{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", f"--input_files={tmp_path}/events.jsonl",
         f"--warehouse=bigquery:{P}.{dataset}"],
        capture_output=True, text=True, check=False, timeout=300,
        env={**os.environ, "BIGQUERY_EMULATOR_HOST": production_bigquery.endpoint},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"{P}.{dataset}" in result.stderr and "roles/bigquery.dataEditor" in result.stderr
    assert "Traceback" not in result.stderr


def test_create_datasets_needs_and_uses_the_right_to_create_them(
    bq_emulator: BigQueryEmulator,
) -> None:
    name = f"local_{uuid.uuid4().hex[:8]}"
    # A local user with dataEditor on the two datasets but no right to create a dataset.
    editor = Grants(dataset_roles={
        f"{P}.{name}": frozenset({"roles/bigquery.dataEditor"}),
        f"{P}.{name}_staging": frozenset({"roles/bigquery.dataEditor"}),
    })  # fmt: skip
    with ProductionBigQuery(
        bq_emulator.endpoint, grants=editor, emulator_grpc=bq_emulator.grpc_address
    ) as rules:
        writer = functools.partial(emulator_write_client, rules.write_address)

        def opened() -> BigQueryWarehouse:
            return BigQueryWarehouse(P, name, client_factory=EmulatorClient(rules.endpoint),
                                     create_datasets=True, location=TEST_LOCATION,
                                     write_client_factory=writer)  # fmt: skip

        warehouse = opened()
        with pytest.raises(BigQuerySetupError, match=r"bigquery\.datasets\.create"):
            warehouse.create_tables()
        warehouse.close()
        rules.grant(Grants({P: frozenset({"roles/bigquery.user", "roles/bigquery.jobUser"})}))
        warehouse = opened()
        warehouse.create_tables()
        assert warehouse.location == TEST_LOCATION
        assert warehouse.merge_events([cand(ev("e1"))]).inserted == 1
        warehouse.close()


def test_datasets_outside_the_expected_location_are_refused(
    production_bigquery: ProductionBigQuery,
) -> None:
    factory = fresh_bigquery(production_bigquery)
    warehouse = BigQueryWarehouse(
        P, factory.dataset, client_factory=EmulatorClient(factory.endpoint), location="US"
    )
    with pytest.raises(BigQuerySetupError, match=f"is in {TEST_LOCATION}, not in"):
        warehouse.create_tables()
    warehouse.close()


# Which replies are lost: the insert of a mutating job (a merge cycle, its job id names the run),
# the insert of a read (the cycle's refused versions are read back), a poll for a job's results.
_LOST = {
    "merge_insert": ("jobs.insert", "eo_{run_id}_"),
    "read_insert": ("jobs.insert", "eo_read_"),
    "result_poll": ("jobs.getQueryResults", "eo_"),
}


@pytest.mark.parametrize("how", ["unavailable", "reset", "stall"])
@pytest.mark.parametrize("which", sorted(_LOST))
def test_a_lost_reply_re_attaches_to_the_job_in_its_location(
    which: str, how: str, production_bigquery: ProductionBigQuery
) -> None:
    """The call is carried out and its reply lost: the warehouse asks again, finds the job in its
    location, and every row lands once. A stalled reply never answers within the test: only a
    request timeout gets past it (the warehouse's; for a results poll the client library's floor
    of 120 s, docs/BIGQUERY.md)."""
    factory = fresh_bigquery(production_bigquery)
    warehouse = BigQueryWarehouse(
        P, factory.dataset, client_factory=EmulatorClient(factory.endpoint),
        run_id=factory.run_id, request_timeout_seconds=2,
        write_client_factory=factory.write_client_factory(),
    )  # fmt: skip
    warehouse.create_tables()
    operation, match = _LOST[which]
    faults = production_bigquery.faults
    faults.lose(operation, match.format(run_id=factory.run_id), how, stall_seconds=600)
    fired = faults.fired(operation)
    merged: list[object] = []
    # Two events and a refused version of one of them, whose dead letter the cycle's reads drain.
    refused = LedgerCandidate(ev("e1", tid="t9"), False, *window_of(T0, 60))
    batch = [cand(ev("e1")), cand(ev("e2", tid="t2")), refused]

    def merge() -> None:
        try:
            merged.append(warehouse.merge_events(batch))
        except Exception as error:  # reported by the assertion below
            merged.append(error)

    thread = threading.Thread(target=merge, daemon=True)
    thread.start()
    thread.join(timeout=300)  # a guard against a hang, not a timing target
    assert merged, "the merge never returned"
    assert getattr(merged[0], "inserted", merged[0]) == 2
    assert faults.fired(operation) == fired + 1
    assert len(warehouse.fetch_rows("transaction_events")) == 2
    _consistent(warehouse)
    warehouse.close()


def test_one_process_puts_at_most_two_jobs_in_a_tables_dml_queue(
    bq_emulator: BigQueryEmulator,
) -> None:
    """Six DoFn instances of one worker process, each merging its own day of dead letters at once
    (dead letters are merged batch by batch, by every instance of the sink)."""
    with ProductionBigQuery(bq_emulator.endpoint, latency=Latency(query=(0.3, 0.6))) as rules:
        factory = fresh_bigquery(rules)
        setup = factory()
        setup.create_tables()
        setup.close()
        errors: list[BaseException] = []

        def merge(day: int) -> None:
            warehouse = factory()  # one per DoFn instance, as in the sink
            try:
                at = T0 + dt.timedelta(days=day)
                row = make_dead_letter(STAGE_PARSE, "payload: not JSON", b"x%d" % day,
                                       arrival_time=at)  # fmt: skip
                warehouse.merge_dead_letters([row])
            except BaseException as error:  # reported below
                errors.append(error)
            finally:
                warehouse.close()

        threads = [threading.Thread(target=merge, args=(day,)) for day in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert rules.scheduler.peak_outstanding((P, factory.dataset, "dead_letters")) <= 2
        check = factory()
        assert len(check.fetch_rows("dead_letters")) == 6
        check.close()

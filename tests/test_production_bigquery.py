"""The production-rules seam itself (tests/production_bigquery/): each rule BigQuery documents and
the bare emulator leaves out is enforced, seen through the real google-cloud-bigquery client. Each
test here would fail against the emulator alone. How the warehouse copes with these rules is
tested in tests/sinks/test_bigquery_production.py."""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import Iterator

import pytest
import requests
from google.api_core import exceptions
from google.cloud import bigquery

from tests.bigquery_emulator import DEFAULT_PROJECT, BigQueryEmulator
from tests.production_bigquery import (
    MAX_REQUEST_BYTES,
    TEST_LOCATION,
    Grants,
    Latency,
    ProductionBigQuery,
    provision,
    worker_roles_from_terraform,
)
from tests.warehouses import EmulatorClient

P = DEFAULT_PROJECT


@pytest.fixture
def datasets(production_bigquery: ProductionBigQuery) -> tuple[str, str]:
    """Terraform's two datasets, in a region, with the worker's grants; and a table ``t``."""
    name = f"rules_{uuid.uuid4().hex[:10]}"
    admin = production_bigquery.admin_client(P)
    provisioned = provision(admin, P, name)
    admin.query(
        f"CREATE TABLE `{P}.{name}.t` (id STRING, day TIMESTAMP, n INT64) PARTITION BY DATE(day)"
    ).result()
    admin.close()
    production_bigquery.grant_worker(P, provisioned.dataset, provisioned.staging_dataset)
    return provisioned.dataset, provisioned.staging_dataset


@pytest.fixture
def worker(production_bigquery: ProductionBigQuery) -> Iterator[bigquery.Client]:
    client = EmulatorClient(production_bigquery.endpoint)(P)
    yield client
    client.close()


def _insert_sql(dataset: str, row_id: str, day: str = "2026-01-01") -> str:
    return (
        f"MERGE `{P}.{dataset}.t` T USING (SELECT '{row_id}' AS id) S ON T.id = S.id"
        f" WHEN NOT MATCHED THEN INSERT (id, day, n) VALUES (S.id, TIMESTAMP '{day}', 1)"
    )


def _update_sql(dataset: str, first: str, last: str) -> str:
    return (
        f"UPDATE `{P}.{dataset}.t` AS T SET n = n + 1"
        f" WHERE T.day BETWEEN TIMESTAMP '{first}' AND TIMESTAMP '{last}'"
    )


# --- permissions ---------------------------------------------------------------------------


def test_the_worker_roles_are_read_from_terraform() -> None:
    roles = worker_roles_from_terraform()
    assert "roles/bigquery.jobUser" in roles.project
    assert roles.warehouse_dataset == roles.staging_dataset == {"roles/bigquery.dataEditor"}
    grants = roles.grants(P, "w", "s")
    assert grants.on_project(P, "bigquery.jobs.create")
    assert grants.on_dataset(P, "w", "bigquery.tables.updateData")
    assert not grants.on_dataset(P, "elsewhere", "bigquery.tables.getData")


def test_an_unknown_role_is_refused_rather_than_ignored() -> None:
    with pytest.raises(ValueError, match="not modelled"):
        Grants({P: frozenset({"roles/bigquery.madeUp"})})


def test_the_worker_may_not_create_a_dataset_even_one_that_exists(
    datasets: tuple[str, str], worker: bigquery.Client, bq_emulator: BigQueryEmulator
) -> None:
    warehouse, _ = datasets
    existing = bigquery.Dataset(f"{P}.{warehouse}")
    with pytest.raises(exceptions.Forbidden, match=r"bigquery\.datasets\.create"):
        worker.create_dataset(existing, exists_ok=True)
    # The bare emulator lets the same call through: this rule is the seam's.
    admin = bq_emulator.client()
    admin.create_dataset(existing, exists_ok=True)
    admin.close()
    assert worker.get_dataset(f"{P}.{warehouse}").location == TEST_LOCATION


def test_the_worker_reads_and_writes_only_its_datasets(
    datasets: tuple[str, str], worker: bigquery.Client, production_bigquery: ProductionBigQuery
) -> None:
    warehouse, _ = datasets
    worker.query(_insert_sql(warehouse, "a"), location=TEST_LOCATION).result()
    other = f"other_{uuid.uuid4().hex[:8]}"
    admin = production_bigquery.admin_client(P)
    provision(admin, P, other)
    admin.close()
    with pytest.raises(exceptions.Forbidden, match=r"bigquery\.datasets\.get"):
        worker.get_dataset(f"{P}.{other}")
    with pytest.raises(exceptions.Forbidden, match=r"bigquery\.tables\.getData"):
        worker.query(f"SELECT * FROM `{P}.{other}.transactions`", location=TEST_LOCATION).result()
    with pytest.raises(exceptions.Forbidden, match=r"bigquery\.tables\.create"):
        worker.create_table(bigquery.Table(f"{P}.{other}.x", schema=[]))


def test_each_statement_of_a_script_needs_its_right(  # the merge cycle is one script
    datasets: tuple[str, str], worker: bigquery.Client, production_bigquery: ProductionBigQuery
) -> None:
    warehouse, _ = datasets
    other = f"other_{uuid.uuid4().hex[:8]}"
    admin = production_bigquery.admin_client(P)
    provision(admin, P, other)
    admin.close()
    inside = f"BEGIN TRANSACTION; {_update_sql(warehouse, '2026-01-01', '2026-01-02')};"
    script = f"{inside} COMMIT TRANSACTION;"
    worker.query(script, location=TEST_LOCATION).result()
    temp = "CREATE TEMP TABLE x AS SELECT 1 AS one;"  # a temporary table needs no right
    elsewhere = f"DELETE FROM `{P}.{other}.transactions` WHERE TRUE;"
    with pytest.raises(exceptions.Forbidden, match=rf"{other}\.transactions"):
        worker.query(f"{inside} {temp} {elsewhere} COMMIT TRANSACTION;", location=TEST_LOCATION)


# --- locations -----------------------------------------------------------------------------


def test_a_regional_job_is_found_only_with_its_location(
    datasets: tuple[str, str], worker: bigquery.Client, bq_emulator: BigQueryEmulator
) -> None:
    warehouse, _ = datasets
    job = worker.query(f"SELECT * FROM `{P}.{warehouse}.t`", job_id=f"j_{uuid.uuid4().hex}",
                       job_retry=None, location=TEST_LOCATION)  # fmt: skip
    job.result()
    assert job.location == TEST_LOCATION
    assert worker.get_job(job.job_id, location=TEST_LOCATION).state == "DONE"
    with pytest.raises(exceptions.NotFound, match="Not found: Job"):
        worker.get_job(job.job_id)
    with pytest.raises(exceptions.NotFound, match="Not found: Job"):
        worker.get_job(job.job_id, location="US")
    admin = bq_emulator.client()  # the bare emulator finds it anywhere
    assert admin.get_job(job.job_id).state == "DONE"
    admin.close()


def test_a_job_sent_to_another_location_does_not_find_its_dataset(
    datasets: tuple[str, str], worker: bigquery.Client
) -> None:
    warehouse, _ = datasets
    with pytest.raises(exceptions.NotFound, match="was not found in location US"):
        worker.query(f"SELECT * FROM `{P}.{warehouse}.t`", location="US").result()


# --- job ids and lost replies ----------------------------------------------------------------


def test_an_existing_job_id_answers_409(datasets: tuple[str, str], worker: bigquery.Client) -> None:
    warehouse, _ = datasets
    job_id = f"j_{uuid.uuid4().hex}"
    sql = f"SELECT * FROM `{P}.{warehouse}.t`"
    worker.query(sql, job_id=job_id, job_retry=None, location=TEST_LOCATION).result()
    with pytest.raises(exceptions.Conflict, match="Already Exists"):
        worker.query(sql, job_id=job_id, job_retry=None, location=TEST_LOCATION)


@pytest.mark.parametrize("how", ["unavailable", "reset", "stall"])
def test_a_lost_reply_loses_only_the_reply(
    how: str,
    datasets: tuple[str, str],
    worker: bigquery.Client,
    production_bigquery: ProductionBigQuery,
) -> None:
    warehouse, _ = datasets
    job_id = f"lost_{uuid.uuid4().hex}"
    production_bigquery.faults.lose("jobs.insert", job_id, how=how, stall_seconds=60)
    with pytest.raises((exceptions.ServiceUnavailable, requests.exceptions.RequestException)):
        worker.query(_insert_sql(warehouse, "kept"), job_id=job_id, job_retry=None,
                     location=TEST_LOCATION, retry=None, timeout=10)  # fmt: skip
    assert production_bigquery.faults.fired("jobs.insert") >= 1
    ran = worker.get_job(job_id, location=TEST_LOCATION)
    ran.result()
    rows = worker.query(f"SELECT id FROM `{P}.{warehouse}.t`", location=TEST_LOCATION)
    assert [row["id"] for row in rows.result()] == ["kept"]


# --- request size ----------------------------------------------------------------------------


def test_a_request_over_10_mb_is_refused(
    datasets: tuple[str, str], worker: bigquery.Client
) -> None:
    warehouse, _ = datasets
    ids = [f"{i:08d}" + "x" * 1000 for i in range(MAX_REQUEST_BYTES // 1000 + 10)]
    config = bigquery.QueryJobConfig(
        query_parameters=[bigquery.ArrayQueryParameter("ids", "STRING", ids)]
    )
    sql = f"SELECT * FROM `{P}.{warehouse}.t` WHERE id IN UNNEST(@ids)"
    with pytest.raises(exceptions.BadRequest, match="Request payload size exceeds the limit"):
        worker.query(sql, job_config=config, location=TEST_LOCATION)
    config = bigquery.QueryJobConfig(
        query_parameters=[bigquery.ArrayQueryParameter("ids", "STRING", ids[:9000])]
    )
    assert list(worker.query(sql, job_config=config, location=TEST_LOCATION).result()) == []


# --- the job lifecycle: latency, the DML queue, conflicts, load quotas --------------------------


def _rules(bq_emulator: BigQueryEmulator, **options: object) -> ProductionBigQuery:
    return ProductionBigQuery(bq_emulator.endpoint, **options)  # type: ignore[arg-type]


def _granted(rules: ProductionBigQuery) -> tuple[str, bigquery.Client]:
    name = f"life_{uuid.uuid4().hex[:10]}"
    admin = rules.admin_client(P)
    provision(admin, P, name, tables=False)
    admin.query(
        f"CREATE TABLE `{P}.{name}.t` (id STRING, day TIMESTAMP, n INT64) PARTITION BY DATE(day)"
    ).result()
    admin.close()
    rules.grant_worker(P, name, f"{name}_staging")
    return name, EmulatorClient(rules.endpoint)(P)


def test_a_job_runs_for_its_drawn_latency(bq_emulator: BigQueryEmulator) -> None:
    with _rules(bq_emulator, latency=Latency(query=(1.5, 2.0))) as rules:
        dataset, worker = _granted(rules)
        job = worker.query(_insert_sql(dataset, "a"), location=TEST_LOCATION)
        assert job.state in {"PENDING", "RUNNING"}  # the insert answers before the job is done
        job.result()
        record = rules.scheduler.find(P, job.job_id)
        assert record is not None and record.started is not None and record.due is not None
        assert 1.5 <= record.due - record.started <= 2.0
        assert record.committed is not None and record.committed >= record.due
        worker.close()


def test_mutating_dml_queues_2_running_and_20_pending_per_table(
    bq_emulator: BigQueryEmulator,
) -> None:
    with _rules(bq_emulator, latency=Latency(query=(3.0, 3.0))) as rules:
        dataset, worker = _granted(rules)
        jobs = [worker.query(_insert_sql(dataset, f"r{i}"), location=TEST_LOCATION)
                for i in range(23)]  # fmt: skip
        states = [job.state for job in jobs]
        assert states[:2] == ["RUNNING", "RUNNING"]
        assert states[2:22] == ["PENDING"] * 20
        with pytest.raises(exceptions.BadRequest, match="Too many DML statements outstanding"):
            jobs[22].result()
        for job in jobs[:22]:
            job.result()
        assert rules.scheduler.peak_outstanding((P, dataset, "t")) == 22
        worker.close()


def test_concurrent_updates_of_one_partition_conflict(bq_emulator: BigQueryEmulator) -> None:
    with _rules(bq_emulator, latency=Latency(query=(1.0, 1.0)), conflict_reruns=0) as rules:
        dataset, worker = _granted(rules)
        for row_id, day in [("a", "2026-01-01"), ("b", "2026-01-05")]:
            worker.query(_insert_sql(dataset, row_id, day), location=TEST_LOCATION).result()

        def run(sqls: list[str]) -> list[BaseException | None]:
            jobs = [worker.query(sql, location=TEST_LOCATION) for sql in sqls]
            return [job.exception() if _wait(job) else None for job in jobs]

        same_day = _update_sql(dataset, "2026-01-01", "2026-01-01")
        outcome = run([same_day, same_day])
        assert outcome[0] is None
        assert "Could not serialize access" in str(outcome[1])
        other_days = [_update_sql(dataset, d, d) for d in ("2026-01-01", "2026-01-05")]
        assert run(other_days) == [None, None]
        inserts = [_insert_sql(dataset, "c"), _insert_sql(dataset, "d")]
        assert run(inserts) == [None, None]  # insert-only MERGEs never conflict
        worker.close()


def _wait(job: bigquery.QueryJob) -> bool:
    """Wait for the job; whether it failed."""
    try:
        job.result()
    except exceptions.GoogleAPICallError:
        return True
    return False


def test_a_conflict_is_rerun_up_to_three_times_before_it_fails(
    bq_emulator: BigQueryEmulator,
) -> None:
    with _rules(bq_emulator, latency=Latency(query=(0.5, 0.5))) as rules:
        dataset, worker = _granted(rules)
        worker.query(_insert_sql(dataset, "a"), location=TEST_LOCATION).result()
        update = _update_sql(dataset, "2026-01-01", "2026-01-01")
        jobs = [worker.query(update, location=TEST_LOCATION) for _ in range(2)]
        for job in jobs:
            job.result()  # the second one conflicts once, is rerun, and commits
        records = [rules.scheduler.find(P, job.job_id) for job in jobs]
        assert sorted(r.reruns for r in records if r is not None) == [0, 1]
        worker.close()


def test_load_jobs_beyond_the_table_quota_fail(bq_emulator: BigQueryEmulator) -> None:
    with _rules(bq_emulator, load_jobs_per_table=2) as rules:
        dataset, worker = _granted(rules)
        config = bigquery.LoadJobConfig(
            schema=[bigquery.SchemaField("id", "STRING")],
            write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
        )
        table = f"{P}.{dataset}_staging.loaded"
        for _ in range(2):
            worker.load_table_from_json([{"id": "a"}], table, job_config=config,
                                        location=TEST_LOCATION).result()  # fmt: skip
        with pytest.raises(exceptions.Forbidden, match="Quota exceeded"):
            worker.load_table_from_json([{"id": "a"}], table, job_config=config,
                                        location=TEST_LOCATION).result()  # fmt: skip
        worker.close()


def test_concurrent_callers_see_one_consistent_queue(bq_emulator: BigQueryEmulator) -> None:
    """Many threads at once (as Dataflow's harness threads): every statement lands once."""
    with _rules(bq_emulator, latency=Latency(query=(0.1, 0.3))) as rules:
        dataset, worker = _granted(rules)

        def insert(i: int) -> None:
            worker.query(_insert_sql(dataset, f"r{i}"), location=TEST_LOCATION).result()

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(insert, range(16)))
        rows = worker.query(f"SELECT COUNT(*) AS n FROM `{P}.{dataset}.t`", location=TEST_LOCATION)
        assert next(iter(rows.result()))["n"] == 16
        worker.close()

"""What the local BigQuery emulator supports, checked with the real google-cloud-bigquery client.

    .venv/bin/python scripts/bq_emulator/probe.py [-v]

Starts the emulator (``make bq-emulator`` installs it) through ``tests/bigquery_emulator.py``
and runs one check per feature the BigQuery warehouse needs, printing PASS or FAIL with what was
observed. Exit status 1 when a check fails. Not a test: it documents behaviour, so a FAIL is
information (a check may also PASS with a "NOTE:" that says where the emulator differs from
BigQuery). Takes well under a minute.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import io
import json
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Context, Decimal, localcontext
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from google.api_core import exceptions as gexc
from google.cloud import bigquery

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.bigquery_emulator import BigQueryEmulator, bigquery_emulator

UTC = dt.UTC
BIG = "12345678901234567890123456789.123456789"  # 29 integer digits, 9 fraction digits
NEG = "-99999999999999999999999999999.999999999"  # NUMERIC's minimum
TINY = "0.000000001"
T0 = dt.datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)

SCHEMA = [
    bigquery.SchemaField("event_id", "STRING", mode="REQUIRED"),
    bigquery.SchemaField("account_id", "STRING", mode="REQUIRED"),
    bigquery.SchemaField("amount", "NUMERIC", mode="REQUIRED"),
    bigquery.SchemaField("event_time", "TIMESTAMP", mode="REQUIRED"),
    bigquery.SchemaField("n", "INT64", mode="REQUIRED"),
    bigquery.SchemaField("flag", "BOOL", mode="NULLABLE"),
    bigquery.SchemaField("attributes", "JSON", mode="NULLABLE"),
]


def rfc3339(value: dt.datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def make_rows(count: int, prefix: str, start: int = 0) -> list[dict[str, Any]]:
    amounts = [BIG, NEG, TINY, "10.5", "0"]
    return [
        {
            "event_id": f"{prefix}{i:06d}",
            "account_id": f"acct-{i % 7}",
            "amount": amounts[i % len(amounts)],
            "event_time": rfc3339(T0 + dt.timedelta(minutes=i, microseconds=i)),
            "n": i,
            "flag": i % 2 == 0,
            "attributes": json.dumps({"i": i, "s": 'é"x'}) if i % 3 else None,
        }
        for i in range(start, start + count)
    ]


@dataclass
class Probe:
    emulator: BigQueryEmulator
    client: bigquery.Client
    dataset: str
    verbose: bool = False
    results: list[tuple[str, bool, list[str]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self, name: str) -> str:
        return f"{self.client.project}.{self.dataset}.{name}"

    def note(self, text: str) -> None:
        self.notes.append(text)

    def run(self, name: str, check: Callable[[Probe], bool]) -> None:
        self.notes = []
        started = time.monotonic()
        try:
            ok = check(self)
        except Exception as error:
            ok = False
            self.note(f"raised {type(error).__module__}.{type(error).__name__}: {error}"[:600])
            if self.verbose:
                self.note(traceback.format_exc())
        took = time.monotonic() - started
        self.results.append((name, ok, self.notes))
        print(f"{'PASS' if ok else 'FAIL'}  {name}  ({took:.2f} s)", flush=True)
        for line in self.notes:
            print(f"      {line}", flush=True)

    def query(self, sql: str, **params: Any) -> bigquery.QueryJob:
        config = bigquery.QueryJobConfig(query_parameters=list(params.values()))
        job = self.client.query(sql, job_config=config)
        job.result()
        return job

    def create_table(self, name: str, partitioned: bool = True) -> bigquery.Table:
        table = bigquery.Table(self.table(name), schema=SCHEMA)
        if partitioned:
            table.time_partitioning = bigquery.TimePartitioning(
                type_=bigquery.TimePartitioningType.DAY, field="event_time"
            )
            table.clustering_fields = ["account_id", "event_id"]
        return self.client.create_table(table)

    def load_json(self, name: str, rows: list[dict[str, Any]], **kwargs: Any) -> bigquery.LoadJob:
        config = bigquery.LoadJobConfig(
            schema=SCHEMA, write_disposition=bigquery.WriteDisposition.WRITE_APPEND
        )
        job = self.client.load_table_from_json(rows, self.table(name), job_config=config, **kwargs)
        job.result()
        return job

    def count(self, name: str) -> int:
        rows = list(self.query(f"SELECT COUNT(*) AS c FROM `{self.table(name)}`").result())
        return int(rows[0]["c"])


def first_line(error: gexc.GoogleAPICallError) -> str:
    """The emulator's message without the client's Location/Job ID trailer."""
    message = getattr(error, "message", None) or str(error)
    return message.split("; reason:")[0].splitlines()[0][:200]


def ts_param(name: str, value: dt.datetime) -> bigquery.ScalarQueryParameter:
    return bigquery.ScalarQueryParameter(name, "TIMESTAMP", value)


def ids_param(name: str, values: list[str]) -> bigquery.ArrayQueryParameter:
    return bigquery.ArrayQueryParameter(name, "STRING", values)


def compare_rows(p: Probe, name: str, sent: list[dict[str, Any]]) -> bool:
    """Read the table back and compare every value exactly with what was loaded."""
    got = {row["event_id"]: dict(row) for row in p.client.list_rows(p.table(name))}
    mismatches = []
    for row in sent:
        back = got.get(row["event_id"])
        if back is None:
            mismatches.append(f"{row['event_id']}: missing")
            continue
        expected = {
            "amount": Decimal(row["amount"]),
            "event_time": dt.datetime.fromisoformat(row["event_time"]),
            "n": row["n"],
            "flag": row["flag"],
            "attributes": json.loads(row["attributes"]) if row["attributes"] else None,
        }
        for key, value in expected.items():
            if back[key] != value or (key == "amount" and str(back[key]) != str(value)):
                mismatches.append(f"{row['event_id']}.{key}: sent {value!r} got {back[key]!r}")
    p.note(f"{len(sent)} sent, {len(got)} read back, {len(mismatches)} mismatches")
    for line in mismatches[:5]:
        p.note(f"  {line}")
    return len(got) == len(sent) and not mismatches


# --- (a) --------------------------------------------------------------------------------------


def check_a_dataset_and_table(p: Probe) -> bool:
    dataset = p.client.create_dataset(p.dataset)
    p.note(f"dataset {dataset.dataset_id} created, location={dataset.location}")
    p.create_table("events")
    back = p.client.get_table(p.table("events"))
    schema = [(f.name, f.field_type, f.mode) for f in back.schema]
    p.note(f"schema back: {schema}")
    p.note(f"time_partitioning back: {back.time_partitioning}")
    p.note(f"clustering_fields back: {back.clustering_fields}")
    legacy = {"INT64": "INTEGER", "BOOL": "BOOLEAN"}  # the REST API answers legacy names
    wanted = [(f.name, legacy.get(f.field_type, f.field_type), f.mode) for f in SCHEMA]
    partitioned = (
        back.time_partitioning is not None
        and back.time_partitioning.field == "event_time"
        and back.time_partitioning.type_ == "DAY"
    )
    try:
        p.client.create_table(bigquery.Table(p.table("events"), schema=SCHEMA))
        p.note("create_table of an existing table: no error (BigQuery raises Conflict)")
        conflict = False
    except gexc.Conflict as error:
        p.note(f"create_table again -> Conflict 409: {first_line(error)}")
        conflict = True
    p.client.create_table(bigquery.Table(p.table("events"), schema=SCHEMA), exists_ok=True)
    p.note("create_table(exists_ok=True) again: ok")
    return (
        schema == wanted
        and partitioned
        and back.clustering_fields == ["account_id", "event_id"]
        and conflict
    )


# --- (b) --------------------------------------------------------------------------------------


def check_b_load_json(p: Probe) -> bool:
    ok = True
    p.create_table("stage_json", partitioned=False)
    total: list[dict[str, Any]] = []
    for size in (1, 3, 5000):
        rows = make_rows(size, f"j{size}-")
        started = time.monotonic()
        job = p.load_json("stage_json", rows)
        took = time.monotonic() - started
        total += rows
        p.note(
            f"load_table_from_json {size} rows: state={job.state} output_rows={job.output_rows}"
            f" in {took:.2f} s"
        )
        ok = ok and job.output_rows == size
    return compare_rows(p, "stage_json", total) and ok


def check_b_load_ndjson_file(p: Probe) -> bool:
    p.create_table("stage_ndjson", partitioned=False)
    rows = make_rows(1000, "nd-")
    data = "\n".join(json.dumps(row) for row in rows).encode()
    config = bigquery.LoadJobConfig(
        schema=SCHEMA, source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON
    )
    started = time.monotonic()
    job = p.client.load_table_from_file(
        io.BytesIO(data), p.table("stage_ndjson"), job_config=config
    )
    job.result()
    p.note(f"load_table_from_file NDJSON 1000 rows: {time.monotonic() - started:.2f} s")
    return compare_rows(p, "stage_ndjson", rows)


def check_b_load_parquet(p: Probe) -> bool:
    p.create_table("stage_parquet", partitioned=False)
    rows = make_rows(1000, "pq-")
    arrow = pa.table(
        {
            "event_id": pa.array([r["event_id"] for r in rows], pa.string()),
            "account_id": pa.array([r["account_id"] for r in rows], pa.string()),
            "amount": pa.array([Decimal(r["amount"]) for r in rows], pa.decimal128(38, 9)),
            "event_time": pa.array(
                [dt.datetime.fromisoformat(r["event_time"]) for r in rows],
                pa.timestamp("us", tz="UTC"),
            ),
            "n": pa.array([r["n"] for r in rows], pa.int64()),
            "flag": pa.array([r["flag"] for r in rows], pa.bool_()),
            "attributes": pa.array([r["attributes"] for r in rows], pa.string()),
        }
    )
    buffer = io.BytesIO()
    pq.write_table(arrow, buffer)
    buffer.seek(0)
    config = bigquery.LoadJobConfig(schema=SCHEMA, source_format=bigquery.SourceFormat.PARQUET)
    started = time.monotonic()
    job = p.client.load_table_from_file(buffer, p.table("stage_parquet"), job_config=config)
    job.result()
    p.note(f"load_table_from_file Parquet 1000 rows: {time.monotonic() - started:.2f} s")
    return compare_rows(p, "stage_parquet", rows)


def check_b_load_bad_rows(p: Probe) -> bool:
    """A row that breaks the schema: is the load refused as a whole?"""
    p.create_table("stage_bad", partitioned=False)
    rows = make_rows(3, "bad-")
    rows[1]["amount"] = "1e400"
    try:
        p.load_json("stage_bad", rows)
        p.note("load with a NUMERIC '1e400': accepted")
    except gexc.GoogleAPICallError as error:
        p.note(f"load with a NUMERIC '1e400': {type(error).__name__}: {first_line(error)}")
    rows = make_rows(3, "bad2-")
    rows[1]["amount"] = "1.0000000001"  # 10 fraction digits
    try:
        p.load_json("stage_bad", rows)
        back = list(p.client.list_rows(p.table("stage_bad")))
        p.note(f"load with 10 fraction digits: accepted, stored {[str(r['amount']) for r in back]}")
    except gexc.GoogleAPICallError as error:
        p.note(f"load with 10 fraction digits: {type(error).__name__}: {first_line(error)}")
    p.note(f"rows in the table after both: {p.count('stage_bad')}")
    return True


# --- (c) --------------------------------------------------------------------------------------


def check_c_job_ids(p: Probe) -> bool:
    ok = True
    job_id = f"probe-query-{uuid.uuid4().hex}"
    first = p.client.query("SELECT 42 AS answer", job_id=job_id, job_retry=None)
    p.note(f"query(job_id={job_id[:20]}...): {[dict(r) for r in first.result()]}")
    try:
        p.client.query("SELECT 43 AS answer", job_id=job_id, job_retry=None)
        p.note("same job_id again: accepted (BigQuery answers 409)")
        ok = False
    except gexc.Conflict as error:
        p.note(f"same job_id again -> {type(error).__name__} {error.code}: {first_line(error)}")
    again = p.client.get_job(job_id)
    assert isinstance(again, bigquery.QueryJob)
    rows = [dict(r) for r in again.result()]
    p.note(
        f"get_job -> {type(again).__name__} state={again.state} error={again.error_result}"
        f" result={rows}"
    )
    ok = ok and rows == [{"answer": 42}]

    load_id = f"probe-load-{uuid.uuid4().hex}"
    p.create_table("stage_jobid", partitioned=False)
    p.load_json("stage_jobid", make_rows(3, "jid-"), job_id=load_id)
    try:
        p.load_json("stage_jobid", make_rows(3, "jid-"), job_id=load_id)
        p.note("load with the same job_id again: accepted")
        ok = False
    except gexc.Conflict as error:
        p.note(f"load with the same job_id again -> {type(error).__name__} {error.code}")
    load = p.client.get_job(load_id)
    assert isinstance(load, bigquery.LoadJob)
    p.note(
        f"get_job(load) -> {type(load).__name__} state={load.state}"
        f" output_rows={load.output_rows}; rows in table {p.count('stage_jobid')} (3 expected)"
    )
    ok = ok and p.count("stage_jobid") == 3

    dml_id = f"probe-dml-{uuid.uuid4().hex}"
    dml = p.client.query(
        f"DELETE FROM `{p.table('stage_jobid')}` WHERE event_id = 'jid-000000'",
        job_id=dml_id,
        job_retry=None,
    )
    dml.result()
    back = p.client.get_job(dml_id)
    assert isinstance(back, bigquery.QueryJob)
    p.note(
        f"get_job(DML) -> num_dml_affected_rows={back.num_dml_affected_rows}"
        f" dml_stats={back.dml_stats} statement_type={back.statement_type}"
    )
    fail_id = f"probe-fail-{uuid.uuid4().hex}"
    failed = p.client.query("SELECT ERROR('boom')", job_id=fail_id, job_retry=None)
    try:
        failed.result()
    except gexc.GoogleAPICallError as error:
        p.note(f"failed job result() -> {type(error).__name__} {error.code}: {first_line(error)}")
    back = p.client.get_job(fail_id)
    p.note(f"get_job(failed) -> state={back.state} error_result={back.error_result}")
    try:
        p.client.get_job("no-such-job")
    except gexc.NotFound as error:
        p.note(f"get_job(unknown) -> NotFound {error.code}")
    return ok and back.error_result is not None


# --- (d) --------------------------------------------------------------------------------------

MERGE_SQL = """
MERGE `{target}` AS t
USING (
  SELECT * FROM `{source}`
  WHERE event_time BETWEEN @lo AND @hi AND event_id IN UNNEST(@ids)
) AS s
ON t.event_id = s.event_id AND t.event_time BETWEEN @lo AND @hi
WHEN MATCHED AND t.amount != s.amount THEN
  UPDATE SET amount = s.amount, n = s.n
WHEN NOT MATCHED THEN
  INSERT (event_id, account_id, amount, event_time, n, flag, attributes)
  VALUES (s.event_id, s.account_id, s.amount, s.event_time, s.n, s.flag, s.attributes)
"""


def merge_params(rows: list[dict[str, Any]]) -> dict[str, Any]:
    times = [dt.datetime.fromisoformat(r["event_time"]) for r in rows]
    return {
        "lo": ts_param("lo", min(times)),
        "hi": ts_param("hi", max(times)),
        "ids": ids_param("ids", [r["event_id"] for r in rows]),
    }


def dml_counts(job: bigquery.QueryJob) -> str:
    stats = job.dml_stats
    detail = (
        f" (inserted {stats.inserted_row_count}, updated {stats.updated_row_count},"
        f" deleted {stats.deleted_row_count})"
        if stats
        else ""
    )
    return f"num_dml_affected_rows={job.num_dml_affected_rows}{detail}"


def check_d_merge(p: Probe) -> bool:
    p.create_table("stage_merge", partitioned=False)
    rows = make_rows(100, "m-")
    p.load_json("stage_merge", rows)
    sql = MERGE_SQL.format(target=p.table("events"), source=p.table("stage_merge"))
    params = merge_params(rows)
    first = p.query(sql, **params)
    p.note(f"MERGE #1: {dml_counts(first)}")
    second = p.query(sql, **params)
    p.note(f"MERGE #2 (same batch): {dml_counts(second)}")
    p.query(
        f"UPDATE `{p.table('stage_merge')}` SET amount = amount + 1"
        " WHERE event_id IN ('m-000003', 'm-000004')"
    )
    third = p.query(sql, **params)
    p.note(f"MERGE #3 (2 amounts changed in stage): {dml_counts(third)}")
    return (
        first.num_dml_affected_rows == 100
        and second.num_dml_affected_rows == 0
        and third.num_dml_affected_rows == 2
    )


QUALIFY = "QUALIFY ROW_NUMBER() OVER (PARTITION BY event_id ORDER BY n DESC) = 1"


def check_d_merge_qualify(p: Probe) -> bool:
    p.create_table("stage_dups", partitioned=False)
    p.create_table("latest", partitioned=True)
    rows = make_rows(10, "q-") + make_rows(10, "q-")  # every event_id twice
    for i, row in enumerate(rows[10:]):
        row["n"] = 1000 + i  # the second copy is the "newer" one
    p.load_json("stage_dups", rows)
    sql = f"""
    MERGE `{p.table("latest")}` AS t
    USING (
      SELECT * FROM `{p.table("stage_dups")}`
      WHERE event_time BETWEEN @lo AND @hi
      {QUALIFY}
    ) AS s
    ON t.event_id = s.event_id
    WHEN MATCHED AND s.n > t.n THEN UPDATE SET n = s.n
    WHEN NOT MATCHED THEN INSERT ROW
    """
    params = merge_params(rows)
    del params["ids"]
    first = p.query(sql, **params)
    second = p.query(sql, **params)
    kept = [r["n"] for r in p.query(f"SELECT n FROM `{p.table('latest')}` ORDER BY n").result()]
    p.note(f"QUALIFY MERGE #1: {dml_counts(first)}; #2: {dml_counts(second)}")
    p.note(f"kept n values: {kept[:3]}...{kept[-2:]} ({len(kept)} rows)")
    # Without QUALIFY every target row is matched by two source rows (n = -1 makes both update).
    p.query(f"UPDATE `{p.table('latest')}` SET n = -1 WHERE TRUE")
    try:
        p.query(sql.replace(QUALIFY, ""), **params)
        p.note("MERGE matching one target row twice: accepted (BigQuery refuses)")
    except gexc.GoogleAPICallError as error:
        p.note(f"MERGE matching a target row twice -> {type(error).__name__}: {first_line(error)}")
    return (
        first.num_dml_affected_rows == 10
        and second.num_dml_affected_rows == 0
        and kept == list(range(1000, 1010))
    )


# --- (e) --------------------------------------------------------------------------------------


def merge_insert(target: str, stage: str) -> str:
    return f"""
    MERGE `{target}` AS t USING (SELECT * FROM `{stage}` WHERE event_id IN UNNEST(@ids)) AS s
    ON t.event_id = s.event_id
    WHEN NOT MATCHED THEN INSERT ROW;
    """


def insert_absent(target: str, stage: str) -> str:
    """MERGE's two halves as plain DML: insert the absent rows, update the changed ones."""
    return f"""
    INSERT INTO `{target}` (event_id, account_id, amount, event_time, n, flag, attributes)
    SELECT event_id, account_id, amount, event_time, n, flag, attributes FROM `{stage}` AS s
    WHERE s.event_id IN UNNEST(@ids)
      AND NOT EXISTS (SELECT 1 FROM `{target}` AS t WHERE t.event_id = s.event_id);
    UPDATE `{target}` AS t SET n = s.n FROM `{stage}` AS s
    WHERE t.event_id = s.event_id AND s.event_id IN UNNEST(@ids) AND t.n != s.n;
    """


def transaction(*statements: str, middle: str = "", wrap: bool = True) -> str:
    first, *rest = statements
    body = first + middle + "".join(rest)
    return f"BEGIN TRANSACTION;\n{body}COMMIT TRANSACTION;" if wrap else body


def try_script(p: Probe, label: str, sql: str, params: dict[str, Any]) -> bool:
    try:
        job = p.query(sql, **params)
    except gexc.GoogleAPICallError as error:
        p.note(f"{label} -> {type(error).__name__} {error.code}: {first_line(error)}")
        return False
    children = list(p.client.list_jobs(parent_job=job.job_id))
    p.note(
        f"{label} -> ok: statement_type={job.statement_type} num_child_jobs={job.num_child_jobs};"
        " children (newest first): "
        + ", ".join(f"{c.statement_type}:{c.num_dml_affected_rows}" for c in children)
    )
    return True


def setup_script_tables(p: Probe, prefix: str) -> tuple[str, str, str, list[dict[str, Any]]]:
    stage, a, b = (f"{prefix}_stage", f"{prefix}_a", f"{prefix}_b")
    for name in (stage, a, b):
        p.create_table(name, partitioned=name != stage)
    rows = make_rows(20, f"{prefix}-")
    p.load_json(stage, rows)
    return p.table(stage), p.table(a), p.table(b), rows


def counts(p: Probe, *tables: str) -> tuple[int, ...]:
    return tuple(p.count(t.rsplit(".", 1)[1]) for t in tables)


def check_e_merge_in_transaction(p: Probe) -> bool:
    stage, a, b, rows = setup_script_tables(p, "txm")
    ids = {"ids": ids_param("ids", [r["event_id"] for r in rows[:10]])}
    ok = try_script(
        p,
        "BEGIN; MERGE; MERGE; COMMIT",
        transaction(merge_insert(a, stage), merge_insert(b, stage)),
        ids,
    )
    p.note(f"  then a, b = {counts(p, a, b)} (10, 10 expected)")
    single = try_script(p, "BEGIN; MERGE; COMMIT", transaction(merge_insert(a, stage)), ids)
    p.note(f"  then a = {counts(p, a)}; the next plain query still works: {p.count('txm_a')}")
    return ok and single


def check_e_dml_transaction(p: Probe) -> bool:
    stage, a, b, rows = setup_script_tables(p, "txd")
    first = {"ids": ids_param("ids", [r["event_id"] for r in rows[:10]])}
    ok = try_script(
        p,
        "BEGIN; INSERT..NOT EXISTS; UPDATE..FROM (x2 tables); COMMIT",
        transaction(insert_absent(a, stage), insert_absent(b, stage)),
        first,
    )
    ok = ok and counts(p, a, b) == (10, 10)
    p.note(f"  then a, b = {counts(p, a, b)} (10, 10)")
    again = try_script(
        p, "same script again", transaction(insert_absent(a, stage), insert_absent(b, stage)), first
    )
    p.note(f"  then a, b = {counts(p, a, b)} (10, 10: idempotent)")
    ok = ok and again and counts(p, a, b) == (10, 10)
    rest = {"ids": ids_param("ids", [r["event_id"] for r in rows[10:]])}
    for label, middle in (
        ("SELECT ERROR()", "SELECT ERROR('boom in the middle');\n"),
        ("division by zero", "SELECT 1 / 0;\n"),
        ("bad CAST", "SELECT CAST('x' AS INT64);\n"),
    ):
        script = transaction(insert_absent(a, stage), insert_absent(b, stage), middle=middle)
        failed = not try_script(p, f"{label} between the two tables", script, rest)
        rolled_back = counts(p, a, b) == (10, 10)
        p.note(f"  then a, b = {counts(p, a, b)}: {'rolled back' if rolled_back else 'KEPT'}")
        ok = ok and failed and rolled_back
    handler = (
        transaction(insert_absent(a, stage), insert_absent(b, stage), middle="SELECT 1/0;\n")
        + "\nEXCEPTION WHEN ERROR THEN ROLLBACK TRANSACTION;"
        " RAISE USING MESSAGE = @@error.message;"
    )
    try_script(p, "with EXCEPTION WHEN ERROR THEN ROLLBACK; RAISE", f"BEGIN\n{handler}\nEND;", rest)
    p.note(f"  then a, b = {counts(p, a, b)}")
    return ok


def check_e_merge_script(p: Probe) -> bool:
    stage, a, b, rows = setup_script_tables(p, "txs")
    first = {"ids": ids_param("ids", [r["event_id"] for r in rows[:10]])}
    script = transaction(merge_insert(a, stage), merge_insert(b, stage), wrap=False)
    ok = try_script(p, "MERGE; MERGE (no transaction)", script, first)
    p.note(f"  then a, b = {counts(p, a, b)} (10, 10)")
    ok = ok and counts(p, a, b) == (10, 10)
    rest = {"ids": ids_param("ids", [r["event_id"] for r in rows[10:]])}
    script = transaction(
        merge_insert(a, stage), merge_insert(b, stage), middle="SELECT ERROR('boom');\n", wrap=False
    )
    try_script(p, "MERGE; ERROR; MERGE (no transaction)", script, rest)
    p.note(f"  then a, b = {counts(p, a, b)} (20, 10 as in BigQuery: no rollback)")
    return ok and counts(p, a, b) == (20, 10)


# --- (f) --------------------------------------------------------------------------------------


def one_row(p: Probe, sql: str, **params: Any) -> dict[str, Any]:
    return dict(next(iter(p.query(sql, **params).result())))


def check_f_functions(p: Probe) -> bool:
    row = one_row(
        p,
        """
        SELECT SAFE_CAST('abc' AS NUMERIC) AS bad,
               SAFE_CAST('1.5' AS NUMERIC) AS good,
               SAFE_CAST('1e400' AS NUMERIC) AS huge,
               SAFE_CAST('1.0000000001' AS NUMERIC) AS too_precise,
               TIMESTAMP_TRUNC(TIMESTAMP '2026-01-01 10:17:45.123456+00', MINUTE) AS minute,
               TIMESTAMP_TRUNC(TIMESTAMP '2026-01-01 10:17:45.123456+00', DAY) AS day,
               TIMESTAMP_SECONDS(DIV(UNIX_SECONDS(TIMESTAMP '2026-01-01 10:17:45+00'), 300)
                                 * 300) AS window_start,
               TIMESTAMP_ADD(TIMESTAMP '2026-01-01 00:00:00+00', INTERVAL 86400 SECOND) AS plus,
               TIMESTAMP_SUB(@lo, INTERVAL 1 DAY) AS minus_day
        """,
        lo=ts_param("lo", T0),
    )
    p.note(f"scalars: {row}")
    ok = row["bad"] is None and row["good"] == Decimal("1.5") and row["huge"] is None
    ok = ok and row["minute"] == dt.datetime(2026, 1, 1, 10, 17, tzinfo=UTC)
    ok = ok and row["window_start"] == dt.datetime(2026, 1, 1, 10, 15, tzinfo=UTC)
    ok = ok and row["minus_day"] == T0 - dt.timedelta(days=1)
    lo, hi = T0 + dt.timedelta(minutes=10), T0 + dt.timedelta(minutes=19, microseconds=19)
    count = one_row(
        p,
        f"SELECT COUNT(*) AS c FROM `{p.table('events')}` WHERE event_time BETWEEN @lo AND @hi",
        lo=ts_param("lo", lo),
        hi=ts_param("hi", hi),
    )["c"]
    p.note(f"WHERE event_time BETWEEN @lo AND @hi on the partitioned table: {count} rows (10)")
    return ok and count == 10


EXACT = Context(prec=100)  # Python's default context rounds to 28 digits


def exact_sums(p: Probe, table: str) -> dict[str, Decimal]:
    exact = {"all": Decimal(0), "positive": Decimal(0), "small": Decimal(0)}
    with localcontext(EXACT):
        for r in p.client.list_rows(table):
            exact["all"] += r["amount"]
            exact["positive"] += max(r["amount"], Decimal(0))
            exact["small"] += r["amount"] if abs(r["amount"]) < 10**6 else 0
    return exact


def check_f_bignumeric(p: Probe) -> bool:
    table = p.table("stage_json")  # 5004 rows; amounts cycle through BIG, NEG, TINY, 10.5, 0
    exact = exact_sums(p, table)
    small = one_row(
        p,
        f"SELECT SUM(CAST(amount AS BIGNUMERIC)) AS s FROM `{table}` WHERE ABS(amount) < 1000000",
    )["s"]
    p.note(f"SUM(CAST(amount AS BIGNUMERIC)) of small amounts: {small} (exact {exact['small']})")
    ok = small == exact["small"]
    try:
        value = one_row(p, f"SELECT SUM(CAST(amount AS BIGNUMERIC)) AS s FROM `{table}`")["s"]
        p.note(f"SUM(CAST(amount AS BIGNUMERIC)) with 29-digit amounts: {value} ({exact['all']})")
        ok = ok and value == exact["all"]
    except gexc.GoogleAPICallError as error:
        p.note(f"SUM(CAST(amount AS BIGNUMERIC)) with 29-digit amounts -> {first_line(error)}")
        p.note("NOTE: the emulator's BIGNUMERIC is DECIMAL(38, 18): only |x| < 10^20 fits")
        ok = False
    try:  # BigQuery refuses this too (numeric overflow): informational
        value = one_row(p, f"SELECT SUM(amount) AS s FROM `{table}` WHERE amount > 0")["s"]
        p.note(f"SUM(amount) past NUMERIC's range: {value} (exact {exact['positive']})")
    except gexc.GoogleAPICallError as error:
        p.note(
            f"SUM(amount) past NUMERIC's range -> {type(error).__name__} {error.code}:"
            f" {first_line(error)} (BigQuery: an overflow error too)"
        )
    return ok


# Exact and overflow-proof, in BigQuery and in the emulator: four INT64 partial sums of
#   amount = sign * (c2 * 10^20 + c1 * 10^10 + c0) + nanos / 10^9
# (per row c2 < 10^9, c1, c0 < 10^10, |nanos| < 10^9, so each sum fits INT64 for up to
# 9 * 10^8 rows), combined exactly in Python like the DuckDB warehouse's exact_total.
# The integer part is split as text: the emulator computes DIV, MOD and / of NUMERIC through
# FLOAT64 (inexact), and its BIGNUMERIC is DECIMAL(38, 18) (|x| < 10^20).
PARTS_SQL = """
WITH parts AS (
  SELECT CAST(SIGN(amount) AS INT64) AS sign,
         LPAD(CAST(ABS(TRUNC(amount)) AS STRING), 30, '0') AS digits,
         CAST((amount - TRUNC(amount)) * 1000000000 AS INT64) AS nanos
  FROM `{table}` {where}
)
SELECT SUM(sign * CAST(SUBSTR(digits, 1, 10) AS INT64)) AS c2,
       SUM(sign * CAST(SUBSTR(digits, 11, 10) AS INT64)) AS c1,
       SUM(sign * CAST(SUBSTR(digits, 21, 10) AS INT64)) AS c0,
       SUM(nanos) AS nanos
FROM parts
"""


def combine(parts: dict[str, int]) -> Decimal:
    with localcontext(EXACT):
        units = parts["c2"] * 10**20 + parts["c1"] * 10**10 + parts["c0"]
        return Decimal(units) + Decimal(parts["nanos"]).scaleb(-9)


def check_f_part_sums(p: Probe) -> bool:
    table = p.table("stage_json")
    exact = exact_sums(p, table)
    ok = True
    for key, where in (("all", ""), ("positive", "WHERE amount > 0")):
        parts = one_row(p, PARTS_SQL.format(table=table, where=where))
        total = combine(parts)
        p.note(f"{key}: {parts} -> {total} (exact {exact[key]})")
        ok = ok and total == exact[key]
    return ok


def check_f_numeric_division(p: Probe) -> bool:
    row = one_row(
        p,
        f"""SELECT DIV(TRUNC(NUMERIC '{BIG}'), NUMERIC '1e10') AS div,
                   MOD(TRUNC(NUMERIC '{BIG}'), NUMERIC '1e10') AS mod,
                   NUMERIC '{BIG}' / NUMERIC '1e20' AS quotient""",
    )
    exact = {
        "div": Decimal("1234567890123456789"),
        "mod": Decimal("123456789"),
        "quotient": Decimal("123456789.012345679"),
    }
    p.note(f"got {row!r}")
    p.note(f"BigQuery gives NUMERIC {exact} (quotient rounded to 9 digits)")
    return all(isinstance(v, Decimal) and v == exact[k] for k, v in row.items())


# --- (g) --------------------------------------------------------------------------------------


def run_concurrently(p: Probe, scripts: list[tuple[str, dict[str, Any]]]) -> list[str]:
    barrier = threading.Barrier(len(scripts))

    def run(item: tuple[str, dict[str, Any]]) -> str:
        sql, params = item
        client = p.emulator.client()
        try:
            config = bigquery.QueryJobConfig(query_parameters=list(params.values()))
            barrier.wait()
            started = time.monotonic()
            job = client.query(sql, job_config=config)
            job.result()
            return f"ok affected={job.num_dml_affected_rows} in {time.monotonic() - started:.2f} s"
        except Exception as error:
            if isinstance(error, gexc.GoogleAPICallError):
                return f"{type(error).__name__}: {first_line(error)}"
            return f"{type(error).__name__}: {error}"
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(len(scripts)) as pool:
        return list(pool.map(run, scripts))


def distinct(p: Probe, name: str) -> tuple[int, int]:
    row = one_row(p, f"SELECT COUNT(*) AS n, COUNT(DISTINCT event_id) AS d FROM `{p.table(name)}`")
    return row["n"], row["d"]


def check_g_concurrent_merges(p: Probe) -> bool:
    p.create_table("stage_conc", partitioned=False)
    rows = make_rows(400, "c-")
    p.load_json("stage_conc", rows)
    ok = True
    for index, (label, batches) in enumerate(
        (
            ("2 MERGEs, disjoint rows", [rows[:200], rows[200:]]),
            ("4 MERGEs, the same rows", [rows] * 4),
        )
    ):
        target = f"conc_{index}"
        p.create_table(target)
        sql = MERGE_SQL.format(target=p.table(target), source=p.table("stage_conc"))
        outcomes = run_concurrently(p, [(sql, merge_params(b)) for b in batches])
        rows_now = distinct(p, target)
        p.note(f"{label}: {outcomes}; rows, distinct ids = {rows_now} (400, 400)")
        ok = ok and rows_now == (400, 400)
    return ok


def check_g_concurrent_transactions(p: Probe) -> bool:
    p.create_table("conc_tx")
    stage, target = p.table("stage_conc"), p.table("conc_tx")
    params = {"ids": ids_param("ids", [f"c-{i:06d}" for i in range(400)])}
    script = transaction(insert_absent(target, stage))
    outcomes = run_concurrently(p, [(script, params)] * 2)
    rows_now = distinct(p, "conc_tx")
    p.note(
        f"2 scripts BEGIN; INSERT..NOT EXISTS; UPDATE; COMMIT with the same rows: {outcomes};"
        f" rows, distinct ids = {rows_now} (400, 400 if serialized)"
    )
    update = f"BEGIN TRANSACTION; UPDATE `{target}` SET n = n + 1 WHERE TRUE; COMMIT TRANSACTION;"
    outcomes = run_concurrently(p, [(update, {})] * 3)
    p.note(f"3 concurrent BEGIN; UPDATE all rows; COMMIT: {outcomes}")
    return rows_now == (400, 400)


# --- (h), (i), (j), (k), extras ---------------------------------------------------------------


def check_h_expiration(p: Probe) -> bool:
    dataset = bigquery.Dataset(f"{p.client.project}.{p.dataset}_exp")
    dataset.default_table_expiration_ms = 3 * 24 * 3600 * 1000
    dataset.default_partition_expiration_ms = 400 * 24 * 3600 * 1000
    p.client.create_dataset(dataset)
    back = p.client.get_dataset(dataset.reference)
    p.note(
        f"dataset back: default_table_expiration_ms={back.default_table_expiration_ms}"
        f" default_partition_expiration_ms={back.default_partition_expiration_ms}"
    )
    table = p.client.create_table(bigquery.Table(f"{dataset.project}.{dataset.dataset_id}.t"))
    p.note(f"a new table in it: expires={table.expires} (now + 3 days)")
    back.default_table_expiration_ms = None
    updated = p.client.update_dataset(back, ["default_table_expiration_ms"])
    p.note(
        f"update_dataset(default_table_expiration_ms=None) -> {updated.default_table_expiration_ms}"
    )
    p.client.delete_dataset(dataset.reference, delete_contents=True)
    return back.default_table_expiration_ms is None and table.expires is not None


def check_i_bytes(p: Probe) -> bool:
    job = p.query(f"SELECT SUM(n) AS s FROM `{p.table('stage_json')}`")
    p.note(
        f"total_bytes_processed={job.total_bytes_processed!r}"
        f" total_bytes_billed={job.total_bytes_billed!r} slot_millis={job.slot_millis!r}"
        f" cache_hit={job.cache_hit!r}"
    )
    dry = p.client.query(
        f"SELECT SUM(n) FROM `{p.table('stage_json')}`",
        job_config=bigquery.QueryJobConfig(dry_run=True),
    )
    p.note(f"dry run: total_bytes_processed={dry.total_bytes_processed!r}")
    p.note("NOTE: reported, but always 0 (hard-coded by the emulator)")
    return job.total_bytes_processed is not None


DDL = """
CREATE TABLE IF NOT EXISTS `{table}` (
  event_id STRING NOT NULL OPTIONS(description = 'Idempotency key.'),
  account_id STRING NOT NULL,
  amount NUMERIC NOT NULL,
  event_time TIMESTAMP NOT NULL,
  n INT64 NOT NULL,
  flag BOOL,
  attributes JSON,
  PRIMARY KEY (event_id) NOT ENFORCED
)
PARTITION BY DATE(event_time)
CLUSTER BY account_id, event_id
OPTIONS (description = 'probe table', require_partition_filter = FALSE)
"""


def check_j_ddl(p: Probe) -> bool:
    table = p.table("ddl_events")
    first = p.query(DDL.format(table=table))
    second = p.query(DDL.format(table=table))
    p.note(
        f"CREATE TABLE IF NOT EXISTS twice: statement_type={first.statement_type},"
        f" ddl_operation_performed={first.ddl_operation_performed} then"
        f" {second.ddl_operation_performed}"
    )
    back = p.client.get_table(table)
    constraints = back.table_constraints
    p.note(
        f"back: partitioning={back.time_partitioning} clustering={back.clustering_fields}"
        f" description={back.description!r} primary key="
        f"{constraints.primary_key.columns if constraints and constraints.primary_key else None}"
    )
    p.note("schema: " + ", ".join(f"{f.name} {f.field_type} {f.mode}" for f in back.schema))
    numeric = p.table("ddl_numeric")
    p.query(f"CREATE TABLE IF NOT EXISTS `{numeric}` (amount NUMERIC(38, 9) NOT NULL)")
    field_back = p.client.get_table(numeric).schema[0]
    p.note(
        f"NUMERIC(38, 9) column back as field_type={field_back.field_type!r}"
        f" precision={field_back.precision} scale={field_back.scale}"
    )
    p.query(
        f"INSERT INTO `{table}` (event_id, account_id, amount, event_time, n)"
        " VALUES ('x', 'a', 1, CURRENT_TIMESTAMP(), 1), ('x', 'a', 2, CURRENT_TIMESTAMP(), 2)"
    )
    p.note(f"two rows with one PRIMARY KEY NOT ENFORCED value: {p.count('ddl_events')} stored")
    partitioned = back.time_partitioning is not None and back.time_partitioning.field == (
        "event_time"
    )
    return partitioned and back.clustering_fields == ["account_id", "event_id"]


def describe(row: Any) -> str:
    return ", ".join(f"{k}={type(v).__name__}:{v!r}" for k, v in row.items())


def check_k_types(p: Probe) -> bool:
    table = p.table("stage_json")
    listed = next(r for r in p.client.list_rows(table) if r["attributes"] is not None)
    queried = next(
        iter(
            p.query(
                "SELECT amount, event_time, attributes, CAST(amount AS BIGNUMERIC) AS big,"
                f" n, flag FROM `{table}` WHERE attributes IS NOT NULL AND ABS(amount) < 100"
                " LIMIT 1"
            ).result()
        )
    )
    p.note(f"list_rows: {describe(listed)}")
    p.note(f"query().result(): {describe(queried)}")
    arrow = p.client.list_rows(table, max_results=3).to_arrow(create_bqstorage_client=False)
    p.note(
        "to_arrow(create_bqstorage_client=False): " + arrow.schema.to_string().replace("\n", "; ")
    )
    return (
        all(isinstance(r["amount"], Decimal) for r in (listed, queried))
        and all(isinstance(r["event_time"], dt.datetime) for r in (listed, queried))
        and all(r["event_time"].tzinfo is not None for r in (listed, queried))
        and all(isinstance(r["attributes"], dict) for r in (listed, queried))
    )


def struct_param(rows: list[dict[str, Any]]) -> bigquery.ArrayQueryParameter:
    types = {"event_id": "STRING", "amount": "NUMERIC", "event_time": "TIMESTAMP"}
    values = [
        bigquery.StructQueryParameter(
            None,
            *(
                bigquery.ScalarQueryParameter(
                    name,
                    kind,
                    Decimal(row[name])
                    if kind == "NUMERIC"
                    else dt.datetime.fromisoformat(row[name])
                    if kind == "TIMESTAMP"
                    else row[name],
                )
                for name, kind in types.items()
            ),
        )
        for row in rows
    ]
    return bigquery.ArrayQueryParameter("rows", "STRUCT", values)


def check_x_struct_parameter(p: Probe) -> bool:
    rows = make_rows(2000, "sp-")
    param = struct_param(rows)
    started = time.monotonic()
    back = list(
        p.query(
            "SELECT r.event_id, r.amount, r.event_time FROM UNNEST(@rows) AS r ORDER BY 1",
            rows=param,
        ).result()
    )
    took = time.monotonic() - started
    exact = all(
        b["amount"] == Decimal(r["amount"])
        and b["event_time"] == dt.datetime.fromisoformat(r["event_time"])
        for b, r in zip(back, rows, strict=True)
    )
    p.note(f"2000-row ARRAY<STRUCT> parameter read back in {took:.2f} s, exact: {exact}")
    star = next(iter(p.query("SELECT * FROM UNNEST(@rows) LIMIT 1", rows=param).result()))
    p.note(
        f"NOTE: SELECT * FROM UNNEST(@rows) gives columns {list(star.keys())} (BigQuery: fields)"
    )
    return exact


def check_x_other_apis(p: Probe) -> bool:
    rows = list(p.client.query_and_wait("SELECT 1 AS one"))
    p.note(f"query_and_wait (jobs.query API): {[dict(r) for r in rows]}")
    errors = p.client.insert_rows_json(
        p.table("stage_jobid"), make_rows(2, "ins-"), row_ids=["ins-0", "ins-1"]
    )
    p.note(f"insert_rows_json (streaming): errors={errors}")
    session = p.client.query("SELECT 1", job_config=bigquery.QueryJobConfig(create_session=True))
    session.result()
    p.note(
        "create_session: session_id="
        + str(session.session_info.session_id if session.session_info else None)
    )
    return not errors and rows[0]["one"] == 1


CHECKS: list[tuple[str, Callable[[Probe], bool]]] = [
    ("(a) dataset, table with modes, DAY partitioning, clustering", check_a_dataset_and_table),
    ("(b) load_table_from_json 1/3/5000 rows, exact values", check_b_load_json),
    ("(b) load_table_from_file NDJSON", check_b_load_ndjson_file),
    ("(b) load_table_from_file Parquet", check_b_load_parquet),
    ("(b) loads with out-of-range values", check_b_load_bad_rows),
    ("(b) batch as an ARRAY<STRUCT> query parameter (no staging table)", check_x_struct_parameter),
    ("(c) client-chosen job ids: 409 and get_job", check_c_job_ids),
    ("(d) MERGE with @lo/@hi/UNNEST(@ids), run three times", check_d_merge),
    ("(d) MERGE over a QUALIFY ROW_NUMBER() source", check_d_merge_qualify),
    ("(e) BEGIN TRANSACTION; MERGE; MERGE; COMMIT TRANSACTION", check_e_merge_in_transaction),
    ("(e) BEGIN; INSERT..NOT EXISTS; UPDATE..FROM; COMMIT, rollback", check_e_dml_transaction),
    ("(e) MERGE; MERGE script without a transaction", check_e_merge_script),
    ("(f) SAFE_CAST, TIMESTAMP_TRUNC, window maths, range filter", check_f_functions),
    ("(f) SUM(CAST(amount AS BIGNUMERIC)), SUM(NUMERIC) overflow", check_f_bignumeric),
    ("(f) workaround: exact sums from INT64 parts of the digits", check_f_part_sums),
    ("(f) DIV/MOD/division of NUMERIC", check_f_numeric_division),
    ("(g) concurrent MERGEs into one table", check_g_concurrent_merges),
    ("(g) concurrent BEGIN..COMMIT scripts into one table", check_g_concurrent_transactions),
    ("(h) dataset default_table_expiration_ms", check_h_expiration),
    ("(i) total_bytes_processed", check_i_bytes),
    ("(j) CREATE TABLE IF NOT EXISTS ... PARTITION BY DATE() CLUSTER BY", check_j_ddl),
    ("(k) Python types from list_rows and query", check_k_types),
    ("(+) query_and_wait, insert_rows_json, sessions", check_x_other_apis),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with bigquery_emulator(project="probe-project") as emulator:
        up = time.monotonic() - started
        print(f"emulator up in {up:.2f} s at {emulator.endpoint} (pid {emulator.pid})")
        client = emulator.client()
        probe = Probe(emulator, client, f"probe_{uuid.uuid4().hex[:8]}", args.verbose)
        for name, check in CHECKS:
            probe.run(name, check)
        client.close()
    failed = [name for name, ok, _ in probe.results if not ok]
    print(
        f"{len(probe.results) - len(failed)} PASS, {len(failed)} FAIL"
        f" in {time.monotonic() - started:.1f} s"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

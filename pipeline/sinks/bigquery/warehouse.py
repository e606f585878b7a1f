"""BigQuery: the production warehouse, with the same semantics as DuckDB.

Written by staged appends and merge cycles (docs/BIGQUERY.md, "Merge cycles"): workers append
their rows to ``staged_events`` through the Storage Write API (pipeline/sinks/bigquery/appends.py);
a merge cycle is one script job, one multi-statement transaction that merges what staging holds
into the ledger, ``transactions`` and the totals and removes the rows it took
(pipeline/sinks/bigquery/cycle.py); the versions it refused become dead letters afterwards, from
the durable ``staged_conflicts``. ``merge_events`` stages one batch and runs one cycle.

Job ids of mutating jobs derive from the run and the work, so a retried call re-attaches to the
job it already ran (409 Already Exists: wait for that job and use its result) instead of running
it twice; a failed job is retried under the next attempt number. The run id (one per launched
pipeline) keeps a later replay of the same input from re-attaching to jobs of an earlier run:
BigQuery keeps job history for months. Contention ("could not serialize access", concurrent
update, too many DML statements) and transient errors are reported as transient, so the sink
retries them with backoff. Values travel only as appended rows, loaded rows or query parameters;
project, dataset and table names are validated.

At start-up the datasets are looked up (never created unless asked) and the tables created, or
evolved to this version's columns (pipeline/sinks/schema_evolution.py).

Production rules the local emulator does not enforce, and the tests do through
tests/production_bigquery/ (docs/BIGQUERY.md): the worker holds only the roles of
terraform/iam.tf; every job call carries the datasets' location; a request never exceeds 10 MB;
one process keeps at most ``max_concurrent_batches`` jobs of its own in a table's DML queue;
every API call has a timeout.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from google.api_core import exceptions as api_exceptions
from google.cloud import bigquery
from google.cloud.bigquery_storage_v1 import BigQueryWriteClient

from pipeline.dead_letters import DeadLetter, conflict_dead_letter
from pipeline.events import (
    LedgerCandidate,
)
from pipeline.gcp_names import DATASET_ID, PROJECT_ID
from pipeline.sinks import ledger_rules
from pipeline.sinks.bigquery.appends import (
    STAGED_EVENTS,
    AppendFailed,
    WriteClientFactory,
    append,
    default_write_client,
    staged_rows,
)
from pipeline.sinks.bigquery.cycle import STAGED_CONFLICTS, cycle_script
from pipeline.sinks.bigquery.jobs import (
    REQUEST_BUDGET_BYTES,
    REQUEST_TIMEOUT_SECONDS,
    BigQueryBatchError,
    Jobs,
    batch_slots,
    default_client,
    is_transient,
)
from pipeline.sinks.bigquery.rows import (
    array,
    dead_letter_row,
    event_of,
    normalised,
    scalar,
    timestamp,
)
from pipeline.sinks.schema_evolution import StoredColumn, evolution
from pipeline.sinks.warehouse import MergeOutcome, Warehouse, WarehouseSetupError
from pipeline.tables import (
    ACCOUNT_WINDOW_TOTALS,
    ALL_TABLES,
    BIGQUERY_TYPES,
    DEAD_LETTERS,
    INGEST_CHECKPOINTS,
    TRANSACTION_EVENTS,
    TRANSACTIONS,
    Table,
    bigquery_field,
    bigquery_schema,
    validate_identifier,
)

_PROJECT = re.compile(PROJECT_ID)
_DATASET = re.compile(DATASET_ID)
_LOG = logging.getLogger(__name__)
# Legacy SQL type names the API may return for a column, as BIGQUERY_TYPES spells them.
_STANDARD_TYPES = {"INT64": "INTEGER", "BOOL": "BOOLEAN", "FLOAT64": "FLOAT"}
STAGING_TABLE_EXPIRATION = dt.timedelta(days=1)
# Refused versions turned into dead letters per round: their ids' requests stay near 1 MB.
DRAIN_ROWS = 10_000


def parse_dataset(reference: str) -> tuple[str, str]:
    """``PROJECT.DATASET`` -> (project, dataset), both validated."""
    project, sep, dataset = reference.partition(".")
    if not sep or not _PROJECT.fullmatch(project) or not _DATASET.fullmatch(dataset):
        raise ValueError(f"expected PROJECT.DATASET with a valid project id, got {reference!r}")
    return project, dataset


class BigQuerySetupError(WarehouseSetupError):
    """The datasets or tables are not as the pipeline needs them."""


class BigQueryWarehouse(Warehouse):
    """The tables in one BigQuery dataset, staged through another.

    The pipeline writes it by staged appends and merge cycles (``stage_events``,
    ``merge_staged``); ``merge_events`` stages one batch and runs a cycle, for callers that have
    one (tools, the warehouse contract tests).

    The worker needs only what terraform/iam.tf grants it (docs/BIGQUERY.md, "The rights"):
    bigquery.jobUser on the project, to run jobs, and bigquery.dataEditor on the two datasets, to
    read and write their tables. It looks the datasets up and never creates one unless
    ``create_datasets`` (a local run; creating a dataset needs bigquery.datasets.create on the
    project); tables are created when absent. Every job is created and looked up in the datasets'
    location: outside the US and EU multi-regions BigQuery finds a job only there.
    """

    def __init__(
        self,
        project: str,
        dataset: str,
        staging_dataset: str | None = None,
        *,
        client_factory: Callable[[str], bigquery.Client] | None = None,
        location: str | None = None,
        create_datasets: bool = False,
        max_concurrent_batches: int = 2,
        run_id: str | None = None,
        request_timeout_seconds: float = REQUEST_TIMEOUT_SECONDS,
        max_request_bytes: int = REQUEST_BUDGET_BYTES,
        write_client_factory: WriteClientFactory | None = None,
        dedup_horizon_days: int = 0,
    ) -> None:
        """``client_factory(project)`` is the client seam: tests pass one that builds a client of
        the local emulator, or wraps the real client to inject faults; ``write_client_factory()``
        is the same seam for the Storage Write API's client. ``location``: where the
        datasets must be (None: wherever they are). ``run_id`` scopes job ids to one launched
        pipeline (pass the same id to every worker's instance). ``dedup_horizon_days``: how far
        from a cycle's events its ledger lookup reaches (``--bigquery_dedup_horizon_days``; 0:
        the whole ledger)."""
        parse_dataset(f"{project}.{dataset}")
        self.project = project
        self.dataset = dataset
        staging_project, staging = parse_dataset(staging_dataset or f"{project}.{dataset}_staging")
        self.staging_project = staging_project
        self.staging_dataset = staging
        self.expected_location = location
        self._location: str | None = None
        self.create_datasets = create_datasets
        if max_concurrent_batches < 1:
            raise ValueError("max_concurrent_batches must be at least 1")
        self._slots = batch_slots(project, dataset, max_concurrent_batches)
        self._client_factory = client_factory or default_client
        self.run_id = run_id or uuid.uuid4().hex[:12]
        if not re.fullmatch(r"[A-Za-z0-9_]{1,64}", self.run_id):
            raise ValueError(f"run_id must be letters, digits or _, got {run_id!r}")
        self._timeout = request_timeout_seconds
        self.jobs = Jobs(
            lambda: self.client, lambda: self.location, self._timeout, max_request_bytes
        )
        self._client: bigquery.Client | None = None
        self._write_client_factory = write_client_factory or default_write_client
        self._write_client: BigQueryWriteClient | None = None
        if dedup_horizon_days < 0:
            raise ValueError("dedup_horizon_days must be 0 (the whole ledger) or more")
        self.dedup_horizon_days = dedup_horizon_days

    # --- plumbing -----------------------------------------------------------------------------

    @property
    def client(self) -> bigquery.Client:
        if self._client is None:
            self._client = self._client_factory(self.project)
        return self._client

    @property
    def location(self) -> str:
        """The datasets' location, which every job call carries."""
        if self._location is None:
            self._location = self._dataset(self.project, self.dataset).location
        return self._location

    @property
    def write_client(self) -> BigQueryWriteClient:
        if self._write_client is None:
            self._write_client = self._write_client_factory()
        return self._write_client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._write_client is not None:
            self._write_client.transport.close()
            self._write_client = None

    def is_transient(self, error: BaseException) -> bool:
        return is_transient(error)

    def _job_scope(self) -> str:
        # Job ids are project-wide: the destination is part of them, so two datasets never
        # share (and re-attach to) each other's jobs.
        return f"{self.project}.{self.dataset}|{self.staging_project}.{self.staging_dataset}"

    def table_ref(self, table: Table | str) -> str:
        name = validate_identifier(table if isinstance(table, str) else table.name)
        return f"`{self.project}.{self.dataset}.{name}`"

    def _staging_table(self, name: str) -> str:
        return f"{self.staging_project}.{self.staging_dataset}.{validate_identifier(name)}"

    def _staging_ref(self, name: str) -> str:
        return f"`{self._staging_table(name)}`"

    # --- datasets and tables ------------------------------------------------------------------

    def create_tables(self) -> None:
        """Check the datasets (creating them only when ``create_datasets``), check that they are
        in one location (and in the expected one), and create the tables that are absent."""
        warehouse = self._dataset(self.project, self.dataset)
        staging = self._dataset(self.staging_project, self.staging_dataset, staging=True)
        if (warehouse.location or "").lower() != (staging.location or "").lower():
            raise BigQuerySetupError(
                f"BigQuery datasets {self.project}.{self.dataset} ({warehouse.location}) and"
                f" {self.staging_project}.{self.staging_dataset} ({staging.location}) are in"
                " different locations; a job reads and writes in one location: put both in one"
                " (terraform/ does)"
            )
        self._location = warehouse.location
        for spec in ALL_TABLES:
            self._table(spec, self.project, self.dataset)
        for spec in (STAGED_EVENTS, STAGED_CONFLICTS):
            self._table(spec, self.staging_project, self.staging_dataset, staging=True)

    def _dataset(self, project: str, dataset: str, staging: bool = False) -> bigquery.Dataset:
        name = f"{project}.{dataset}"
        try:
            found = self.client.get_dataset(name, timeout=self._timeout)
        except api_exceptions.NotFound:
            found = self._create_dataset(project, dataset, staging)
        except api_exceptions.Forbidden as error:
            raise BigQuerySetupError(
                f"the pipeline may not read BigQuery dataset {name}, or it does not exist: its"
                " service account needs roles/bigquery.dataEditor on the dataset (terraform/iam.tf"
                f" grants it on the datasets Terraform creates). BigQuery said: {error.message}"
            ) from error
        expected = self.expected_location
        if expected and (found.location or "").lower() != expected.lower():
            raise BigQuerySetupError(
                f"BigQuery dataset {name} is in {found.location}, not in --bigquery_location"
                f"={expected}: pass the dataset's location, or point --warehouse at a dataset"
                f" in {expected}"
            )
        return found

    def _create_dataset(self, project: str, dataset: str, staging: bool) -> bigquery.Dataset:
        name = f"{project}.{dataset}"
        if not self.create_datasets:
            raise BigQuerySetupError(
                f"BigQuery dataset {name} does not exist. Create it with Terraform (terraform/,"
                " docs/DEPLOY.md), or pass --bigquery_create_datasets to let this run create it"
                f" (that needs bigquery.datasets.create on project {project}, which the worker"
                " service account of terraform/iam.tf does not have)"
            )
        created = bigquery.Dataset(name)
        created.location = self.expected_location
        if staging:
            created.default_table_expiration_ms = int(
                STAGING_TABLE_EXPIRATION.total_seconds() * 1000
            )
        try:
            return self.client.create_dataset(created, exists_ok=True, timeout=self._timeout)
        except api_exceptions.Forbidden as error:
            raise BigQuerySetupError(
                f"--bigquery_create_datasets: may not create BigQuery dataset {name}: that needs"
                f" bigquery.datasets.create on project {project} (roles/bigquery.user, for"
                f" example). BigQuery said: {error.message}"
            ) from error

    def _table(self, spec: Table, project: str, dataset: str, staging: bool = False) -> None:
        """Create the table if absent (or check its columns). A staging table that waits for
        merge cycles must outlive the staging dataset's default expiration, meant for what a
        failed step leaves behind: its expiration is removed."""
        name = f"{project}.{dataset}.{spec.name}"
        try:
            found = self.client.get_table(name, timeout=self._timeout)
        except api_exceptions.NotFound:
            found = None
        except api_exceptions.Forbidden as error:
            raise BigQuerySetupError(
                f"the pipeline may not read table {name}: grant its service account"
                f" roles/bigquery.dataEditor on {project}.{dataset}. BigQuery said:"
                f" {error.message}"
            ) from error
        if found is not None:
            self._evolve(spec, found)
            if staging and found.expires is not None:
                self._keep(found)
            return
        table = bigquery.Table(
            name, schema=[bigquery.SchemaField.from_api_repr(f) for f in bigquery_schema(spec)]
        )
        table.description = spec.description
        if spec.partitioned:
            table.time_partitioning = bigquery.TimePartitioning(
                type_=bigquery.TimePartitioningType.DAY, field=spec.time_column
            )
        if spec.clustering:
            table.clustering_fields = list(spec.clustering)
        try:
            created = self.client.create_table(table, exists_ok=True, timeout=self._timeout)
        except api_exceptions.Forbidden as error:
            raise BigQuerySetupError(
                f"may not create table {name}: grant the pipeline's service account"
                f" roles/bigquery.dataEditor on {project}.{dataset} (it holds"
                f" bigquery.tables.create), or create the tables with Terraform. BigQuery said:"
                f" {error.message}"
            ) from error
        if staging and created.expires is not None:
            self._keep(created)

    def _evolve(self, spec: Table, found: bigquery.Table) -> None:
        """Bring an existing table to this version's columns: new optional fields are added as
        NULLABLE columns, fields made optional relaxed (a schema update, which the worker's
        roles/bigquery.dataEditor allows); anything else is refused with what to do
        (pipeline/sinks/schema_evolution.py)."""
        stored = {
            f.name: StoredColumn(
                _STANDARD_TYPES.get(f.field_type, f.field_type), f.mode == "REQUIRED"
            )
            for f in found.schema
        }
        change = evolution(
            found.full_table_id or spec.name, spec.columns, stored,
            lambda c: BIGQUERY_TYPES[c.type],
        )  # fmt: skip
        if not change:
            return
        relaxed = {c.name for c in change.relax}
        found.schema = [
            *(
                bigquery.SchemaField.from_api_repr({**f.to_api_repr(), "mode": "NULLABLE"})
                if f.name in relaxed
                else f
                for f in found.schema
            ),
            *(bigquery.SchemaField.from_api_repr(bigquery_field(c)) for c in change.add),
        ]
        _LOG.warning(
            "Table %s: adding columns %s, making %s nullable (fields this version made optional)",
            found.full_table_id, [c.name for c in change.add], sorted(relaxed),
        )  # fmt: skip
        try:
            self.client.update_table(found, ["schema"], timeout=self._timeout)
        except api_exceptions.Forbidden as error:
            raise BigQuerySetupError(
                f"may not add columns to table {found.full_table_id}: grant the pipeline's"
                " service account roles/bigquery.dataEditor on its dataset (it holds"
                f" bigquery.tables.update). BigQuery said: {error.message}"
            ) from error

    def _keep(self, table: bigquery.Table) -> None:
        table.expires = None
        self.client.update_table(table, ["expires"], timeout=self._timeout)

    # --- staged appends and merge cycles ------------------------------------------------------

    def stage_events(self, batch: Sequence[LedgerCandidate]) -> None:
        if not batch:
            return
        stream = (
            f"projects/{self.staging_project}/datasets/{self.staging_dataset}"
            f"/tables/{STAGED_EVENTS.name}/streams/_default"
        )
        try:
            append(self.write_client, stream, staged_rows(batch, dt.datetime.now(dt.UTC)),
                   self._timeout)  # fmt: skip
        except AppendFailed as error:
            raise BigQueryBatchError(str(error), error.transient) from error

    def merge_staged(self) -> MergeOutcome:
        """One cycle script (pipeline/sinks/bigquery/cycle.py), then the dead letters of the
        versions it refused, and of any an earlier cycle refused and did not turn into dead
        letters before it stopped."""
        cycle = uuid.uuid4().hex
        script = cycle_script(
            self.table_ref(TRANSACTION_EVENTS),
            self.table_ref(TRANSACTIONS),
            self.table_ref(ACCOUNT_WINDOW_TOTALS),
            self._staging_ref(STAGED_EVENTS.name),
            self._staging_ref(STAGED_CONFLICTS.name),
            horizon=self.dedup_horizon_days > 0,
        )
        params = [scalar("cycle", "STRING", cycle), timestamp("now", dt.datetime.now(dt.UTC))]
        if self.dedup_horizon_days:
            params.append(scalar("horizon_days", "INT64", self.dedup_horizon_days))
        with self._slots:
            job = self.jobs.query(script, params, job_id=f"eo_{self.run_id}_{cycle}_cycle")
            (counts,) = list(job.result(timeout=self._timeout))
            dead_letters = self._drain_conflicts() if counts["pending_conflicts"] else 0
        inserted, conflicts = int(counts["inserted"]), int(counts["conflicts"])
        outcome = MergeOutcome(
            inserted=inserted,
            duplicates=int(counts["staged"]) - inserted - conflicts,
            conflicts=conflicts,
            transactions_upserted=int(counts["transactions_upserted"]),
            windows_upserted=int(counts["windows_upserted"]),
            dead_letters_inserted=dead_letters,
        )
        return outcome

    def _drain_conflicts(self) -> int:
        """Turn the refused versions in ``staged_conflicts`` into dead letters, then remove
        them, ``DRAIN_ROWS`` at a time so that every request stays small whatever the backlog;
        run again after a crash, the dead letters' ids make it change nothing."""
        table = self._staging_ref(STAGED_CONFLICTS.name)
        inserted = 0
        while True:
            rows = [dict(r.items()) for r in self.jobs.rows(
                f"SELECT * FROM {table} ORDER BY conflict_id LIMIT {DRAIN_ROWS}", [])]  # fmt: skip
            letters = [
                conflict_dead_letter(
                    event_of(row),
                    event_of(row, "kept_") if row["kept_event_id"] is not None else None,
                )
                for row in rows
            ]
            ids = sorted(row["conflict_id"] for row in rows)
            digest = hashlib.sha256("\n".join([self._job_scope(), *ids]).encode()).hexdigest()
            inserted += self._insert_dead_letters(letters, f"eo_{self.run_id}_cdl_{digest[:32]}")
            if ids:
                self.jobs.query(
                    f"DELETE FROM {table} WHERE conflict_id IN UNNEST(@ids)",
                    [array("ids", "STRING", ids)],
                )
            if len(rows) < DRAIN_ROWS:
                return inserted

    # --- events -------------------------------------------------------------------------------

    # --- dead letters -----------------------------------------------------------------------

    def merge_dead_letters(self, rows: Sequence[DeadLetter]) -> int:
        if not rows:
            return 0
        # The job id names the batch's distinct ids; _insert_dead_letters keeps one row per id.
        digest = hashlib.sha256(
            "\n".join([self._job_scope(), *sorted({r.dead_letter_id for r in rows})]).encode()
        )
        with self._slots:
            return self._insert_dead_letters(rows, f"eo_{self.run_id}_dl_{digest.hexdigest()[:32]}")

    def _insert_dead_letters(self, rows: Sequence[DeadLetter], job: str) -> int:
        unique = ledger_rules.unique_dead_letters(rows)
        if not unique:
            return 0
        ids = [r.dead_letter_id for r in unique]
        present = {
            row["dead_letter_id"]
            for row in self.jobs.rows(
                f"""SELECT dead_letter_id FROM {self.table_ref(DEAD_LETTERS)}
                    WHERE dead_letter_id IN UNNEST(@ids)""",
                [array("ids", "STRING", ids)],
            )
        }
        new = [r for r in unique if r.dead_letter_id not in present]
        if not new:
            return 0
        stage = f"stage_{job}"
        loaded = [dead_letter_row(r) for r in new]
        self.jobs.load(
            self._staging_table(stage), bigquery_schema(DEAD_LETTERS), loaded, f"{job}_stage"
        )
        arrivals = [r.arrival_time for r in new]
        merged = self.jobs.query(
            self.dead_letters_merge_sql(stage),
            [timestamp("lo", min(arrivals)), timestamp("hi", max(arrivals))],
            job_id=f"{job}_merge",
        )
        self.jobs.drop(self._staging_table(stage))
        return int(merged.num_dml_affected_rows or 0)

    def dead_letters_merge_sql(self, stage: str) -> str:
        # Ids already present anywhere were excluded from the stage by a clustered lookup, so
        # restricting the target to the stage's arrival range cannot add a second row.
        cols = DEAD_LETTERS.column_names
        return f"""
            MERGE {self.table_ref(DEAD_LETTERS)} AS T
            USING {self._staging_ref(stage)} AS S
            ON T.dead_letter_id = S.dead_letter_id AND T.arrival_time BETWEEN @lo AND @hi
            WHEN NOT MATCHED THEN INSERT ({", ".join(cols)})
                VALUES ({", ".join("S." + c for c in cols)})
        """

    # --- replay checkpoints -------------------------------------------------------------------

    def read_checkpoint(self, source: str) -> dt.datetime | None:
        rows = list(
            self.jobs.rows(
                f"SELECT replay_from FROM {self.table_ref(INGEST_CHECKPOINTS)}"
                " WHERE source = @source",
                [scalar("source", "STRING", source)],
            )
        )
        return rows[0]["replay_from"] if rows else None

    def write_checkpoint(self, source: str, replay_from: dt.datetime) -> None:
        self.jobs.query(
            f"""MERGE {self.table_ref(INGEST_CHECKPOINTS)} AS T
                USING (SELECT @source AS source, @replay_from AS replay_from) AS S
                ON T.source = S.source
                WHEN MATCHED THEN UPDATE SET replay_from = S.replay_from, updated_at = @now
                WHEN NOT MATCHED THEN INSERT (source, replay_from, updated_at)
                    VALUES (S.source, S.replay_from, @now)""",
            [
                scalar("source", "STRING", source),
                timestamp("replay_from", replay_from),
                timestamp("now", dt.datetime.now(dt.UTC)),
            ],
        )

    # --- reading ------------------------------------------------------------------------------

    def fetch_rows(self, table: str) -> list[dict[str, Any]]:
        spec = next((t for t in ALL_TABLES if t.name == validate_identifier(table)), None)
        if spec is None:
            raise ValueError(f"unknown table {table!r}")
        rows = self.jobs.rows(
            f"SELECT * FROM {self.table_ref(spec)} ORDER BY {', '.join(spec.key)}", []
        )
        return [normalised(spec, dict(row.items())) for row in rows]

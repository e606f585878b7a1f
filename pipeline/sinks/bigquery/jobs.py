"""How the BigQuery warehouse runs jobs: ids that make a retried call re-attach instead of
running twice, waits that never hang on a lost reply, requests measured against BigQuery's size
limit before they are sent, and which errors are worth retrying.

Job ids of mutating jobs derive from the run and the work, so a retried call re-attaches to the
job it already ran (409 Already Exists: wait for that job and use its result) instead of running
it twice; a failed job is retried under the next attempt number. Every job is created and looked
up in the datasets' location: outside the US and EU multi-regions BigQuery finds a job only
there. Every API call carries a timeout.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import requests
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from pipeline.sinks.bigquery.appends import SCHEMA_NOT_YET_SEEN

Parameter = bigquery.ScalarQueryParameter | bigquery.ArrayQueryParameter

_TRANSIENT_MESSAGES = (
    "could not serialize access",
    "concurrent update",
    "too many dml statements outstanding",
    "rate limit",
    "ratelimitexceeded",
    "backenderror",
    "failed to commit",  # the local emulator's word for a write-write conflict
    # A column just added at start-up (a new optional field) reaches the write API's view of
    # the table minutes later; appends naming it are refused until then, so they are retried
    # (appends.py).
    SCHEMA_NOT_YET_SEEN,
)


class BigQueryBatchError(RuntimeError):
    """A job failed; ``transient`` says whether trying again may succeed."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def is_transient(error: BaseException) -> bool:
    if isinstance(error, BigQueryBatchError):
        return error.transient
    if isinstance(
        error,
        api_exceptions.ServiceUnavailable
        | api_exceptions.Aborted  # the write API's word for a conflict
        | api_exceptions.InternalServerError
        | api_exceptions.TooManyRequests
        | api_exceptions.GatewayTimeout
        | api_exceptions.DeadlineExceeded
        | api_exceptions.RetryError  # the client's own retries of a 5xx or timeout ran out
        | ConnectionError
        | TimeoutError
        | requests.exceptions.ConnectionError
        | requests.exceptions.Timeout
        | requests.exceptions.ChunkedEncodingError,
    ):
        return True
    return any(text in str(error).lower() for text in _TRANSIENT_MESSAGES)


def default_client(project: str) -> bigquery.Client:
    """The client a run uses. Like Google's clients with ``PUBSUB_EMULATOR_HOST``,
    google-cloud-bigquery sends requests to ``BIGQUERY_EMULATOR_HOST`` when it is set (a URL,
    e.g. http://127.0.0.1:9050); an emulator takes no credentials, so none are looked up then.
    That is how a local run, or a test of the command line, reaches a local BigQuery."""
    if os.environ.get("BIGQUERY_EMULATOR_HOST"):
        return bigquery.Client(project=project, credentials=AnonymousCredentials())
    return bigquery.Client(project=project)


class RequestTooLarge(BigQueryBatchError):
    """A request would exceed BigQuery's size limit; it is not sent."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a BigQuery request of {size} bytes exceeds {limit}", transient=False)


# BigQuery refuses an API request over 10 MB, parameters included
# (https://cloud.google.com/bigquery/quotas#api_request_quotas). A query's request is measured
# before it is sent, with room left for what the estimate does not count (headers, the job
# reference); one that would not fit fails before it is sent (``RequestTooLarge``). Requests are
# bounded by design: appends are chunked (appends.py), dead letters come in batches and
# refused versions are drained ``DRAIN_ROWS`` at a time.
MAX_REQUEST_BYTES = 10 * 1024 * 1024
REQUEST_BUDGET_BYTES = MAX_REQUEST_BYTES * 9 // 10
# Per HTTP request, not per job: a call that gets no answer is abandoned after this and retried
# (the client's retry re-sends it; a job insert then meets 409 and re-attaches). Without it the
# client waits forever on a connection that lost its reply.
REQUEST_TIMEOUT_SECONDS = 60.0

# One limiter per worker process and warehouse dataset, shared by every DoFn instance of the
# process (Dataflow runs many in one process: threads, and a DoFn instance per thread): BigQuery
# runs 2 mutating DML statements per table and queues 20; a merge cycle and a dead-letter batch
# each run their statements one after another, so this bounds what one process puts in that
# queue.
_BATCH_SLOTS: dict[tuple[str, str, int], threading.BoundedSemaphore] = {}
_BATCH_SLOTS_LOCK = threading.Lock()


def batch_slots(project: str, dataset: str, size: int) -> threading.BoundedSemaphore:
    """The process's limiter of concurrent batches into ``project.dataset``."""
    with _BATCH_SLOTS_LOCK:
        return _BATCH_SLOTS.setdefault((project, dataset, size), threading.BoundedSemaphore(size))


def _request_bytes(sql: str, config: bigquery.QueryJobConfig) -> int:
    """The size of the jobs.insert body the client will send for this query (its JSON, as
    google-cloud-bigquery serialises it; the job reference is left to the budget's margin)."""
    configuration = config.to_api_repr()
    configuration.setdefault("query", {})["query"] = sql
    return len(json.dumps({"configuration": configuration}).encode("utf-8"))


class Jobs:
    """The job calls of one warehouse: ``client()`` and ``location()`` are the warehouse's (its
    client seam, and the datasets' location, looked up once)."""

    def __init__(
        self,
        client: Callable[[], bigquery.Client],
        location: Callable[[], str],
        timeout: float = REQUEST_TIMEOUT_SECONDS,
        max_request_bytes: int = REQUEST_BUDGET_BYTES,
    ) -> None:
        self.client = client
        self.location = location
        self.timeout = timeout
        self.max_request_bytes = max_request_bytes

    def run(
        self,
        start: Callable[[str], bigquery.job.QueryJob | bigquery.job.LoadJob],
        job_id: str | None,
        still_useful: Callable[[], bool] | None = None,
    ) -> Any:
        """Run a job; with a ``job_id``, re-attach to an earlier job of that id instead of
        running it twice, and after a failed one (or one whose result is gone: ``still_useful``
        says no) try the next attempt id. A read gets an id of its own, so that it too
        re-attaches when the reply to its insert was lost."""
        job_id = job_id or f"eo_read_{uuid.uuid4().hex}"
        attempt = 0
        while True:
            attempt_id = f"{job_id}_{attempt}"
            job: Any
            try:
                job = start(attempt_id)
            except api_exceptions.Conflict:
                job = self.get(attempt_id, just_created=True)
                if job.error_result or (
                    still_useful is not None and job.state == "DONE" and not still_useful()
                ):
                    attempt += 1
                    continue
            return self.wait(job)

    def get(self, job_id: str, just_created: bool = False) -> Any:
        try:
            return self.client().get_job(job_id, location=self.location(), timeout=self.timeout)
        except api_exceptions.NotFound as error:
            if not just_created:
                raise
            # BigQuery said the id exists (409); a job is not always visible at once after
            # that (googleapis/python-bigquery#2134): look again on the next try.
            raise BigQueryBatchError(f"job {job_id} exists but is not visible yet", True) from error

    def wait(self, job: Any) -> Any:
        """Wait for the job, polling with the request timeout: a poll that gets no reply is
        abandoned and sent again, never waited on forever."""
        while True:
            try:
                job.result(timeout=self.timeout)
            except concurrent.futures.TimeoutError:
                continue  # not done yet, or a poll got no answer: poll again
            except api_exceptions.GoogleAPICallError as error:
                raise BigQueryBatchError(
                    f"BigQuery job {job.job_id} failed: {error}", is_transient(error)
                ) from error
            return job

    def rows(
        self,
        sql: str,
        params: Sequence[Parameter],
    ) -> list[Any]:
        """The rows of a read query, every page fetched with the request timeout."""
        return list(self.query(sql, params).result(timeout=self.timeout))

    def query(
        self,
        sql: str,
        params: Sequence[Parameter],
        job_id: str | None = None,
    ) -> bigquery.job.QueryJob:
        config = self.check_size(sql, params)
        return self.run(
            lambda attempt_id: self.client().query(
                sql,
                job_config=config,
                job_id=attempt_id,
                job_retry=None,
                location=self.location(),
                timeout=self.timeout,
            ),
            job_id,
        )

    def load(
        self,
        destination: str,
        schema: list[dict[str, str]],
        rows: list[dict[str, Any]],
        job_id: str,
    ) -> None:
        """Load ``rows`` into the table ``destination`` (PROJECT.DATASET.TABLE), replacing it."""
        config = bigquery.LoadJobConfig(
            schema=[bigquery.SchemaField.from_api_repr(field) for field in schema],
            write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
        )
        # Over 5 MB the client switches to a resumable upload, whose chunks the request limit
        # does not apply to; below it a multipart request stays under the limit. A batch
        # retried after its staging table expired (the dataset's default expiration) loads it
        # again instead of re-attaching to the load that made it.
        self.run(
            lambda attempt_id: self.client().load_table_from_json(
                rows,
                destination,
                job_config=config,
                job_id=attempt_id,
                location=self.location(),
                timeout=self.timeout,
            ),
            job_id,
            still_useful=lambda: self.exists(destination),
        )

    def exists(self, table: str) -> bool:
        try:
            self.client().get_table(table, timeout=self.timeout)
        except api_exceptions.NotFound:
            return False
        return True

    def drop(self, table: str) -> None:
        self.client().delete_table(table, not_found_ok=True, timeout=self.timeout)

    def check_size(
        self,
        sql: str,
        params: Sequence[Parameter],
    ) -> bigquery.QueryJobConfig:
        config = bigquery.QueryJobConfig(query_parameters=list(params))
        size = _request_bytes(sql, config)
        if size > self.max_request_bytes:
            raise RequestTooLarge(size, self.max_request_bytes)
        return config

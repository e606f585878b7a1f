"""An HTTP proxy in front of the local BigQuery emulator that answers the way BigQuery does for a
caller holding given roles: the rules the emulator leaves out, enforced where the real client
meets them (its REST calls), so every retry, poll and location parameter of the client is
exercised as it would be against Google.

Rules (each has a test in tests/test_production_bigquery.py):

* **Permissions**: every call on a dataset, a table or a new job checks the permission Google
  documents for it against :class:`~tests.production_bigquery.iam.Grants` (the worker's, read
  from terraform/iam.tf); 403 "Access Denied" otherwise, before anything else is looked at. The
  caller's own jobs are got, polled and cancelled freely, as BigQuery lets their creator.
* **Locations**: datasets live where they were created. A job given a location other than its
  datasets' fails with 404 "Not found: Dataset ... was not found in location ..."; outside the US
  and EU multi-regions, jobs.get, getQueryResults and cancel without the job's location answer
  404 "Not found: Job ..." (https://cloud.google.com/bigquery/docs/locations).
* **Job ids**: inserting an existing job id answers 409 "Already Exists".
* **Requests**: a request body over 10 MB answers 400 "Request payload size exceeds the limit:
  10485760 bytes." (https://cloud.google.com/bigquery/quotas#api_request_quotas); the chunks of a
  resumable upload are exempt, as in BigQuery.
* **Job lifecycle**: latency, the mutating-DML queue per table, conflicts, load quotas
  (tests/production_bigquery/jobs.py).
* **Lost responses** (:class:`Faults`): the call is carried out, then its reply is replaced by a
  503, or the connection is closed, or held until the caller times out.

The emulator itself is the administrator: tests set up datasets the way Terraform does by calling
it directly (tests/production_bigquery/provision.py), and the code under test goes through here.
Anything this proxy does not model answers 501, so nothing reaches the emulator unchecked.
"""

from __future__ import annotations

import copy
import email
import email.policy
import functools
import http.server
import json
import re
import socketserver
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlglot.errors
import urllib3

from tests.production_bigquery.iam import Grants, WorkerRoles, worker_roles_from_terraform
from tests.production_bigquery.jobs import NO_LATENCY, Job, JobFailed, Latency, Scheduler
from tests.production_bigquery.statements import Statement, TableId, analyse
from tests.production_bigquery.write_api import WriteApiRules

MAX_REQUEST_BYTES = 10 * 1024 * 1024
MULTI_REGIONS = frozenset({"US", "EU"})
# How long a call waits for a job that has no latency before answering that it is still running.
_SYNC_WAIT_SECONDS = 10.0
_MAX_RESULTS_WAIT_SECONDS = 10.0
_STATUS_BY_REASON = {
    "accessDenied": 403,
    "notFound": 404,
    "duplicate": 409,
    "quotaExceeded": 403,
    "rateLimitExceeded": 403,
    "backendError": 503,
    "stopped": 400,
}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        return dict(json.loads(self.body or b"{}"))


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    operation: str = ""  # e.g. jobs.insert, for faults and the request log
    job_id: str = ""


def _json_reply(status: int, payload: dict[str, Any]) -> Reply:
    return Reply(status, json.dumps(payload).encode(), {"content-type": "application/json"})


def error_reply(status: int, reason: str, message: str) -> Reply:
    """BigQuery's error body, which google-api-core turns into the matching exception."""
    return _json_reply(
        status,
        {
            "error": {
                "code": status,
                "message": message,
                "errors": [{"message": message, "domain": "global", "reason": reason}],
            }
        },
    )


@dataclass
class _Fault:
    operation: str
    job_id_contains: str
    how: str  # unavailable | reset | stall
    times: int
    stall_seconds: float
    fired: int = 0


@dataclass(frozen=True)
class LostReply:
    """What a fault does with the reply: ``unavailable`` sends a 503 instead, ``reset`` closes the
    connection without a word, ``stall`` holds it for ``seconds`` and then closes it."""

    how: str
    seconds: float = 0.0


class Faults:
    """Planned lost responses: the call is carried out in full, then its reply is lost."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._planned: list[_Fault] = []

    def lose(
        self,
        operation: str,
        job_id_contains: str = "",
        how: str = "unavailable",
        times: int = 1,
        stall_seconds: float = 30.0,
    ) -> None:
        if how not in {"unavailable", "reset", "stall"}:
            raise ValueError(f"unknown way to lose a reply: {how}")
        with self._lock:
            self._planned.append(_Fault(operation, job_id_contains, how, times, stall_seconds))

    def fired(self, operation: str) -> int:
        with self._lock:
            return sum(f.fired for f in self._planned if f.operation == operation)

    def take(self, reply: Reply) -> LostReply | None:
        with self._lock:
            for fault in self._planned:
                if (
                    fault.fired < fault.times
                    and fault.operation == reply.operation
                    and fault.job_id_contains in reply.job_id
                ):
                    fault.fired += 1
                    return LostReply(fault.how, fault.stall_seconds)
        return None


@dataclass(frozen=True)
class Logged:
    operation: str
    job_id: str
    status: int  # 0: the reply was lost
    bytes_in: int


_PROJECT = r"/bigquery/v2/projects/(?P<p>[^/]+)"
_DATASET = _PROJECT + r"/datasets/(?P<d>[^/]+)"
_TABLE = _DATASET + r"/tables/(?P<t>[^/]+)"
_JOB = _PROJECT + r"/jobs/(?P<j>[^/]+)"
_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    (method, re.compile(pattern), operation)
    for method, pattern, operation in [
        ("POST", r"/upload" + _PROJECT + "/jobs", "jobs.insert"),
        ("PUT", r"/upload" + _PROJECT + "/jobs", "jobs.upload"),
        ("POST", _PROJECT + "/jobs", "jobs.insert"),
        ("GET", _JOB, "jobs.get"),
        ("POST", _JOB + "/cancel", "jobs.cancel"),
        ("GET", _PROJECT + r"/queries/(?P<j>[^/]+)", "jobs.getQueryResults"),
        ("POST", _PROJECT + "/datasets", "datasets.insert"),
        ("GET", _DATASET, "datasets.get"),
        ("PATCH", _DATASET, "datasets.patch"),
        ("PUT", _DATASET, "datasets.update"),
        ("DELETE", _DATASET, "datasets.delete"),
        ("GET", _DATASET + "/tables", "tables.list"),
        ("POST", _DATASET + "/tables", "tables.insert"),
        ("GET", _TABLE, "tables.get"),
        ("PATCH", _TABLE, "tables.patch"),
        ("PUT", _TABLE, "tables.update"),
        ("DELETE", _TABLE, "tables.delete"),
        ("GET", _TABLE + "/data", "tabledata.list"),
        ("POST", _TABLE + "/insertAll", "tabledata.insertAll"),
    ]
]

# The permission each dataset- or table-level call checks, on the dataset.
_DATASET_PERMISSIONS = {
    "datasets.get": "bigquery.datasets.get",
    "datasets.patch": "bigquery.datasets.update",
    "datasets.update": "bigquery.datasets.update",
    "datasets.delete": "bigquery.datasets.delete",
    "tables.list": "bigquery.tables.list",
    "tables.insert": "bigquery.tables.create",
    "tables.get": "bigquery.tables.get",
    "tables.patch": "bigquery.tables.update",
    "tables.update": "bigquery.tables.update",
    "tables.delete": "bigquery.tables.delete",
    "tabledata.list": "bigquery.tables.getData",
    "tabledata.insertAll": "bigquery.tables.updateData",
}


class ProductionBigQuery:
    """The proxy: start it on a free port in front of ``emulator_endpoint``; point the code under
    test at :attr:`endpoint`. ``grants`` are the caller's roles (none until :meth:`grant_worker`
    or :meth:`grant` adds some)."""

    def __init__(
        self,
        emulator_endpoint: str,
        *,
        latency: Latency = NO_LATENCY,
        grants: Grants | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        emulator_grpc: str | None = None,
        **scheduler_limits: Any,
    ) -> None:
        """``emulator_grpc``: the emulator's gRPC address; given, the Storage Write API's rules
        (write_api.py) listen at :attr:`write_address` in front of it."""
        self.emulator = emulator_endpoint.rstrip("/")
        self.scheduler = Scheduler(latency, **scheduler_limits)
        self.faults = Faults()
        self.grants = grants or Grants()
        self.worker_roles: WorkerRoles = worker_roles_from_terraform()
        self.max_request_bytes = max_request_bytes
        self.log: list[Logged] = []
        self._http = urllib3.PoolManager(maxsize=32, retries=False)
        self._locations: dict[tuple[str, str], str | None] = {}
        self._partitioning: dict[TableId, str | None] = {}
        self._uploads: dict[str, dict[str, Any]] = {}  # resumable upload id -> its job resource
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.rules = self
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, daemon=True, name="bq-proxy"
        )
        self.write_api: WriteApiRules | None = None
        if emulator_grpc:
            self.write_api = WriteApiRules(emulator_grpc, lambda: self.grants)
        self.write_address = self.write_api.address if self.write_api else None

    def __enter__(self) -> ProductionBigQuery:
        self._thread.start()
        if self.write_api is not None:
            self.write_api.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.write_api is not None:
            self.write_api.stop()
        self._server.shutdown()
        self._server.server_close()
        self.scheduler.close()

    def admin_client(self, project: str) -> Any:
        """A client of the emulator itself, past every rule: what Terraform or an operator
        does with administrator rights. Close it when done."""
        from tests.warehouses import EmulatorClient  # tests.warehouses imports this

        return EmulatorClient(self.emulator)(project)

    # --- grants -----------------------------------------------------------------------------

    def grant(self, grants: Grants) -> None:
        with self._lock:
            merged = dict(self.grants.project_roles)
            for project, roles in grants.project_roles.items():
                merged[project] = merged.get(project, frozenset()) | roles
            datasets = dict(self.grants.dataset_roles)
            for dataset, roles in grants.dataset_roles.items():
                datasets[dataset] = datasets.get(dataset, frozenset()) | roles
            self.grants = Grants(merged, datasets)

    def grant_worker(self, project: str, warehouse: str, staging: str) -> None:
        """What terraform/iam.tf grants the worker, on these two datasets of ``project``."""
        self.grant(self.worker_roles.grants(project, warehouse, staging))

    # --- one request ------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        if not _is_upload_chunk(request) and len(request.body) > self.max_request_bytes:
            return error_reply(
                400,
                "badRequest",
                f"Request payload size exceeds the limit: {self.max_request_bytes} bytes.",
            )
        for method, pattern, operation in _ROUTES:
            match = pattern.fullmatch(request.path)
            if match and method == request.method:
                reply = self._dispatch(operation, match.groupdict(), request)
                reply.operation = reply.operation or operation
                return reply
        return error_reply(
            501,
            "notImplemented",
            f"The production-rules seam does not model {request.method} {request.path}",
        )

    def _dispatch(  # noqa: PLR0911  # one return per kind of call
        self, operation: str, ids: dict[str, str], request: Request
    ) -> Reply:
        project = ids["p"]
        if operation == "jobs.insert":
            return self._insert_job(project, request)
        if operation == "jobs.upload":
            return self._upload_chunk(project, request)
        if operation.startswith("jobs."):
            return self._job_call(operation, project, ids["j"], request)
        if operation == "datasets.insert":
            if not self.grants.on_project(project, "bigquery.datasets.create"):
                return _denied("Project", project, "bigquery.datasets.create")
            return self._forward(request)
        permission = _DATASET_PERMISSIONS[operation]
        if not self.grants.on_dataset(project, ids["d"], permission):
            kind, name = ("Table", f"{project}:{ids['d']}.{ids['t']}") if "t" in ids else (
                "Dataset", f"{project}:{ids['d']}")  # fmt: skip
            return _denied(kind, name, permission)
        if operation in ("tables.patch", "tables.update") and self.write_api is not None:
            return self._change_schema(request, (project, ids["d"], ids["t"]))
        return self._forward(request)

    def _change_schema(self, request: Request, table: TableId) -> Reply:
        """A schema update, which the write API sees only later (write_api.py): it is told the
        columns the table had before."""
        assert self.write_api is not None
        before = self._forward(Request("GET", request.path, {}, {}, b""))
        reply = self._forward(request)
        if reply.status == 200 and before.status == 200:
            columns = {
                f["name"] for f in json.loads(before.body).get("schema", {}).get("fields", [])
            }
            self.write_api.schema_changed(table, frozenset(columns))
        return reply

    # --- jobs -------------------------------------------------------------------------------

    def _insert_job(self, project: str, request: Request) -> Reply:
        upload = request.query.get("uploadType")
        if upload == "multipart":
            resource = _multipart_job(request)
        elif upload == "resumable" or upload is None:
            resource = request.json()
        else:
            return error_reply(501, "notImplemented", f"uploadType={upload} is not modelled")
        reference = resource.setdefault("jobReference", {})
        job_id = reference.setdefault("jobId", uuid.uuid4().hex)
        refused, job = self._admit(project, job_id, resource, request)
        if refused is not None:
            refused.job_id = job_id
            return refused
        assert job is not None
        if upload == "resumable":
            reply = self._forward(request)
            upload_id = reply.headers.get("x-guploader-uploadid", "")
            with self._lock:
                self._uploads[upload_id] = {"job": job}
            location = reply.headers.get("location")
            if location:
                reply.headers["location"] = location.replace(self.emulator, self.endpoint, 1)
            reply.job_id = job_id
            return reply
        load = resource["configuration"].get("load")
        self.scheduler.submit(job, _destination(load, project) if load else None)
        return self._job_reply(job)

    def _admit(
        self, project: str, job_id: str, resource: dict[str, Any], request: Request
    ) -> tuple[Reply | None, Job | None]:
        """Permissions, location and id of a new job; the job to run, or the refusal."""
        configuration = resource.get("configuration", {})
        if not self.grants.on_project(project, "bigquery.jobs.create"):
            return _denied("Project", project, "bigquery.jobs.create"), None
        given = resource["jobReference"].get("location")
        if "query" in configuration:
            statement = self._statement(project, configuration["query"])
            datasets = {(t[0], t[1]) for t in statement.reads} | {
                (target[0], target[1])
                for _, target in (
                    *statement.script_writes,
                    *([("", statement.target)] if statement.target else []),
                )
            }
            refused = self._query_permissions(statement)
            kind: str = "query"
        elif "load" in configuration:
            statement = None
            destination = _destination(configuration["load"], project)
            datasets = {(destination[0], destination[1])}
            permissions = ["bigquery.tables.create", "bigquery.tables.updateData"]
            if configuration["load"].get("writeDisposition") == "WRITE_TRUNCATE":
                permissions.append("bigquery.tables.update")
            refused = next(
                (
                    _denied("Table", f"{destination[0]}:{destination[1]}.{destination[2]}", p)
                    for p in permissions
                    if not self.grants.on_dataset(destination[0], destination[1], p)
                ),
                None,
            )
            kind = "load"
        else:
            return error_reply(501, "notImplemented", "only query and load jobs are modelled"), None
        if refused is not None:
            return refused, None
        location, refused = self._job_location(datasets, given)
        if refused is not None:
            return refused, None
        forward = copy.copy(request)
        run = functools.partial(self._run, forward)
        job = Job(project, job_id, location, kind, statement, run, configuration)
        if not self.scheduler.register(job):
            return error_reply(
                409, "duplicate", f"Already Exists: Job {project}:{location}.{job_id}"
            ), None
        return None, job

    def _statement(self, project: str, query: dict[str, Any]) -> Statement:
        default = query.get("defaultDataset", {}).get("datasetId")
        try:
            return analyse(
                query.get("query", ""),
                project,
                default,
                query.get("queryParameters", []),
                self._partition_column,
            )
        except sqlglot.errors.ParseError:
            # Let the emulator answer the SQL it cannot parse, as BigQuery would.
            return Statement("UNPARSED", frozenset(), None, False, None)

    def _query_permissions(self, statement: Statement) -> Reply | None:
        needed = [(table, "bigquery.tables.getData") for table in statement.reads]
        writes = list(statement.script_writes)
        if statement.target is not None:
            writes.append((statement.kind, statement.target))
        for kind, target in writes:
            permission = {
                "CREATE": "bigquery.tables.create",
                "DROP": "bigquery.tables.delete",
                "ALTER": "bigquery.tables.update",
            }.get(kind, "bigquery.tables.updateData")
            needed.append((target, permission))
        for (project, dataset, table), permission in needed:
            if not self.grants.on_dataset(project, dataset, permission):
                return _denied("Table", f"{project}:{dataset}.{table}", permission)
        return None

    def _job_location(
        self, datasets: set[tuple[str, str]], given: str | None
    ) -> tuple[str, Reply | None]:
        found = {d: self._dataset_location(*d) for d in datasets}
        known = {location for location in found.values() if location is not None}
        if given is not None:
            for (project, dataset), location in found.items():
                if location is not None and location.lower() != given.lower():
                    return given, error_reply(
                        404,
                        "notFound",
                        f"Not found: Dataset {project}:{dataset} was not found in location {given}",
                    )
            return given, None
        if len(known) > 1:
            return "", error_reply(
                400, "invalid", f"Cannot read and write in different locations: {sorted(known)}"
            )
        return (known.pop() if known else "US"), None

    def _run(self, request: Request) -> dict[str, Any]:
        """Run a job on the emulator and wait for it: its final resource."""
        reply = self._forward(request)
        payload = json.loads(reply.body or b"{}")
        if reply.status >= 400:
            error = payload.get("error", {})
            reason = (error.get("errors") or [{}])[0].get("reason", "invalid")
            raise JobFailed(reason, error.get("message", f"HTTP {reply.status}"))
        reference = payload["jobReference"]
        while payload.get("status", {}).get("state") != "DONE":
            time.sleep(0.02)
            path = f"/bigquery/v2/projects/{reference['projectId']}/jobs/{reference['jobId']}"
            payload = json.loads(self._forward(Request("GET", path, {}, {}, b"")).body)
        return dict(payload)

    def _upload_chunk(self, project: str, request: Request) -> Reply:
        reply = self._forward(request)
        if reply.status not in (200, 201):
            return reply  # 308: more chunks to come
        with self._lock:
            pending = self._uploads.pop(request.query.get("upload_id", ""), None)
        if pending is None:
            return reply
        job: Job = pending["job"]
        resource = json.loads(reply.body)
        job.run = lambda: resource  # the emulator ran it on the last chunk
        load = resource.get("configuration", {}).get("load")
        self.scheduler.submit(job, _destination(load, project) if load else None)
        return self._job_reply(job)

    def _job_call(  # noqa: PLR0911  # one return per kind of call and state
        self, operation: str, project: str, job_id: str, request: Request
    ) -> Reply:
        job = self.scheduler.find(project, job_id)
        if job is None:
            return error_reply(404, "notFound", f"Not found: Job {project}:{job_id}")
        given = request.query.get("location")
        wrong = given is not None and given.lower() != job.location.lower()
        if wrong or (given is None and job.location.upper() not in MULTI_REGIONS):
            return error_reply(404, "notFound", f"Not found: Job {project}:{job_id}")
        if operation == "jobs.cancel":
            self.scheduler.cancel(job)
            reply = self._job_reply(job, wait=False)
            body = json.loads(reply.body)
            return _json_reply(200, {"kind": "bigquery#jobCancelResponse", "job": body})
        if operation == "jobs.get":
            return self._job_reply(job, wait=False)
        timeout_ms = float(request.query.get("timeoutMs", 10_000))
        self.scheduler.wait(job, min(timeout_ms / 1000, _MAX_RESULTS_WAIT_SECONDS))
        if not job.done.is_set():
            return _json_reply(
                200,
                {
                    "kind": "bigquery#getQueryResultsResponse",
                    "jobReference": self._reference(job),
                    "jobComplete": False,
                },
            )
        if job.failure is not None:
            status = _STATUS_BY_REASON.get(job.failure.reason, 400)
            return error_reply(status, job.failure.reason, job.failure.message)
        reply = self._forward(request)
        return self._relocate(reply, job)

    def _job_reply(self, job: Job, wait: bool = True) -> Reply:
        """The job resource as BigQuery would show it now."""
        if wait:
            self.scheduler.wait(job, _SYNC_WAIT_SECONDS if self.scheduler.latency.off() else 0)
        if job.done.is_set() and job.failure is None and job.resource is not None:
            reply = _json_reply(200, job.resource)
        else:
            resource: dict[str, Any] = {
                "kind": "bigquery#job",
                "jobReference": {},
                "configuration": job.configuration,
                "status": {"state": job.state},
                "statistics": {"creationTime": str(int(time.time() * 1000))},
            }
            if job.failure is not None:
                error = {"reason": job.failure.reason, "message": job.failure.message}
                resource["status"] = {"state": "DONE", "errorResult": error, "errors": [error]}
            reply = _json_reply(200, resource)
        reply.job_id = job.job_id
        return self._relocate(reply, job)

    def _reference(self, job: Job) -> dict[str, str]:
        return {"projectId": job.project, "jobId": job.job_id, "location": job.location}

    def _relocate(self, reply: Reply, job: Job) -> Reply:
        """The emulator puts every job in US; BigQuery says where the job ran."""
        if reply.status != 200:
            return reply
        payload = json.loads(reply.body)
        payload["jobReference"] = self._reference(job)
        if "id" in payload or payload.get("kind") == "bigquery#job":
            payload["id"] = f"{job.project}:{job.location}.{job.job_id}"
        payload.pop("selfLink", None)
        reply.body = json.dumps(payload).encode()
        reply.job_id = job.job_id
        return reply

    # --- what the emulator knows --------------------------------------------------------------

    def _dataset_location(self, project: str, dataset: str) -> str | None:
        key = (project, dataset)
        with self._lock:
            if key in self._locations and self._locations[key] is not None:
                return self._locations[key]
        reply = self._forward(
            Request("GET", f"/bigquery/v2/projects/{project}/datasets/{dataset}", {}, {}, b"")
        )
        location = json.loads(reply.body).get("location") if reply.status == 200 else None
        with self._lock:
            self._locations[key] = location
        return location

    def _partition_column(self, table: TableId) -> str | None:
        with self._lock:
            if table in self._partitioning:
                return self._partitioning[table]
        project, dataset, name = table
        reply = self._forward(
            Request(
                "GET", f"/bigquery/v2/projects/{project}/datasets/{dataset}/tables/{name}", {},
                {}, b"",
            )
        )  # fmt: skip
        column = None
        if reply.status == 200:
            column = json.loads(reply.body).get("timePartitioning", {}).get("field")
            with self._lock:
                self._partitioning[table] = column
        return column

    def _forward(self, request: Request) -> Reply:
        query = urllib.parse.urlencode(request.query)
        url = f"{self.emulator}{request.path}" + (f"?{query}" if query else "")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        response = self._http.request(
            request.method, url, body=request.body or None, headers=headers, timeout=300
        )
        kept = {k.lower(): v for k, v in response.headers.items() if k.lower() not in _HOP_HEADERS}
        return Reply(response.status, response.data, kept)


_HOP_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "accept-encoding"}
)


def _is_upload_chunk(request: Request) -> bool:
    return request.method == "PUT" and request.path.startswith("/upload/")


def _denied(kind: str, name: str, permission: str) -> Reply:
    return error_reply(
        403,
        "accessDenied",
        f"Access Denied: {kind} {name}: Permission {permission} denied on {kind.lower()} {name}"
        " (or it may not exist).",
    )


def _destination(load: dict[str, Any], project: str) -> TableId:
    table = load["destinationTable"]
    return (table.get("projectId", project), table["datasetId"], table["tableId"])


def _multipart_job(request: Request) -> dict[str, Any]:
    header = f"Content-Type: {request.headers.get('content-type', '')}\r\n\r\n".encode()
    message = email.message_from_bytes(header + request.body, policy=email.policy.HTTP)
    first = next(iter(message.iter_parts()))  # type: ignore[attr-defined]
    payload = first.get_payload(decode=True)
    return dict(json.loads(payload))


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    rules: ProductionBigQuery


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes; with Nagle's algorithm the second waits for the
    # client's delayed ACK (about 40 ms a reply).
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _serve(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        request = Request(
            self.command,
            parsed.path,
            dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)),
            {name.lower(): value for name, value in self.headers.items()},
            self._body(),
        )
        rules = self.server.rules
        try:
            reply = rules.handle(request)
        except Exception as error:  # a bug of the seam: answer loudly, never hang the caller
            reply = error_reply(500, "internalError", f"production-rules seam: {error!r}")
        lost = rules.faults.take(reply)
        rules.log.append(
            Logged(reply.operation, reply.job_id, 0 if lost else reply.status, len(request.body))
        )
        if lost is not None:
            if lost.how == "unavailable":
                reply = error_reply(503, "backendError", "The service is currently unavailable.")
            else:
                if lost.how == "stall":
                    time.sleep(lost.seconds)
                self.close_connection = True
                return
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the caller gave up waiting (its timeout): as BigQuery

    def _body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            return b"".join(self._chunks())
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _chunks(self) -> Iterator[bytes]:
        while True:
            size = int(self.rfile.readline().split(b";")[0], 16)
            if size == 0:
                self.rfile.readline()
                return
            yield self.rfile.read(size)
            self.rfile.readline()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815  # http.server's names

"""BigQuery's job lifecycle as its documentation states it, in front of an emulator that runs every
job at once: latency, the mutating-DML queue of each table, conflicts between concurrent mutations,
and load-job quotas.

* **Latency.** Each job takes a time drawn from a stated :class:`Latency` (none by default, so the
  tests run at the emulator's speed; benchmarks turn it on). Until then it is PENDING or RUNNING.
* **Mutating DML** (UPDATE, DELETE, MERGE; https://cloud.google.com/bigquery/docs/data-manipulation-language#concurrent_jobs):
  at most 2 run at once per table and 20 wait as PENDING; one more fails with "Too many DML
  statements outstanding against table ..., limit is 20". A mutating statement runs on the
  emulator only when it commits (statements on one table one at a time, on different tables in
  parallel), so a statement that fails changes nothing, as in BigQuery.
* **Conflicts.** Two statements that update or delete rows in the same partitions, running at
  once: the later to commit is rerun, as BigQuery does up to three times, then fails with "Could
  not serialize access to table ... due to concurrent update".
* **Queries and loads** run on the emulator when they arrive (a query reads the snapshot of its
  start, as in BigQuery) and are reported done when their latency has passed.
* **Load quotas** (https://cloud.google.com/bigquery/quotas#load_jobs): 1,500 load jobs per table
  and 100,000 per project per day; beyond them the job fails with quotaExceeded.

Times come from an injectable clock; a job's record says when it started, committed, how often it
was rerun, and why it failed, so tests can assert on what BigQuery would have done.
"""

from __future__ import annotations

import collections
import concurrent.futures
import heapq
import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.production_bigquery.statements import Statement, TableId

DML_RUNNING_PER_TABLE = 2
DML_QUEUED_PER_TABLE = 20
CONFLICT_RERUNS = 3
LOAD_JOBS_PER_TABLE_PER_DAY = 1_500
LOAD_JOBS_PER_PROJECT_PER_DAY = 100_000
DAY_SECONDS = 86_400.0


@dataclass(frozen=True)
class Latency:
    """Seconds a job takes, drawn uniformly per job from ``[low, high]`` of its kind.

    BigQuery publishes no latency; :data:`PRODUCTION_LATENCY` is this project's stated assumption
    (BENCHMARKS.md lists it with the benchmarks that use it)."""

    query: tuple[float, float] = (0.0, 0.0)
    load: tuple[float, float] = (0.0, 0.0)
    seed: int = 0

    def off(self) -> bool:
        return max(self.query + self.load) <= 0


NO_LATENCY = Latency()
PRODUCTION_LATENCY = Latency(query=(1.0, 3.0), load=(2.0, 4.0))


class JobFailed(Exception):
    """A failure the rules decided: the emulator never ran the job."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(eq=False)
class Job:
    project: str
    job_id: str
    location: str
    kind: str  # query | load
    statement: Statement | None  # None for loads
    # Runs the job on the emulator and returns its final job resource; for mutating DML it is
    # called when the job commits, for anything else when it arrives.
    run: Callable[[], dict[str, Any]]
    configuration: dict[str, Any] = field(default_factory=dict)  # as the caller sent it
    submitted: float = 0.0
    started: float | None = None
    due: float | None = None
    committed: float | None = None
    reruns: int = 0
    state: str = "PENDING"  # PENDING, RUNNING, DONE
    resource: dict[str, Any] | None = None  # the emulator's resource once it ran
    failure: JobFailed | None = None  # set when the rules failed the job
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def target(self) -> TableId | None:
        return self.statement.target if self.statement else None

    @property
    def queued_dml(self) -> bool:
        return self.statement is not None and self.statement.mutating_dml


@dataclass
class _TableQueue:
    running: list[Job] = field(default_factory=list)
    pending: collections.deque[Job] = field(default_factory=collections.deque)
    commits: list[Job] = field(default_factory=list)  # recent row-updating commits
    peak_outstanding: int = 0


class Scheduler:
    """The job lifecycle above, for every job a proxy lets through. Thread-safe."""

    def __init__(
        self,
        latency: Latency = NO_LATENCY,
        *,
        clock: Callable[[], float] = time.monotonic,
        dml_running: int = DML_RUNNING_PER_TABLE,
        dml_queued: int = DML_QUEUED_PER_TABLE,
        conflict_reruns: int = CONFLICT_RERUNS,
        load_jobs_per_table: int = LOAD_JOBS_PER_TABLE_PER_DAY,
        load_jobs_per_project: int = LOAD_JOBS_PER_PROJECT_PER_DAY,
    ) -> None:
        self.latency = latency
        self.dml_running = dml_running
        self.dml_queued = dml_queued
        self.conflict_reruns = conflict_reruns
        self.load_jobs_per_table = load_jobs_per_table
        self.load_jobs_per_project = load_jobs_per_project
        self._clock = clock
        self._random = random.Random(latency.seed)
        self._lock = threading.Condition()
        self._jobs: dict[tuple[str, str], Job] = {}
        self._tables: dict[TableId, _TableQueue] = collections.defaultdict(_TableQueue)
        self._due: list[tuple[float, int, Job]] = []  # mutating DML waiting to commit
        self._order = itertools.count()
        self._loads: collections.deque[tuple[float, str, TableId]] = collections.deque()
        self._closed = False
        # Statements on different tables commit in parallel, as in BigQuery; on one table one at
        # a time, so that checking for a conflicting commit and committing are one step.
        self._committers = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="bq-dml")
        self._table_locks: dict[TableId, threading.Lock] = collections.defaultdict(threading.Lock)
        self._executor = threading.Thread(target=self._commit_loop, daemon=True, name="bq-due")
        self._executor.start()

    # --- what a proxy calls ------------------------------------------------------------------

    def find(self, project: str, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get((project, job_id))

    def jobs(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def set_latency(self, latency: Latency) -> None:
        """The latency of jobs submitted from now on (a benchmark turns it on)."""
        with self._lock:
            self.latency = latency
            self._random = random.Random(latency.seed)

    def peak_outstanding(self, table: TableId) -> int:
        """The most mutating DML statements running or queued at once on ``table``."""
        with self._lock:
            return self._tables[table].peak_outstanding if table in self._tables else 0

    def register(self, job: Job) -> bool:
        """Take the job's id; False when a job of that id exists (the proxy answers 409). One
        step, so two inserts of one id at once cannot both run."""
        with self._lock:
            if (job.project, job.job_id) in self._jobs:
                return False
            self._jobs[(job.project, job.job_id)] = job
            return True

    def submit(self, job: Job, load_destination: TableId | None = None) -> None:
        """Start a registered job."""
        with self._lock:
            now = self._clock()
            job.submitted = now
            if job.kind == "load" and load_destination is not None:
                quota = self._load_quota(now, job.project, load_destination)
                if quota is not None:
                    self._fail(job, quota)
                    return
            if job.queued_dml:
                self._enqueue_dml(job, now)
                return
        # Queries and loads run on the emulator now, outside the lock (it may take a while).
        try:
            job.resource = job.run()
        except Exception as error:  # a job that cannot run fails, never hangs
            with self._lock:
                self._fail(job, _as_failure(error))
            return
        with self._lock:
            if job.done.is_set():
                return  # cancelled while it ran
            job.started = now
            job.due = now + self._draw(job.kind)
            job.state = "RUNNING"
            if job.due <= self._clock():
                self._finish(job)
            else:
                self._push(job)

    def wait(self, job: Job, timeout: float) -> bool:
        """Until the job is done or ``timeout`` passed; whether it is done."""
        return job.done.wait(timeout)

    def cancel(self, job: Job) -> None:
        with self._lock:
            if job.state == "DONE" or (job.queued_dml and job.committed is None and job.due
                                       is not None and job.due <= self._clock()):  # fmt: skip
                return
            self._fail(job, JobFailed("stopped", "Job execution was cancelled: User requested"
                                                 " cancellation"))  # fmt: skip

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._executor.join(timeout=10)
        self._committers.shutdown(wait=False, cancel_futures=True)

    # --- inside -----------------------------------------------------------------------------

    def _draw(self, kind: str) -> float:
        low, high = self.latency.load if kind == "load" else self.latency.query
        return self._random.uniform(low, high) if high > 0 else 0.0

    def _push(self, job: Job) -> None:
        assert job.due is not None
        heapq.heappush(self._due, (job.due, next(self._order), job))
        self._lock.notify_all()

    def _load_quota(self, now: float, project: str, table: TableId) -> JobFailed | None:
        while self._loads and self._loads[0][0] <= now - DAY_SECONDS:
            self._loads.popleft()
        per_table = sum(1 for _, _, t in self._loads if t == table)
        per_project = sum(1 for _, p, _ in self._loads if p == project)
        self._loads.append((now, project, table))
        if per_table >= self.load_jobs_per_table:
            project_id, dataset, name = table
            return JobFailed(
                "quotaExceeded",
                f"Quota exceeded: Your table exceeded quota for imports or query appends per"
                f" table ({self.load_jobs_per_table} a day): {project_id}:{dataset}.{name}",
            )
        if per_project >= self.load_jobs_per_project:
            return JobFailed(
                "quotaExceeded",
                f"Quota exceeded: Your project exceeded quota for load jobs per project per day"
                f" ({self.load_jobs_per_project}): {project}",
            )
        return None

    def _enqueue_dml(self, job: Job, now: float) -> None:
        assert job.target is not None
        queue = self._tables[job.target]
        if len(queue.running) < self.dml_running:
            self._start(job, queue, now)
        elif len(queue.pending) < self.dml_queued:
            queue.pending.append(job)
        else:
            project, dataset, table = job.target
            self._fail(
                job,
                JobFailed(
                    "resourcesExceeded",
                    "Resources exceeded during query execution: Too many DML statements"
                    f" outstanding against table {project}:{dataset}.{table}, limit is"
                    f" {self.dml_queued}",
                ),
            )
            return
        queue.peak_outstanding = max(
            queue.peak_outstanding, len(queue.running) + len(queue.pending)
        )

    def _start(self, job: Job, queue: _TableQueue, now: float) -> None:
        queue.running.append(job)
        job.state = "RUNNING"
        job.started = now
        job.due = now + self._draw("query")
        self._push(job)

    def _commit_loop(self) -> None:
        while True:
            with self._lock:
                job = self._next_due()
                if job is None:
                    return
            if job.queued_dml:
                self._committers.submit(self._commit, job)
            else:
                with self._lock:
                    self._finish(job)

    def _next_due(self) -> Job | None:
        while not self._closed:
            while self._due and self._due[0][2].done.is_set():
                heapq.heappop(self._due)  # cancelled or failed while waiting
            if self._due:
                wait = self._due[0][0] - self._clock()
                if wait <= 0:
                    return heapq.heappop(self._due)[2]
                self._lock.wait(wait)
            else:
                self._lock.wait()
        return None

    def _commit(self, job: Job) -> None:
        """A mutating statement's latency has passed: it conflicts, or it runs on the emulator."""
        assert job.target is not None
        with self._lock:
            table_lock = self._table_locks[job.target]
        with table_lock:
            self._commit_alone(job)

    def _commit_alone(self, job: Job) -> None:
        assert job.target is not None and job.statement is not None
        with self._lock:
            queue = self._tables[job.target]
            rival = self._conflicting_commit(job, queue)
            if rival is not None:
                if job.reruns < self.conflict_reruns:
                    job.reruns += 1
                    job.started = self._clock()
                    job.due = job.started + self._draw("query")
                    self._push(job)
                    return
                project, dataset, table = job.target
                self._fail(
                    job,
                    JobFailed(
                        "invalidQuery",
                        f"Could not serialize access to table {project}:{dataset}.{table} due to"
                        " concurrent update",
                    ),
                )
                return
        try:
            resource = job.run()
            failure = None
        except Exception as error:  # the commit loop must outlive any job
            resource, failure = None, _as_failure(error)
        with self._lock:
            if failure is not None:
                self._fail(job, failure)
                return
            job.resource = resource
            job.committed = self._clock()
            if job.statement.updates_rows and not _failed(resource):
                queue.commits.append(job)
            self._finish(job)

    def _conflicting_commit(self, job: Job, queue: _TableQueue) -> Job | None:
        assert job.statement is not None and job.started is not None
        if not job.statement.updates_rows:
            return None
        oldest = min((j.started or 0.0 for j in queue.running), default=job.started)
        queue.commits = [c for c in queue.commits if (c.committed or 0.0) > oldest]
        for other in queue.commits:
            assert other.committed is not None and other.statement is not None
            if other.committed > job.started and _overlap(
                job.statement.partitions, other.statement.partitions
            ):
                return other
        return None

    def _fail(self, job: Job, failure: JobFailed) -> None:
        job.failure = failure
        self._finish(job)

    def _finish(self, job: Job) -> None:
        """Mark done (under the lock) and start the next statement queued on its table."""
        if job.done.is_set():
            return
        job.state = "DONE"
        job.done.set()
        if job.queued_dml and job.target in self._tables:
            queue = self._tables[job.target]
            if job in queue.running:
                queue.running.remove(job)
            elif job in queue.pending:
                queue.pending.remove(job)
            while queue.pending and len(queue.running) < self.dml_running:
                self._start(queue.pending.popleft(), queue, self._clock())
        self._lock.notify_all()


def _as_failure(error: Exception) -> JobFailed:
    if isinstance(error, JobFailed):
        return error
    return JobFailed("backendError", f"the emulator could not run the job: {error!r}")


def _overlap(a: tuple[Any, Any] | None, b: tuple[Any, Any] | None) -> bool:
    if a is None or b is None:
        return True
    return a[0] <= b[1] and b[0] <= a[1]


def _failed(resource: dict[str, Any] | None) -> bool:
    return bool(resource and resource.get("status", {}).get("errorResult"))

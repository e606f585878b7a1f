"""Fault injection through the warehouse seams: wrappers around the real clients, never mocks.

Faults are planned in a file so that they survive the pickling of warehouse factories into
Beam workers, and so that a fault fires a fixed number of times across all DoFn instances.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import duckdb

from pipeline.dead_letters import DeadLetter
from pipeline.events import LedgerCandidate
from pipeline.sinks.duckdb import DuckDBWarehouse
from pipeline.sinks.warehouse import MergeOutcome, Warehouse, WarehouseFactory
from tests.warehouses import DelegatingWarehouse

T = TypeVar("T")


class InjectedFault(Exception):
    """Raised where a fault was planned."""


class TransientInjectedFault(InjectedFault):
    """A fault the warehouse reports as transient, so the sink retries it."""


@dataclass(frozen=True)
class FaultPlan:
    """A counter file: ``take(name)`` is true the first ``times`` calls for ``name``."""

    path: str

    def arm(self, name: str, times: int) -> FaultPlan:
        with open(self.path, "a+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            plan = json.loads(handle.read() or "{}")
            plan[name] = times
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(plan))
        return self

    def take(self, name: str) -> bool:
        if not os.path.exists(self.path):
            return False
        with open(self.path, "r+", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            plan = json.loads(handle.read() or "{}")
            left = plan.get(name, 0)
            if left <= 0:
                return False
            plan[name] = left - 1
            plan[f"{name}.fired"] = plan.get(f"{name}.fired", 0) + 1
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(plan))
            return True

    def fired(self, name: str) -> int:
        with open(self.path, encoding="utf-8") as handle:
            return int(json.loads(handle.read() or "{}").get(f"{name}.fired", 0))


class FaultyWarehouse(DelegatingWarehouse):
    """Delegates to a real warehouse; fails where the plan says.

    Fault names: ``before_merge`` (nothing reached the warehouse), ``after_merge`` (the batch
    committed, then the call failed, as when a worker dies before its bundle completes), the
    same around a staged append (``before_stage``, ``after_stage``) and a merge cycle
    (``before_cycle``, ``after_cycle``), and ``dead_letters_before``. ``transient`` decides
    whether the sink may retry in place.
    """

    def __init__(self, inner: Warehouse, plan: FaultPlan, transient: bool = True) -> None:
        super().__init__(inner)
        self.plan = plan
        self.transient = transient

    def _fail(self, name: str) -> None:
        raise (TransientInjectedFault if self.transient else InjectedFault)(name)

    def _around(self, name: str, call: Callable[[], T]) -> T:
        if self.plan.take(f"before_{name}"):
            self._fail(f"before_{name}")
        result = call()
        if self.plan.take(f"after_{name}"):
            self._fail(f"after_{name}")
        return result

    def merge_events(self, batch: Sequence[LedgerCandidate]) -> MergeOutcome:
        return self._around("merge", lambda: self.inner.merge_events(batch))

    def stage_events(self, batch: Sequence[LedgerCandidate]) -> None:
        self._around("stage", lambda: self.inner.stage_events(batch))

    def merge_staged(self) -> MergeOutcome:
        return self._around("cycle", self.inner.merge_staged)

    def merge_dead_letters(self, rows: Sequence[DeadLetter]) -> int:
        if self.plan.take("dead_letters_before"):
            self._fail("dead_letters_before")
        return self.inner.merge_dead_letters(rows)

    def is_transient(self, error: BaseException) -> bool:
        return isinstance(error, TransientInjectedFault) or self.inner.is_transient(error)


@dataclass(frozen=True)
class FaultyWarehouseFactory:
    """A real warehouse (DuckDB file or BigQuery emulator dataset) with planned faults: at the
    interface (``before_merge``, ``after_merge``, ``dead_letters_before``) and inside a batch,
    through the client seams (``after_staging``: the staged batch exists, its ledger MERGE
    fails with the warehouse's own contention error)."""

    inner: WarehouseFactory
    plan: FaultPlan
    transient: bool = True

    def __call__(self) -> Warehouse:
        return FaultyWarehouse(self._seamed(), self.plan, self.transient)

    def _seamed(self) -> Warehouse:
        from tests.warehouses import EmulatorClient, EmulatorWarehouse

        if isinstance(self.inner, EmulatorWarehouse):
            from pipeline.sinks.bigquery import BigQueryWarehouse

            endpoint, plan = self.inner.endpoint, self.plan

            def client(project: str) -> Any:
                return RecordingBigQueryClient(EmulatorClient(endpoint)(project), plan, [])

            return BigQueryWarehouse(
                self.inner.project,
                self.inner.dataset,
                client_factory=client,
                run_id=self.inner.run_id,
                write_client_factory=self.inner.write_client_factory(),
                dedup_horizon_days=self.inner.dedup_horizon_days,
            )
        path = self.inner.args[0]  # type: ignore[attr-defined]  # functools.partial(DuckDB, path)
        return DuckDBWarehouse(path, connect=PlannedConnect(self.plan))


@dataclass(frozen=True)
class PlannedConnect:
    """``duckdb.connect`` whose connection fails the ledger MERGE when ``after_staging`` is
    planned, with DuckDB's own transaction-conflict error (transient, so the sink retries)."""

    plan: FaultPlan

    def __call__(self, path: str) -> Any:
        plan = self.plan

        def fails(sql: str) -> bool:
            return "MERGE INTO transaction_events" in sql and plan.take("after_staging")

        return FaultyConnection(duckdb.connect(path), fails, duckdb.TransactionException)


class FaultyConnection:
    """A real DuckDB connection that raises on the statements ``fails(sql)`` picks."""

    def __init__(
        self,
        inner: duckdb.DuckDBPyConnection,
        fails: Callable[[str], bool],
        error: type[Exception] = InjectedFault,
    ) -> None:
        self._inner = inner
        self._fails = fails
        self._error = error

    def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        if self._fails(sql):
            raise self._error(f"injected: {sql.strip().splitlines()[0]}")
        return self._inner.execute(sql, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class RecordingBigQueryClient:
    """A real BigQuery client (the emulator's) that records every SQL text it is asked to run
    and fails where a plan says: ``lost_response:<step>`` runs the job, then raises a transient
    error as if the reply was lost; ``conflict:<step>`` raises BigQuery's concurrent-update error
    before running it; ``fails_before_commit:<step>`` runs a script whose transaction fails at
    its last statement before COMMIT, with that error (transient: the sink retries). ``<step>``
    matches the end of the job id's prefix, e.g. ``ledger``, ``cycle``."""

    def __init__(self, inner: Any, plan: FaultPlan, statements: list[str]) -> None:
        self._inner = inner
        self._plan = plan
        self.statements = statements
        self.submitted: list[str] = []

    def query(self, sql: str, *args: Any, job_id: str | None = None, **kwargs: Any) -> Any:
        from google.api_core import exceptions

        self.statements.append(sql)
        step = (job_id or "").rsplit("_", 1)[0].rsplit("_", 1)[-1]
        if self._plan.take(f"conflict:{step}") or (
            step == "ledger" and self._plan.take("after_staging")
        ):
            raise exceptions.BadRequest(
                "Could not serialize access to table due to concurrent update"
            )
        if self._plan.take(f"fails_before_commit:{step}"):
            # As BigQuery aborts a transaction that met a concurrent update at its commit.
            failing = (
                "SELECT ERROR('Transaction is aborted due to concurrent update"
                " (injected before COMMIT)');\n"
            )
            sql = sql.replace("COMMIT TRANSACTION;", failing + "COMMIT TRANSACTION;")
        job = self._inner.query(sql, *args, job_id=job_id, **kwargs)
        self.submitted.append(job_id or "")
        if self._plan.take(f"lost_response:{step}"):
            job.result()
            raise exceptions.ServiceUnavailable("the response was lost")
        return job

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@dataclass(frozen=True)
class FaultyBigQueryFactory:
    """Warehouse factory whose client is wrapped by :class:`RecordingBigQueryClient`."""

    endpoint: str
    project: str
    dataset: str
    plan: FaultPlan
    write_address: str | None = None  # the write API's address (appends); None: no appends
    run_id: str = field(default_factory=lambda: f"faulty_{uuid.uuid4().hex[:8]}")

    def __call__(self) -> Warehouse:
        from pipeline.sinks.bigquery import BigQueryWarehouse
        from pipeline.sinks.bigquery.appends import emulator_write_client
        from tests.warehouses import EmulatorClient

        def client(project: str) -> Any:
            return RecordingBigQueryClient(EmulatorClient(self.endpoint)(project), self.plan, [])

        address = self.write_address
        return BigQueryWarehouse(
            self.project, self.dataset, client_factory=client, run_id=self.run_id,
            write_client_factory=(
                functools.partial(emulator_write_client, address) if address else None
            ),
        )  # fmt: skip

"""The warehouse seam: the small interface every warehouse implements, and how one is chosen.

The upsert composite talks only to this interface, so tests hand it a real local warehouse, or a
fault-injecting wrapper around one, instead of mocking anything. A ``WarehouseFactory`` (a
picklable zero-argument callable) is what travels to the workers; each DoFn instance opens its
own connection in ``setup``.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
import functools
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.dead_letters import DeadLetter
from pipeline.events import LedgerCandidate

WAREHOUSE_KINDS = ("duckdb", "bigquery")


@dataclass(frozen=True)
class MergeOutcome:
    """What one batch did to the tables. Counts add up to the candidates in the batch:
    ``inserted + duplicates + conflicts == len(batch)``."""

    inserted: int = 0  # new ledger rows
    duplicates: int = 0  # versions the ledger already held (replays, redeliveries, expired state)
    conflicts: int = 0  # versions refused because the ledger holds another: dead-lettered
    transactions_upserted: int = 0
    windows_upserted: int = 0
    dead_letters_inserted: int = 0
    used_fallback: bool = False  # the time-restricted MERGE could not be used for this batch

    def __add__(self, other: MergeOutcome) -> MergeOutcome:
        """The outcome of two batches merged one after the other (a merge cycle's days)."""
        sums = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in dataclasses.fields(self)
            if f.name != "used_fallback"
        }
        return MergeOutcome(
            **sums,
            used_fallback=self.used_fallback or other.used_fallback,
        )


class WarehouseSetupError(RuntimeError):
    """The warehouse is not as the pipeline needs it (a dataset missing, a right not granted);
    the message says what to do. Permanent: retrying cannot help until someone acts."""


class Warehouse(abc.ABC):
    """A place the four tables live in, written only through idempotent MERGEs."""

    @abc.abstractmethod
    def create_tables(self) -> None:
        """Create the tables if they do not exist; safe to call concurrently and repeatedly."""

    @abc.abstractmethod
    def merge_events(self, batch: Sequence[LedgerCandidate]) -> MergeOutcome:
        """Stage the batch and MERGE it into transaction_events, transactions and
        account_window_totals (and conflict rows into dead_letters), atomically where the
        warehouse allows. Running it again with the same batch changes nothing. (The pipeline
        stages and merges in cycles; this merges one batch at once, for tools and tests.)"""

    @abc.abstractmethod
    def stage_events(self, batch: Sequence[LedgerCandidate]) -> None:
        """Append the batch to the warehouse's staging table, for a later :meth:`merge_staged`
        (how the pipeline writes: pipeline/sinks/upsert.py, ``StageAndMergeLedger``). Appends
        may repeat (a retried bundle): the merge makes them idempotent."""

    @abc.abstractmethod
    def merge_staged(self) -> MergeOutcome:
        """Merge every row staged and committed before the call, as :meth:`merge_events` merges
        a batch (set-based, one UTC day of event time at a time), then remove those rows from
        staging. A crash in between leaves them staged and the next call merges them again,
        which changes nothing; rows staged meanwhile wait for the next call. Returns the sum of
        the days' outcomes."""

    @abc.abstractmethod
    def merge_dead_letters(self, rows: Sequence[DeadLetter]) -> int:
        """Insert the dead letters whose id is absent; returns how many were inserted."""

    @abc.abstractmethod
    def read_checkpoint(self, source: str) -> dt.datetime | None:
        """The replay checkpoint recorded for ``source``, if any."""

    @abc.abstractmethod
    def write_checkpoint(self, source: str, replay_from: dt.datetime) -> None:
        """Record that everything ``source`` delivered before ``replay_from`` is committed."""

    @abc.abstractmethod
    def fetch_rows(self, table: str) -> list[dict[str, Any]]:
        """All rows of a table ordered by its key (for reconcile and tests, not for hot paths)."""

    def is_transient(self, error: BaseException) -> bool:
        """Whether retrying the same call may succeed (contention, unavailability)."""
        return False

    def close(self) -> None:  # noqa: B027  # optional hook, most warehouses need it
        """Release connections."""


WarehouseFactory = Callable[[], Warehouse]


def parse_warehouse_url(url: str) -> tuple[str, str]:
    """``duckdb:PATH`` or ``bigquery:PROJECT.DATASET`` -> (kind, location); ValueError if not."""
    kind, sep, location = url.partition(":")
    if not sep or kind not in WAREHOUSE_KINDS or not location:
        raise ValueError(
            f"--warehouse must be duckdb:PATH or bigquery:PROJECT.DATASET, got {url!r}"
        )
    if kind == "bigquery":
        from pipeline.sinks.bigquery import parse_dataset  # noqa: PLC0415

        parse_dataset(location)
    return kind, location


@dataclass(frozen=True)
class BigQuerySettings:
    """How a BigQuery warehouse is reached beyond its URL (the ``--bigquery_*`` options)."""

    staging_dataset: str | None = None  # PROJECT.DATASET; default: the dataset's name + _staging
    location: str | None = None  # where the datasets must be; None: wherever they are
    create_datasets: bool = False  # create missing datasets (a local run; not the worker's right)
    dedup_horizon_days: int = 0  # a merge cycle's ledger lookup; 0: the whole ledger


def open_warehouse(
    url: str, bigquery: BigQuerySettings | None = None, run_id: str | None = None
) -> Warehouse:
    kind, location = parse_warehouse_url(url)
    # Imported here so a run needs only the client of the warehouse it uses.
    if kind == "duckdb":
        from pipeline.sinks.duckdb import DuckDBWarehouse  # noqa: PLC0415

        return DuckDBWarehouse(location)
    from pipeline.sinks.bigquery import BigQueryWarehouse, parse_dataset  # noqa: PLC0415

    project, dataset = parse_dataset(location)
    settings = bigquery or BigQuerySettings()
    return BigQueryWarehouse(
        project,
        dataset,
        settings.staging_dataset,
        location=settings.location,
        create_datasets=settings.create_datasets,
        dedup_horizon_days=settings.dedup_horizon_days,
        run_id=run_id,
    )


def warehouse_factory(
    url: str, bigquery: BigQuerySettings | None = None, run_id: str | None = None
) -> WarehouseFactory:
    """A picklable factory for the workers. ``run_id`` identifies one launched pipeline: every
    worker's warehouse gets the same one (BigQuery scopes its job ids by it)."""
    parse_warehouse_url(url)  # fail at construction time, not on the workers
    return functools.partial(open_warehouse, url, bigquery, run_id or uuid.uuid4().hex[:12])

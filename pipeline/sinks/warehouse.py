"""The warehouse seam: the small interface every warehouse implements.

The upsert composite talks only to this interface, so tests hand it a real local warehouse, or a
fault-injecting wrapper around one, instead of mocking anything. A ``WarehouseFactory`` (a
picklable zero-argument callable) is what travels to the workers; each DoFn instance opens its
own connection in ``setup``. Which warehouse a ``--warehouse`` URL names is decided in
pipeline/sinks/dispatch.py; backends import this module, never that one.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.dead_letters import DeadLetter
from pipeline.events import LedgerCandidate


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

    def merge_events(self, batch: Sequence[LedgerCandidate]) -> MergeOutcome:
        """Merge one batch into transaction_events, transactions and account_window_totals (and
        conflict rows into dead_letters); running it again with the same batch changes nothing.
        For tools and tests: the pipeline stages and merges in cycles. By default the batch is
        staged and one merge cycle runs, the pipeline's own path (it also merges whatever else
        staging holds, which a tool or test running alone does not have)."""
        if not batch:
            return MergeOutcome()
        self.stage_events(batch)
        return self.merge_staged()

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

"""The MERGE upsert sink: batch, then merge each batch through the warehouse seam.

Batches are keyed by UTC day of event time (of arrival, for dead letters), so a batch touches
few partitions and its MERGE can be restricted to them.

* Bounded input: GroupByKey per day, then chunks of at most ``max_batch_rows`` in event-time
  order, so each chunk spans a narrow time range.
* Unbounded input: ``GroupIntoBatches`` per day, flushed at ``max_batch_rows`` or after
  ``flush_seconds`` of buffering, whichever comes first.

Failure: a transient warehouse error is retried with exponential backoff (Beam's
``retry.with_exponential_backoff``); when retries run out, or for any other error, the DoFn
raises, the bundle fails and the runner retries it (forever in streaming on Dataflow). Nothing is
dropped. A retried batch is harmless: every MERGE only inserts what is absent and recomputes
what it touches.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import apache_beam as beam
from apache_beam.utils import retry

from pipeline import metrics
from pipeline.dead_letters import DeadLetter
from pipeline.events import LedgerCandidate
from pipeline.sinks.warehouse import MergeOutcome, Warehouse, WarehouseFactory

_LOG = logging.getLogger(__name__)

T = TypeVar("T")


class BatchForMerge(beam.PTransform):
    """Group rows into ``(key, [rows])`` batches of at most ``max_rows``, per key.

    Semantics: every input row is in exactly one output batch; rows of one batch share a key.
    Bounded input: batches are chunks of the key's rows sorted by ``sort_key``. Unbounded input:
    a batch is flushed when it is full or ``flush_seconds`` after its first row, in the global
    window; no row waits for a window to close.
    """

    def __init__(
        self,
        key: Callable[[Any], str],
        sort_key: Callable[[Any], Any],
        max_rows: int,
        flush_seconds: float,
    ) -> None:
        super().__init__()
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        if flush_seconds <= 0:
            raise ValueError(f"flush_seconds must be positive, got {flush_seconds}")
        self._key = key
        self._sort_key = sort_key
        self._max_rows = max_rows
        self._flush_seconds = flush_seconds

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        keyed_type = tuple[str, rows.element_type]  # type: ignore[name-defined]
        keyed = rows | "KeyByPartition" >> beam.WithKeys(self._key).with_output_types(keyed_type)
        if rows.is_bounded:
            return (
                keyed
                | "GroupByPartition" >> beam.GroupByKey()
                | "ChunkInTimeOrder" >> beam.FlatMap(_chunks, self._sort_key, self._max_rows)
            )
        # The input hint gives the batching state a deterministic str key coder.
        return keyed | "GroupIntoBatches" >> beam.GroupIntoBatches(
            self._max_rows, max_buffering_duration_secs=self._flush_seconds
        ).with_input_types(keyed_type)


def _chunks(
    element: tuple[str, Iterable[T]], sort_key: Callable[[T], Any], max_rows: int
) -> Iterator[tuple[str, list[T]]]:
    key, values = element
    ordered = sorted(values, key=sort_key)
    for start in range(0, len(ordered), max_rows):
        yield key, ordered[start : start + max_rows]


class _WarehouseDoFn(beam.DoFn):
    """Opens one warehouse per DoFn instance and retries transient errors."""

    def __init__(
        self, warehouse_factory: WarehouseFactory, num_retries: int, initial_delay_seconds: float
    ) -> None:
        if num_retries < 0:
            raise ValueError(f"num_retries must be >= 0, got {num_retries}")
        self._factory = warehouse_factory
        self._num_retries = num_retries
        self._initial_delay = initial_delay_seconds
        self._warehouse: Warehouse | None = None
        self._retries = metrics.counter(metrics.MERGE_RETRIES)

    def setup(self) -> None:
        self._warehouse = self._factory()
        self._with_retries(self._warehouse.create_tables)

    def teardown(self) -> None:
        if self._warehouse is not None:
            self._warehouse.close()
            self._warehouse = None

    def _with_retries(self, call: Callable[[], T]) -> T:
        warehouse = self._warehouse
        assert warehouse is not None, "setup() opens the warehouse"

        def on_retry(message: str, *args: object, **kwargs: Any) -> None:
            self._retries.inc()
            _LOG.warning(message, *args, **kwargs)

        decorated = retry.with_exponential_backoff(
            num_retries=self._num_retries,
            initial_delay_secs=self._initial_delay,
            logger=on_retry,
            retry_filter=warehouse.is_transient,
        )(call)
        return decorated()


class MergeEventBatchesFn(_WarehouseDoFn):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batches = metrics.counter(metrics.MERGE_BATCHES)
        self._inserted = metrics.counter(metrics.LEDGER_INSERTED)
        self._duplicates = metrics.counter(metrics.DUPLICATES_WAREHOUSE)
        self._conflicts = metrics.counter(metrics.CONFLICTS)
        self._transactions = metrics.counter(metrics.TRANSACTIONS_UPSERTED)
        self._windows = metrics.counter(metrics.WINDOW_TOTALS_UPSERTED)
        self._dead_letters = metrics.counter(metrics.DEAD_LETTERS_INSERTED)
        self._fallbacks = metrics.counter(metrics.MERGE_FALLBACKS)

    def process(self, element: tuple[str, Iterable[LedgerCandidate]]) -> Iterator[MergeOutcome]:
        _, rows = element
        batch: Sequence[LedgerCandidate] = list(rows)
        assert self._warehouse is not None
        warehouse = self._warehouse
        outcome = self._with_retries(lambda: warehouse.merge_events(batch))
        self._batches.inc()
        self._inserted.inc(outcome.inserted)
        self._duplicates.inc(outcome.duplicates)
        self._conflicts.inc(outcome.conflicts)
        self._transactions.inc(outcome.transactions_upserted)
        self._windows.inc(outcome.windows_upserted)
        self._dead_letters.inc(outcome.dead_letters_inserted)
        self._fallbacks.inc(int(outcome.used_fallback))
        yield outcome


class MergeDeadLetterBatchesFn(_WarehouseDoFn):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._dead_letters = metrics.counter(metrics.DEAD_LETTERS_INSERTED)

    def process(self, element: tuple[str, Iterable[DeadLetter]]) -> Iterator[int]:
        _, rows = element
        batch = list(rows)
        assert self._warehouse is not None
        warehouse = self._warehouse
        inserted = self._with_retries(lambda: warehouse.merge_dead_letters(batch))
        self._dead_letters.inc(inserted)
        yield inserted


def _day(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).date().isoformat()


def _event_day(candidate: LedgerCandidate) -> str:
    return _day(candidate.event.event_time)


def _event_order(candidate: LedgerCandidate) -> Hashable:
    return candidate.event.event_time, candidate.event.event_id


def _arrival_day(row: DeadLetter) -> str:
    return _day(row.arrival_time)


def _arrival_order(row: DeadLetter) -> Hashable:
    return row.arrival_time, row.dead_letter_id


class _Upsert(beam.PTransform):
    def __init__(
        self,
        warehouse_factory: WarehouseFactory,
        max_batch_rows: int = 5000,
        flush_seconds: float = 5.0,
        num_retries: int = 5,
        initial_retry_delay_seconds: float = 1.0,
    ) -> None:
        super().__init__()
        self._factory = warehouse_factory
        self._max_batch_rows = max_batch_rows
        self._flush_seconds = flush_seconds
        self._retry_args = (num_retries, initial_retry_delay_seconds)


class UpsertLedger(_Upsert):
    """MERGE ledger candidates into transaction_events, transactions and account_window_totals.

    Input: :class:`LedgerCandidate` s in the global window. Output: one :class:`MergeOutcome` per
    committed batch. Effectively-once: a candidate whose version the ledger already holds changes
    nothing; one that differs from the ledger's version becomes a conflict dead letter in the same
    transaction; windows touched by a batch are recomputed from the ledger, so totals stay exact
    under duplicates, replays and retries.
    """

    def expand(self, candidates: beam.PCollection) -> beam.PCollection:
        return (
            candidates
            | "BatchByEventDay"
            >> BatchForMerge(_event_day, _event_order, self._max_batch_rows, self._flush_seconds)
            | "MergeBatches" >> beam.ParDo(MergeEventBatchesFn(self._factory, *self._retry_args))
        )


class UpsertDeadLetters(_Upsert):
    """Insert dead letters whose id is absent: a replay of the same bad input adds no row."""

    def expand(self, dead_letters: beam.PCollection) -> beam.PCollection:
        return (
            dead_letters
            | "BatchByArrivalDay"
            >> BatchForMerge(
                _arrival_day, _arrival_order, self._max_batch_rows, self._flush_seconds
            )
            | "MergeBatches"
            >> beam.ParDo(MergeDeadLetterBatchesFn(self._factory, *self._retry_args))
        )

"""The MERGE upsert sinks over the warehouse seam.

* :class:`StageAndMergeLedger`: ledger candidates are appended to the warehouse's staging table
  in parallel, per bundle, and merge cycles merge what is staged, set-based, every
  ``merge_interval_seconds`` and when the input ends. No key, no sort in a worker's memory, one
  set of statements per cycle, whatever the number of workers.
* :class:`UpsertDeadLetters`: dead letters are merged in batches as they come, keyed by arrival
  time so that a batch never spans two UTC days (its MERGE is restricted to one partition).
  Bounded input: GroupByKey per slice of ``slice_seconds`` of arrival time (a whole UTC day by
  default; a slice divides a day), then chunks of at most ``max_batch_rows`` in arrival order.
  Unbounded input: ``GroupIntoBatches`` per day, flushed at ``max_batch_rows`` or after
  ``flush_seconds`` of buffering, whichever comes first.

Streaming progress: with a :class:`Checkpointing`, each staged append (staged rows are durable,
and a later cycle merges them) or committed dead-letter batch settles the source positions
(Pub/Sub publish times) of its rows in the run's progress, and the oldest position not yet
safely committed, minus a margin, is written to the warehouse as the replay checkpoint
(pipeline/progress.py explains why and when this applies).

Failure: a transient warehouse error is retried with exponential backoff (Beam's
``retry.with_exponential_backoff``); when retries run out, or for any other error, the DoFn
raises, the bundle fails and the runner retries it (forever in streaming on Dataflow). Nothing is
dropped. A retried append or cycle is harmless: a cycle counts identical versions once, inserts
only what is absent and recomputes what it touches.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import apache_beam as beam
from apache_beam.transforms import trigger, window
from apache_beam.utils import retry

from pipeline import metrics, progress
from pipeline.dead_letters import DeadLetter
from pipeline.events import LedgerCandidate
from pipeline.sinks.warehouse import MergeOutcome, Warehouse, WarehouseFactory

_LOG = logging.getLogger(__name__)

T = TypeVar("T")


class BatchForMerge(beam.PTransform):
    """Group rows into ``(key, [rows])`` batches of at most ``max_rows``, per key.

    Semantics: every input row is in exactly one output batch; rows of one batch share a key.
    Bounded input: batches are chunks of the rows of one ``bounded_key`` (``key`` when it is not
    given) sorted by ``sort_key``; the rows of one bounded key are held in memory at once.
    Unbounded input: a batch of one ``key`` is flushed when it is full or ``flush_seconds`` after
    its first row, in the global window; no row waits for a window to close.
    """

    def __init__(
        self,
        key: Callable[[Any], str],
        sort_key: Callable[[Any], Any],
        max_rows: int,
        flush_seconds: float,
        bounded_key: Callable[[Any], str] | None = None,
    ) -> None:
        super().__init__()
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        if flush_seconds <= 0:
            raise ValueError(f"flush_seconds must be positive, got {flush_seconds}")
        self._key = key
        self._bounded_key = bounded_key or key
        self._sort_key = sort_key
        self._max_rows = max_rows
        self._flush_seconds = flush_seconds

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        keyed_type = tuple[str, rows.element_type]  # type: ignore[name-defined]
        # A str key type makes the batching state's key coder deterministic.
        key = self._bounded_key if rows.is_bounded else self._key
        keyed = rows | "KeyByPartition" >> beam.Map(_keyed, key).with_output_types(keyed_type)
        if rows.is_bounded:
            return (
                keyed
                | "GroupByPartition" >> beam.GroupByKey()
                | "ChunkInTimeOrder"
                >> beam.FlatMap(_chunks, self._sort_key, self._max_rows).with_output_types(
                    tuple[str, list[rows.element_type]]  # type: ignore[name-defined]
                )
            )
        return keyed | "GroupIntoBatches" >> beam.GroupIntoBatches(
            self._max_rows, max_buffering_duration_secs=self._flush_seconds
        )


def _keyed(row: T, key: Callable[[T], str]) -> tuple[str, T]:
    return key(row), row


def _chunks(
    element: tuple[str, Iterable[T]], sort_key: Callable[[T], Any], max_rows: int
) -> Iterator[tuple[str, list[T]]]:
    key, values = element
    ordered = sorted(values, key=sort_key)
    for start in range(0, len(ordered), max_rows):
        yield key, ordered[start : start + max_rows]


@dataclass(frozen=True)
class Checkpointing:
    """Where and how a sink records its progress in the observed run (pipeline/progress.py):
    each committed batch settles its rows there; with a ``source`` the replay checkpoint of that
    subscription is written too. ``source=None`` (reading a topic through a temporary
    subscription): nothing can be replayed, so only the progress is kept (it tells a local run
    when everything pulled is merged)."""

    source: str | None  # e.g. projects/P/subscriptions/S
    margin_seconds: float = 60.0


class _WarehouseDoFn(beam.DoFn):
    """Opens one warehouse per DoFn instance, retries transient errors, records checkpoints."""

    def __init__(
        self,
        warehouse_factory: WarehouseFactory,
        num_retries: int,
        initial_delay_seconds: float,
        checkpointing: Checkpointing | None = None,
    ) -> None:
        if num_retries < 0:
            raise ValueError(f"num_retries must be >= 0, got {num_retries}")
        self._factory = warehouse_factory
        self._num_retries = num_retries
        self._initial_delay = initial_delay_seconds
        self._checkpointing = checkpointing
        self._warehouse: Warehouse | None = None
        self._counters = metrics.OutcomeCounters()

    def _settle(self, source_times: Iterable[dt.datetime | None]) -> None:
        """After a commit: these rows are safe; record how far the source is committed."""
        spec = self._checkpointing
        run = progress.observed() if spec is not None else None
        if spec is None or run is None:
            return
        run.settled(source_times)
        source = spec.source
        if source is None:
            return
        with run.checkpoint_lock:  # compute and write in one step, so checkpoints never race
            point = run.safe_point()
            if point is not None:
                replay_from = point - dt.timedelta(seconds=spec.margin_seconds)
                self._with_retries(lambda: self._writer().write_checkpoint(source, replay_from))

    def _writer(self) -> Warehouse:
        assert self._warehouse is not None, "setup() opens the warehouse"
        return self._warehouse

    def setup(self) -> None:
        self._warehouse = self._factory()
        self._with_retries(self._warehouse.create_tables)
        run = progress.observed() if self._checkpointing else None
        if run is not None:
            run.on_close(self.teardown)  # a cancelled local run closes its warehouse too

    def teardown(self) -> None:
        if self._warehouse is not None:
            self._warehouse.close()
            self._warehouse = None

    def _with_retries(self, call: Callable[[], T]) -> T:
        warehouse = self._writer()

        def on_retry(message: str, *args: object, **kwargs: Any) -> None:
            self._counters.inc(metrics.MERGE_RETRIES)
            _LOG.warning(message, *args, **kwargs)

        decorated = retry.with_exponential_backoff(
            num_retries=self._num_retries,
            initial_delay_secs=self._initial_delay,
            logger=on_retry,
            retry_filter=warehouse.is_transient,
        )(call)
        return decorated()


class StageEventBatchesFn(_WarehouseDoFn):
    """Appends each batch to the warehouse's staging table; outputs how many rows it staged.
    A staged row is durable, and the next merge cycle (of this run or of a later one) merges it,
    so its source position is settled here."""

    def process(self, batch: Sequence[LedgerCandidate]) -> Iterator[int]:
        warehouse = self._writer()
        self._with_retries(lambda: warehouse.stage_events(batch))
        self._counters.inc(metrics.ROWS_STAGED, len(batch))
        self._settle(candidate.source_time for candidate in batch)
        _LOG.info("Staged a batch of %d", len(batch))
        yield len(batch)


class MergeCycleFn(_WarehouseDoFn):
    """One merge cycle per input element: merges whatever is staged when it runs (at least the
    rows the element counts, which were staged before it was emitted)."""

    def process(self, staged: int) -> Iterator[MergeOutcome]:
        warehouse = self._writer()
        outcome = self._with_retries(warehouse.merge_staged)
        self._counters.count_outcome(outcome)
        self._counters.inc(metrics.MERGE_CYCLES)
        _LOG.info(
            "Merged a cycle (%d rows staged for it): %d inserted, %d duplicates, %d conflicts",
            staged,
            outcome.inserted,
            outcome.duplicates,
            outcome.conflicts,
        )
        yield outcome


class MergeDeadLetterBatchesFn(_WarehouseDoFn):
    def process(self, element: tuple[str, Iterable[DeadLetter]]) -> Iterator[int]:
        _, rows = element
        batch = list(rows)
        warehouse = self._writer()
        inserted = self._with_retries(lambda: warehouse.merge_dead_letters(batch))
        self._counters.inc(metrics.DEAD_LETTERS_INSERTED, inserted)
        # A dead letter's arrival_time is its message's publish time (transforms/parse.py).
        self._settle(row.arrival_time for row in batch)
        yield inserted


SECONDS_PER_DAY = 86_400


def slice_divides_day(slice_seconds: int) -> bool:
    """A slice must divide a UTC day, so that no slice (and no batch) spans two days."""
    return 1 <= slice_seconds <= SECONDS_PER_DAY and SECONDS_PER_DAY % slice_seconds == 0


def validate_slice_seconds(slice_seconds: int) -> None:
    if not slice_divides_day(slice_seconds):
        raise ValueError(f"slice_seconds must divide {SECONDS_PER_DAY}, got {slice_seconds}")


def _day(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).date().isoformat()


def _slice(value: dt.datetime, slice_seconds: int) -> str:
    """The UTC start of the slice holding ``value``, e.g. ``2026-01-01T05:00:00Z``."""
    utc = value.astimezone(dt.UTC)
    second = utc.hour * 3600 + utc.minute * 60 + utc.second
    start = second - second % slice_seconds
    return f"{utc.date().isoformat()}T{start // 3600:02d}:{start // 60 % 60:02d}:{start % 60:02d}Z"


def _arrival_day(row: DeadLetter) -> str:
    return _day(row.arrival_time)


def _arrival_slice(row: DeadLetter, slice_seconds: int) -> str:
    return _slice(row.arrival_time, slice_seconds)


def _arrival_order(row: DeadLetter) -> Hashable:
    return row.arrival_time, row.dead_letter_id


class _Upsert(beam.PTransform):
    def __init__(
        self,
        warehouse_factory: WarehouseFactory,
        *,
        max_batch_rows: int = 5000,
        flush_seconds: float = 5.0,
        slice_seconds: int = SECONDS_PER_DAY,
        num_retries: int = 5,
        initial_retry_delay_seconds: float = 1.0,
        checkpointing: Checkpointing | None = None,
    ) -> None:
        super().__init__()
        validate_slice_seconds(slice_seconds)
        self._factory = warehouse_factory
        self._max_batch_rows = max_batch_rows
        self._flush_seconds = flush_seconds
        self._slice_seconds = slice_seconds
        self._fn_args = (warehouse_factory, num_retries, initial_retry_delay_seconds, checkpointing)


class BatchByArrivalDay(BatchForMerge):
    """Dead letters in batches within one UTC day of arrival time, each in arrival order
    (bounded input: one slice of ``slice_seconds``, by default the day, per key): the narrow
    time range that keeps each MERGE restricted to one partition."""

    def __init__(
        self, max_rows: int, flush_seconds: float, slice_seconds: int = SECONDS_PER_DAY
    ) -> None:
        validate_slice_seconds(slice_seconds)
        super().__init__(
            _arrival_day,
            _arrival_order,
            max_rows,
            flush_seconds,
            bounded_key=functools.partial(_arrival_slice, slice_seconds=slice_seconds),
        )


class StageAndMergeLedger(_Upsert):
    """Ledger candidates appended to the warehouse's staging table in parallel, then merged into
    transaction_events, transactions and account_window_totals by merge cycles.

    Input: :class:`LedgerCandidate` s in the global window. Output: one :class:`MergeOutcome`
    per merge cycle. Appends are batches of at most ``max_batch_rows`` of one bundle (Beam's
    ``BatchElements``): no key, so no worker merges for the others. A merge cycle runs every
    ``merge_interval_seconds`` of processing time while rows arrive (unbounded input: an early
    firing of the global window), and once more when the input ends (bounded input: once, after
    every append; unbounded: at a drain). Each cycle merges what is staged when it runs by the
    rules of pipeline/sinks/ledger_rules.py: a candidate whose version the ledger already holds
    changes nothing; one that differs from the ledger's version becomes a conflict dead letter;
    windows touched are recomputed from the ledger, so totals stay exact; a row staged twice, or
    merged twice after a crash, changes nothing. Staging is durable: rows a run staged and did
    not merge are merged by the next cycle of any later run.
    """

    def __init__(
        self,
        warehouse_factory: WarehouseFactory,
        *,
        merge_interval_seconds: int = 60,
        **kw: Any,
    ) -> None:
        super().__init__(warehouse_factory, **kw)
        if merge_interval_seconds < 1:
            raise ValueError(
                f"merge_interval_seconds must be at least 1, got {merge_interval_seconds}"
            )
        self._interval = merge_interval_seconds

    def expand(self, candidates: beam.PCollection) -> beam.PCollection:
        rows = self._max_batch_rows
        staged = (
            candidates
            | "BatchForStaging" >> beam.BatchElements(min_batch_size=rows, max_batch_size=rows)
            | "AppendToStaging" >> beam.ParDo(StageEventBatchesFn(*self._fn_args))
        )
        if not candidates.is_bounded:
            # The processing-time trigger cannot run on bounded input (Beam's batch runner has no
            # clock for it), and is not needed there: the default trigger fires once, at the end.
            staged = staged | "EveryInterval" >> beam.WindowInto(
                window.GlobalWindows(),
                trigger=trigger.AfterWatermark(early=trigger.AfterProcessingTime(self._interval)),
                accumulation_mode=trigger.AccumulationMode.DISCARDING,
            )
        return (
            staged
            | "CountStaged" >> beam.CombineGlobally(sum).without_defaults()
            | "MergeCycle" >> beam.ParDo(MergeCycleFn(*self._fn_args))
        )


class UpsertDeadLetters(_Upsert):
    """Insert dead letters whose id is absent: a replay of the same bad input adds no row."""

    def expand(self, dead_letters: beam.PCollection) -> beam.PCollection:
        return (
            dead_letters
            | "BatchByArrivalDay"
            >> BatchByArrivalDay(self._max_batch_rows, self._flush_seconds, self._slice_seconds)
            | "MergeBatches" >> beam.ParDo(MergeDeadLetterBatchesFn(*self._fn_args))
        )

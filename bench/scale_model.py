"""A scale model of the BigQuery sink on Dataflow, in simulated time: what each design sustains,
and with what lag, when events are offered at 1k to 300k a second. A model, not a measurement
of BigQuery: every number it uses is stated in :class:`Assumptions` (BENCHMARKS.md section 6
lists them with their sources).

    python -m bench.scale_model [--minutes 20] [--loads 1000,10000,100000,300000]

Designs:

* ``today``: streaming batches keyed by the UTC day of event time (one key a day, so one batch
  at a time, whatever the number of workers), flushed at 5,000 rows or 5 s, each a chain of
  nine jobs (load, version lookup, ledger MERGE, verification, transaction lookup, transaction
  MERGE, duplicate check, window sums, totals MERGE).
* ``today_sharded``: the same with the day key split into 16 shards, so 16 batches run at once;
  their mutating statements meet BigQuery's per-table queue (2 running, 20 waiting: beyond that
  the statement fails and its batch is retried) and conflict when two update the same day.
* ``staged``: the built design (pipeline/sinks/bigquery/appends.py, bigquery_cycle.py): workers
  append rows to a staging table as they come (Storage Write API, default stream); one merge
  cycle per interval (60 s) is one script job whose statements, read from the script itself
  (``cycle_statements``), run one after another in a transaction over the rows staged when it
  began. A cycle that overruns its interval is followed at once by the next, which takes
  everything staged meanwhile.

Output: one JSON line per design and load: sustained events/s (rows committed per second over
the second half of the run) and the p50/p99 lag from an event's arrival to its commit (events
still waiting at the end count with their lag so far, a lower bound).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import sqlglot
from sqlglot import expressions as exp

from pipeline.sinks.bigquery.cycle import cycle_script
from tests.production_bigquery.jobs import (
    CONFLICT_RERUNS,
    DML_QUEUED_PER_TABLE,
    DML_RUNNING_PER_TABLE,
    PRODUCTION_LATENCY,
)


@dataclass(frozen=True)
class Assumptions:
    query_seconds: tuple[float, float] = PRODUCTION_LATENCY.query  # a job's fixed part
    load_seconds: tuple[float, float] = PRODUCTION_LATENCY.load
    # A statement's part that grows with its input: rows a statement reads per second.
    # BigQuery publishes no figure; 2.5M rows/s is a guess for a join of staged rows against
    # the partitions they touch with on-demand slots. The model prints what follows from it.
    rows_per_second: float = 2_500_000
    batch_rows: int = 5_000  # --max_batch_rows
    flush_seconds: float = 5.0  # --batch_flush_seconds
    shards: int = 16  # today_sharded
    retry_seconds: float = 5.0  # a failed batch's backoff before it runs again
    interval_seconds: float = 60.0  # staged: one merge cycle per interval
    # staged: a statement inside a script (no job of its own to insert and poll), fixed part.
    # BigQuery publishes no figure either; a guess, stated.
    statement_seconds: tuple[float, float] = (0.5, 1.5)
    append_seconds: float = 1.0  # staged: an appended row is readable after this
    row_bytes: int = 250  # staged: a row in an append request
    # Storage Write API throughput per project in a region (https://cloud.google.com/bigquery/quotas#write-api-limits).
    append_bytes_per_second: float = 300e6
    seed: int = 7


NINE_JOBS = ("load", "q", "ledger", "q", "q", "transactions", "q", "q", "totals")
MUTATING = frozenset({"ledger", "transactions", "totals"})  # the ledger's MERGE only inserts


@dataclass
class Result:
    design: str
    rows_per_second: float
    offered: int
    sustained: int
    p50_lag_seconds: float
    p99_lag_seconds: float
    retries: int = 0


class _Lags:
    """Lags of groups of rows that arrived evenly over [first, last] and committed at once."""

    def __init__(self) -> None:
        self.groups: list[tuple[float, float, float]] = []  # (smallest lag, largest, rows)

    def add(self, first: float, last: float, committed: float, rows: float) -> None:
        if rows > 0:
            self.groups.append((committed - last, committed - first, rows))

    def percentile(self, share: float) -> float:
        points: list[tuple[float, float]] = []
        for low, high, rows in self.groups:  # each group as 10 evenly spread points
            points.extend((low + (high - low) * (i + 0.5) / 10, rows / 10) for i in range(10))
        points.sort()
        total = sum(weight for _, weight in points)
        seen = 0.0
        for lag, weight in points:
            seen += weight
            if seen >= share * total:
                return round(lag, 1)
        return 0.0


def _duration(rng: random.Random, kind: str, rows: float, a: Assumptions) -> float:
    """A job's fixed part, plus its input: the rows it handles and about as many of its
    target's (a MERGE joins them), at ``rows_per_second``."""
    low, high = a.load_seconds if kind == "load" else a.query_seconds
    return rng.uniform(low, high) + 2 * rows / a.rows_per_second


# --- today's design ------------------------------------------------------------------------


def today(offered: int, seconds: float, a: Assumptions, shards: int = 1) -> Result:
    """Batches of the day key's shards, one at a time per shard; the shards share the tables'
    DML queues (all their rows are of one day, so their updates conflict)."""
    rng = random.Random(a.seed)
    lags = _Lags()
    committed: list[tuple[float, float]] = []
    tables = _Tables()
    retries = 0
    per_shard = offered / shards
    taken = [0.0] * shards  # rows each shard has taken, in arrival order
    ticket = itertools.count()
    free: list[tuple[float, int, int]] = [(0.0, next(ticket), s) for s in range(shards)]
    while free:
        now, _, shard = heapq.heappop(free)
        if now >= seconds:
            continue
        oldest = taken[shard] / per_shard  # arrival time of the oldest row not taken
        full_at = (taken[shard] + a.batch_rows) / per_shard
        start = max(now, min(full_at, oldest + a.flush_seconds))  # full, or the flush timer
        if start > now:
            heapq.heappush(free, (start, next(ticket), shard))
            continue
        rows = min(a.batch_rows, per_shard * now - taken[shard])
        end, failed = _batch(now, rows, a, rng, tables)
        if failed:
            retries += 1
            heapq.heappush(free, (end + a.retry_seconds, next(ticket), shard))
            continue
        taken[shard] += rows
        lags.add(oldest, taken[shard] / per_shard, end, rows)
        committed.append((end, rows))
        heapq.heappush(free, (end, next(ticket), shard))
    for shard in range(shards):  # rows still waiting at the end: their lag so far
        lags.add(taken[shard] / per_shard, seconds, seconds, per_shard * seconds - taken[shard])
    name = "today" if shards == 1 else "today_sharded"
    return _result(name, offered, committed, lags, seconds=seconds, a=a, retries=retries)


class _Tables:
    """BigQuery's mutating-DML queue of each table, in simulated time: 2 statements run, 20
    wait (first in, first out), one more fails; a statement that updates rows is rerun when
    another updating one committed while it ran (all of today's rows are of one day), up to
    three times, and then fails."""

    def __init__(self) -> None:
        self.ends: dict[str, list[float]] = {}  # when each statement on the table finishes
        self.updates: dict[str, list[float]] = {}  # when each updating one commits

    def run(self, table: str, at: float, duration: float, updates: bool) -> tuple[float, bool]:
        """A statement submitted at ``at``: when it finishes, and whether it failed."""
        ends = sorted(t for t in self.ends.get(table, []) if t > at)
        if len(ends) >= DML_RUNNING_PER_TABLE + DML_QUEUED_PER_TABLE:
            return at, True  # "Too many DML statements outstanding"
        start = at if len(ends) < DML_RUNNING_PER_TABLE else ends[-DML_RUNNING_PER_TABLE]
        end = start + duration
        commits = self.updates.setdefault(table, [])
        for _ in range(CONFLICT_RERUNS + 1):
            if not updates or not any(start < t < end for t in commits):
                break
            start, end = end, end + duration  # rerun after the conflict shows at commit
        else:
            self.ends[table] = [*ends, end]
            return end, True  # "Could not serialize access ... due to concurrent update"
        self.ends[table] = [*ends, end]
        if updates:
            commits.append(end)
        return end, False


def _batch(
    start: float, rows: float, a: Assumptions, rng: random.Random, tables: _Tables
) -> tuple[float, bool]:
    now = start
    for job in NINE_JOBS:
        duration = _duration(rng, "load" if job == "load" else "query", rows, a)
        if job in MUTATING:
            now, failed = tables.run(job, now, duration, updates=job != "ledger")
            if failed:
                return now, True
        else:
            now += duration
    return now, False


# --- the staged design ---------------------------------------------------------------------


def cycle_statements() -> list[tuple[str, bool]]:
    """The built cycle script's statements after its declarations, in order, each with whether
    it handles the cycle's rows (a SET of a scalar, BEGIN and COMMIT do not)."""
    script = cycle_script(*(f"`p.d.{name}`" for name in ("l", "t", "w", "s", "c")))
    statements = []
    for tree in sqlglot.parse(script, read="bigquery"):
        if tree is None or isinstance(tree, exp.Declare):
            continue
        light = isinstance(tree, exp.Set | exp.Transaction | exp.Commit)
        statements.append((type(tree).__name__.upper(), not light))
    return statements


def _cycle_seconds(rng: random.Random, rows: float, a: Assumptions) -> float:
    """One cycle: the script job's own fixed part, then each statement after the other."""
    total = rng.uniform(*a.query_seconds)
    for _, handles_rows in cycle_statements():
        total += rng.uniform(*a.statement_seconds) if handles_rows else 0.05
        total += rows / a.rows_per_second if handles_rows else 0.0
    return total


def staged(offered: int, seconds: float, a: Assumptions) -> Result:
    rng = random.Random(a.seed)
    lags = _Lags()
    committed: list[tuple[float, float]] = []
    # Appends: throttled to the project's Storage Write API throughput.
    appended_rate = min(offered, a.append_bytes_per_second / a.row_bytes)
    merged_until = 0.0  # arrival time up to which rows are committed
    cycle_start = a.interval_seconds
    while cycle_start < seconds:
        # Rows readable at the cycle's start: appended (at the throttled rate) a moment ago.
        until = max(merged_until, min(cycle_start - a.append_seconds,
                                      cycle_start * appended_rate / offered))  # fmt: skip
        rows = (until - merged_until) * offered
        end = cycle_start + _cycle_seconds(rng, rows, a)
        lags.add(merged_until, until, end, rows)
        committed.append((end, rows))
        merged_until = until
        cycle_start = max(cycle_start + a.interval_seconds, end)
    lags.add(merged_until, seconds, seconds, (seconds - merged_until) * offered)
    return _result("staged", offered, committed, lags, seconds=seconds, a=a)


def _result(
    design: str,
    offered: int,
    committed: list[tuple[float, float]],
    lags: _Lags,
    *,
    seconds: float,
    a: Assumptions,
    retries: int = 0,
) -> Result:
    half = seconds / 2
    rows = sum(r for t, r in committed if half <= t < seconds)
    return Result(design, a.rows_per_second, offered, round(rows / half), lags.percentile(0.5),
                  lags.percentile(0.99), retries)  # fmt: skip


def run(loads: list[int], minutes: float, a: Assumptions) -> Iterator[Result]:
    seconds = minutes * 60
    for offered in loads:
        yield today(offered, seconds, a)
        yield today(offered, seconds, a, shards=a.shards)
        yield staged(offered, seconds, a)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--loads", default="1000,10000,100000,300000")
    parser.add_argument(
        "--rows_per_second",
        type=float,
        default=Assumptions.rows_per_second,
        help="rows a statement reads per second (the least known assumption)",
    )
    args = parser.parse_args(argv)
    a = Assumptions(rows_per_second=args.rows_per_second)
    for result in run([int(x) for x in args.loads.split(",")], args.minutes, a):
        print(json.dumps(asdict(result)))
    print(json.dumps({"assumptions": asdict(a)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The warehouse contract, run against each real warehouse (DuckDB, BigQuery on the local
emulator): the MERGE rules, what keeps the time-restricted MERGEs from adding second rows, exact
totals, and idempotence of every step."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal

import duckdb
import pytest

from pipeline.dead_letters import STAGE_PARSE, make_dead_letter
from pipeline.events import Event, LedgerCandidate
from pipeline.sinks.duckdb import DuckDBWarehouse
from pipeline.sinks.warehouse import Warehouse, WarehouseFactory
from pipeline.tools.reconcile import Report, check_invariants, fetch_tables, window_of
from tests.faults import FaultyConnection, InjectedFault
from tests.helpers import utc
from tests.warehouses import MergedByCycles, another_run, duckdb_factory, fresh_bigquery

T0 = utc("2026-01-01T00:00:10Z")


def event(
    event_id: str,
    *,
    transaction_id: str = "txn-1",
    account_id: str = "acct-1",
    amount: str = "10",
    status: str = "PENDING",
    at: dt.datetime = T0,
) -> Event:
    return Event(event_id, transaction_id, account_id, Decimal(amount), "USD", status, at)


def cand(e: Event, primary: bool = True, window: int = 60) -> LedgerCandidate:
    start, end = window_of(e.event_time, window)
    return LedgerCandidate(e, primary, start, end)


# BigQuery's ``merge_events`` stages the batch and runs one merge cycle, so on BigQuery the two
# ways are one; DuckDB merges a batch given to ``merge_events`` by its own path, beside cycles.
WAYS = ("duckdb-batch", "duckdb-cycle", "bigquery-cycle")


@pytest.fixture(params=WAYS)
def warehouse(request: pytest.FixtureRequest, duckdb_path: str) -> WarehouseFactory:
    """A real, empty warehouse (this module's own: the ways it is written are part of it)."""
    if request.param.startswith("duckdb"):
        return duckdb_factory(duckdb_path)
    return fresh_bigquery(request.getfixturevalue("production_bigquery"))


@pytest.fixture
def wh(warehouse: WarehouseFactory, request: pytest.FixtureRequest) -> Iterator[Warehouse]:
    """Each contract test runs on every way of writing: a batch merged as it comes
    (``merge_events``), and the batch staged then merged by a merge cycle."""
    cycle = request.node.callspec.params["warehouse"].endswith("cycle")
    opened = MergedByCycles(warehouse()) if cycle else warehouse()
    opened.create_tables()
    yield opened
    opened.close()


def ledger(wh: Warehouse) -> list[Event]:
    return [Event(*(r[k] for k in Event._fields)) for r in wh.fetch_rows("transaction_events")]


def assert_consistent(wh: Warehouse) -> None:
    report = Report()
    check_invariants(fetch_tables(wh), report)
    assert report.problems == []


def merge(wh: Warehouse, events: Sequence[Event]) -> None:
    wh.merge_events([cand(e) for e in events])


def test_new_events_land_once_and_a_replay_changes_nothing(
    wh: Warehouse, warehouse: WarehouseFactory
) -> None:
    batch = [cand(event("e1")), cand(event("e2", transaction_id="txn-2", amount="0.5"))]
    first = wh.merge_events(batch)
    assert (first.inserted, first.duplicates, first.conflicts) == (2, 0, 0)
    snapshot = fetch_tables(wh)

    replay = another_run(warehouse)()  # the same input merged again by a later run
    again = replay.merge_events(batch)
    replay.close()
    assert (again.inserted, again.duplicates, again.conflicts) == (0, 2, 0)
    assert (again.transactions_upserted, again.windows_upserted) == (0, 0)
    assert fetch_tables(wh) == snapshot  # audit timestamps included: nothing was rewritten
    assert_consistent(wh)


def test_a_retried_batch_changes_nothing(wh: Warehouse) -> None:
    """The same batch again in the same run, as after a failed bundle: on BigQuery its jobs
    re-attach to the ones already run; on DuckDB the MERGEs find everything present."""
    batch = [cand(event("e1")), cand(event("e2", transaction_id="txn-2", amount="0.5"))]
    wh.merge_events(batch)
    snapshot = fetch_tables(wh)
    again = wh.merge_events(batch)
    assert again.conflicts == 0
    assert again.inserted + again.duplicates == 2
    assert fetch_tables(wh) == snapshot


def test_totals_are_recomputed_from_the_ledger(wh: Warehouse) -> None:
    merge(wh, [event("e1", amount="10.10"), event("e2", transaction_id="t2", amount="0.01")])
    merge(wh, [event("e3", transaction_id="t3", amount="-5", at=T0 + dt.timedelta(seconds=5))])
    (row,) = wh.fetch_rows("account_window_totals")
    assert (row["event_count"], row["total_amount"]) == (3, Decimal("5.11"))
    assert row["window_start"] == utc("2026-01-01T00:00:00Z")
    assert row["window_end"] == utc("2026-01-01T00:01:00Z")
    assert_consistent(wh)


def test_a_total_that_does_not_fit_numeric_is_flagged_not_a_crash(wh: Warehouse) -> None:
    big = "99999999999999999999999999999.999999999"  # the largest NUMERIC(38, 9)
    merge(wh, [event("e1", amount=big), event("e2", transaction_id="t2", amount="0.000000001")])
    (row,) = wh.fetch_rows("account_window_totals")
    assert (row["event_count"], row["total_amount"], row["total_overflow"]) == (2, None, True)
    # A later event brings the exact total back into range: it is stored again, exactly.
    merge(wh, [event("e3", transaction_id="t3", amount="-" + big)])
    (row,) = wh.fetch_rows("account_window_totals")
    assert (row["event_count"], row["total_amount"], row["total_overflow"]) == (
        3,
        Decimal("0.000000001"),
        False,
    )
    assert_consistent(wh)


def test_conflicting_version_is_dead_lettered_and_ledger_kept(wh: Warehouse) -> None:
    merge(wh, [event("e1", amount="10")])
    outcome = wh.merge_events([cand(event("e1", amount="99"))])
    assert (outcome.inserted, outcome.conflicts, outcome.used_fallback) == (0, 1, False)
    assert ledger(wh) == [event("e1", amount="10")]
    (dead,) = wh.fetch_rows("dead_letters")
    assert dead["stage"] == "dedup"
    assert dead["error"].startswith("conflict:")
    assert "amount" in dead["error"]
    assert dead["payload"] == event("e1", amount="99").to_json()
    # The same conflict again adds no dead letter.
    assert wh.merge_events([cand(event("e1", amount="99"))]).dead_letters_inserted == 0
    assert len(wh.fetch_rows("dead_letters")) == 1
    assert_consistent(wh)


def test_version_with_another_event_time_cannot_land_twice(wh: Warehouse) -> None:
    """The restricted MERGE cannot see a version stored days away; the primary key can."""
    stored = event("e1", at=T0)
    merge(wh, [stored])
    days_later = T0 + dt.timedelta(days=5)
    other = event("e1", amount="11", at=days_later)
    neighbour = event("e2", transaction_id="t2", at=days_later)
    outcome = wh.merge_events([cand(other), cand(neighbour)])
    assert (outcome.inserted, outcome.conflicts) == (1, 1)
    assert sorted(e.event_id for e in ledger(wh)) == ["e1", "e2"]
    assert ledger(wh)[0] == stored
    (dead,) = wh.fetch_rows("dead_letters")
    assert "amount, event_time" in dead["error"]
    assert_consistent(wh)


def test_a_lone_other_version_is_compared_with_a_version_stored_days_away(wh: Warehouse) -> None:
    """A non-primary version inserts nothing, so no primary key can reveal its stored twin outside
    the batch's time range: the warehouse must still find it, and say what differs."""
    stored = event("e1", at=T0)
    merge(wh, [stored])
    days_later = T0 + dt.timedelta(days=5)
    other = event("e1", amount="11", at=days_later)
    neighbour = event("e2", transaction_id="t2", at=days_later)
    outcome = wh.merge_events([cand(other, primary=False), cand(neighbour)])
    assert (outcome.inserted, outcome.conflicts, outcome.used_fallback) == (1, 1, False)
    assert ledger(wh) == [stored, neighbour]
    (dead,) = wh.fetch_rows("dead_letters")
    assert "amount, event_time" in dead["error"]
    assert_consistent(wh)


def test_older_event_never_overwrites_newer_transaction_state(wh: Warehouse) -> None:
    posted = event("e2", status="POSTED", at=T0 + dt.timedelta(minutes=5))
    pending = event("e1", status="PENDING", at=T0)
    merge(wh, [posted])
    merge(wh, [pending])  # arrives later, happened earlier
    (row,) = wh.fetch_rows("transactions")
    assert (row["status"], row["event_id"]) == ("POSTED", "e2")
    assert_consistent(wh)


def test_event_time_ties_go_to_the_greater_event_id(wh: Warehouse) -> None:
    merge(wh, [event("e9", status="POSTED")])
    merge(wh, [event("e1", status="REVERSED")])
    assert wh.fetch_rows("transactions")[0]["event_id"] == "e9"
    merge(wh, [event("f0", status="REVERSED")])
    assert wh.fetch_rows("transactions")[0]["event_id"] == "f0"


@pytest.mark.parametrize("newer_first", [False, True])
def test_a_transaction_days_away_from_the_batch_keeps_one_row_without_a_fallback(
    wh: Warehouse, newer_first: bool
) -> None:
    """A transaction's row 30 days away from the batch (either way) is found and kept to its
    newest event, and the batch needs no unrestricted fallback: a settlement days after its
    authorisation is ordinary data, not a conflict."""
    pending = event("e1", at=T0)
    posted = event("e2", status="POSTED", at=T0 + dt.timedelta(days=30))
    first, second = (posted, pending) if newer_first else (pending, posted)
    merge(wh, [first])
    outcome = wh.merge_events([cand(second)])
    assert (outcome.inserted, outcome.used_fallback) == (1, False)
    (row,) = wh.fetch_rows("transactions")
    assert (row["event_id"], row["status"]) == ("e2", "POSTED")
    assert_consistent(wh)


def test_non_primary_version_without_a_ledger_row_is_a_conflict(wh: Warehouse) -> None:
    outcome = wh.merge_events([cand(event("e1", amount="2"), primary=False)])
    assert (outcome.inserted, outcome.conflicts) == (0, 1)
    assert ledger(wh) == []
    assert "another version" in wh.fetch_rows("dead_letters")[0]["error"]


def test_batch_with_two_primaries_for_one_id_lands_the_earliest(wh: Warehouse) -> None:
    early, late = event("e1", at=T0), event("e1", amount="3", at=T0 + dt.timedelta(seconds=1))
    outcome = wh.merge_events([cand(late), cand(early), cand(early)])
    assert (outcome.inserted, outcome.duplicates, outcome.conflicts) == (1, 1, 1)
    assert ledger(wh) == [early]


def test_of_two_primaries_at_one_time_the_smaller_amount_lands(wh: Warehouse) -> None:
    """The tie at one event time is broken field by field (``version_order``), amounts as
    numbers: 9 before 10, where their text would sort the other way."""
    nine, ten = event("e1", amount="9"), event("e1", amount="10")
    outcome = wh.merge_events([cand(ten), cand(nine)])
    assert (outcome.inserted, outcome.conflicts) == (1, 1)
    assert ledger(wh) == [nine]


def test_a_version_seen_as_a_copy_and_as_the_primary_lands_once(wh: Warehouse) -> None:
    """Whatever the order of the two verdicts, the primary one is kept: dropping it would leave
    the id without a primary in its batch, and the version would be refused as a conflict."""
    for copy_first in (True, False):
        version = event("e1" if copy_first else "e2")
        pair = [cand(version, primary=False), cand(version)]
        outcome = wh.merge_events(pair if copy_first else pair[::-1])
        assert (outcome.inserted, outcome.duplicates, outcome.conflicts) == (1, 1, 0)
    assert ledger(wh) == [event("e1"), event("e2")]


def test_values_are_stored_verbatim_never_as_sql(wh: Warehouse) -> None:
    nasty = "x'); DROP TABLE transaction_events; --"
    merge(wh, [event(nasty, transaction_id=nasty, account_id="o'brien")])
    assert ledger(wh)[0].event_id == nasty
    assert wh.fetch_rows("transactions")[0]["account_id"] == "o'brien"


def test_dead_letters_merge_is_idempotent(wh: Warehouse) -> None:
    rows = [make_dead_letter(STAGE_PARSE, "payload: empty", b"") for _ in range(3)]
    assert wh.merge_dead_letters(rows) == 1
    assert wh.merge_dead_letters(rows) == 0
    assert len(wh.fetch_rows("dead_letters")) == 1


def _assert_batch_fails_whole(
    duckdb_path: str,
    connect: Callable[[str], object],
    batch: Sequence[LedgerCandidate],
    error: type[Exception],
    match: str | None = None,
) -> None:
    """Over a ledger holding e1, merging ``batch`` through ``connect`` raises ``error`` and
    leaves every table as it was."""
    wh = DuckDBWarehouse(duckdb_path)
    wh.create_tables()
    merge(wh, [event("e1")])
    before = fetch_tables(wh)
    wh.close()
    faulty = DuckDBWarehouse(duckdb_path, connect=connect)  # type: ignore[arg-type]
    with pytest.raises(error, match=match):
        faulty.merge_events(batch)
    faulty.close()
    assert fetch_tables(wh) == before


@pytest.mark.parametrize("failing_table", ["transactions", "account_window_totals"])
def test_duckdb_rolls_a_failing_batch_back_whole(duckdb_path: str, failing_table: str) -> None:
    # The ledger MERGE runs before the failing one; it must be rolled back with it.
    _assert_batch_fails_whole(
        duckdb_path,
        lambda path: FaultyConnection(
            duckdb.connect(path), lambda sql: f" INTO {failing_table} " in sql
        ),
        [cand(event("e2", transaction_id="t2"))],
        InjectedFault,
    )


class _LedgerChangesBeforeInsert:
    """A real connection on which another version of ``event`` lands in the ledger just before
    the batch's ledger MERGE: the state a wrong read of the ledger would leave."""

    def __init__(self, inner: duckdb.DuckDBPyConnection, event: Event) -> None:
        self._inner = inner
        self._event = event

    def execute(self, sql: str, *args: object, **kwargs: object) -> object:
        if "MERGE INTO transaction_events" in sql:
            self._inner.execute(
                "INSERT INTO transaction_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [*self._event, T0],
            )
        return self._inner.execute(sql, *args, **kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def test_duckdb_judges_a_batch_against_the_ledger_its_insert_met(duckdb_path: str) -> None:
    """DuckDB judges a batch in the same transaction as its insert, against what the ledger then
    holds, not against an earlier read: another version that landed just before the insert
    stands, and the batch's version becomes a conflict dead letter."""
    wh = DuckDBWarehouse(duckdb_path)
    wh.create_tables()
    wh.close()
    landed_first = event("e2", amount="7")
    faulty = DuckDBWarehouse(
        duckdb_path,
        connect=lambda path: _LedgerChangesBeforeInsert(duckdb.connect(path), landed_first),  # type: ignore[arg-type, return-value]
    )
    outcome = faulty.merge_events([cand(event("e2"))])
    faulty.close()
    assert (outcome.inserted, outcome.duplicates, outcome.conflicts) == (0, 0, 1)
    assert ledger(wh) == [landed_first]
    (dead_letter,) = wh.fetch_rows("dead_letters")
    assert dead_letter["event_id"] == "e2" and "different amount" in dead_letter["error"]
    wh.close()


@pytest.mark.parametrize("days", [5, 30])
def test_duckdb_guards_its_restricted_merges_with_primary_keys(duckdb_path: str, days: int) -> None:
    """DuckDB's guarantee: a row outside the restricted range trips the primary key, and the
    batch is merged again without the restriction (see pipeline/sinks/duckdb/)."""
    wh = DuckDBWarehouse(duckdb_path)
    wh.create_tables()
    merge(wh, [event("e1", at=T0)])
    later = T0 + dt.timedelta(days=days)
    outcome = wh.merge_events(
        [cand(event("e1", amount="2", at=later)), cand(event("e2", at=later))]
    )
    assert outcome.used_fallback
    assert len(wh.fetch_rows("transaction_events")) == 2
    assert len(wh.fetch_rows("transactions")) == 1
    wh.close()


def test_duckdb_merges_transactions_in_range_until_one_lies_beyond_it(duckdb_path: str) -> None:
    """DuckDB's transactions MERGE scans the batch's range widened by the lookback. A transaction
    whose row lies beyond it trips the primary key, and that batch is merged again with the
    upsert through the key, not unrestricted; the next batch takes the MERGE again. The
    statements run are observed through the connection seam."""
    statements: list[str] = []

    def record(sql: str) -> bool:
        statements.append(" ".join(sql.split()[:3]))
        return False  # fail nothing: the wrapper only records

    def batch(*events: Event) -> tuple[bool, list[str]]:
        statements.clear()
        outcome = wh.merge_events([cand(e) for e in events])
        return outcome.used_fallback, [
            s for s in statements if s.endswith("INTO transactions") or s == "ROLLBACK"
        ]

    wh = DuckDBWarehouse(
        duckdb_path, connect=lambda path: FaultyConnection(duckdb.connect(path), record)
    )
    wh.create_tables()
    later = T0 + dt.timedelta(days=30)
    assert batch(event("e1")) == (False, ["MERGE INTO transactions"])
    assert batch(event("e2", at=T0 + dt.timedelta(hours=20))) == (
        False,
        ["MERGE INTO transactions"],
    )
    assert batch(event("e3", status="POSTED", at=later)) == (
        False,
        ["MERGE INTO transactions", "ROLLBACK", "INSERT INTO transactions"],
    )
    assert batch(event("e4", transaction_id="txn-2", at=later)) == (
        False,
        ["MERGE INTO transactions"],
    )
    rows = {
        r["transaction_id"]: (r["event_id"], r["status"]) for r in wh.fetch_rows("transactions")
    }
    assert rows == {"txn-1": ("e3", "POSTED"), "txn-2": ("e4", "PENDING")}
    assert_consistent(wh)
    wh.close()


def test_create_tables_is_repeatable(wh: Warehouse) -> None:
    merge(wh, [event("e1")])
    wh.create_tables()
    assert len(ledger(wh)) == 1

"""The ledger's rules, shared by every warehouse: which version is written, which is refused.

A warehouse stages a batch, inserts the chosen versions whose event_id is absent, and hands what
its ledger then holds for the batch's ids, read back after the insert, to :func:`judge`. BigQuery
applies them in Python, per batch.
DuckDB, whose merge cycles are set-based, writes the same rules in SQL (pipeline/sinks/duckdb/);
the warehouse contract tests (tests/sinks/test_warehouse_contract.py) run on both, so the two
cannot drift apart unnoticed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pipeline.dead_letters import DeadLetter, conflict_dead_letter
from pipeline.events import Event, LedgerCandidate, version_order


@dataclass(frozen=True)
class PreparedBatch:
    """A batch ready to stage: one row per distinct version, one primary per event_id."""

    candidates: tuple[LedgerCandidate, ...]
    copies_removed: int  # identical versions that reached the sink more than once


def prepare(batch: Iterable[LedgerCandidate]) -> PreparedBatch:
    """Drop repeated versions and keep a single primary per event_id.

    Two rows of the source must never match one target row in a MERGE (BigQuery refuses it,
    DuckDB silently applies both), so the staged batch holds each version once, and of several
    primaries for one event_id (possible when dedup state expired between them) only the earliest
    stays primary.
    """
    # Grouped by event_id first: nearly every id appears once in a batch, and a string's hash
    # is cheap where a whole event's (a Decimal, a datetime, five strings) is not; versions are
    # compared only within an id, never hashed whole (measured: BENCHMARKS.md, section 1, "Why
    # 3x DeduplicatePerKey is not met").
    versions: dict[str, list[LedgerCandidate]] = {}
    total = 0
    for candidate in batch:
        total += 1
        same_id = versions.setdefault(candidate.event.event_id, [])
        for index, known in enumerate(same_id):
            if known.event == candidate.event:
                if candidate.primary and not known.primary:
                    same_id[index] = candidate
                break
        else:
            same_id.append(candidate)
    prepared: list[LedgerCandidate] = []
    for same_id in versions.values():
        if len(same_id) == 1:
            prepared.append(same_id[0])  # its verdict stands
            continue
        primaries = [candidate.event for candidate in same_id if candidate.primary]
        first = min(primaries, key=version_order) if primaries else None
        for candidate in same_id:
            primary = candidate.event is first
            prepared.append(
                candidate if candidate.primary == primary else candidate._replace(primary=primary)
            )
    return PreparedBatch(tuple(prepared), total - len(prepared))


@dataclass(frozen=True)
class Judgement:
    landed: int  # versions now in the ledger (inserted by this batch or already there)
    conflicts: tuple[DeadLetter, ...]


def judge(candidates: Sequence[LedgerCandidate], ledger: Mapping[str, Event]) -> Judgement:
    """Compare each staged version with the version the ledger holds after the insert.

    Equal: it landed (now or earlier). Different: the ledger's version stands and this one
    becomes a conflict dead letter. Absent: another version of the id was chosen in this run and
    has not been committed yet; this one is a conflict all the same.
    """
    landed = 0
    conflicts: list[DeadLetter] = []
    for candidate in candidates:
        held = ledger.get(candidate.event.event_id)
        if held == candidate.event:
            landed += 1
        else:
            conflicts.append(conflict_dead_letter(candidate.event, held))
    return Judgement(landed, tuple(conflicts))


def unique_dead_letters(rows: Iterable[DeadLetter]) -> list[DeadLetter]:
    """First row per dead_letter_id, so the MERGE source never repeats a key."""
    seen: dict[str, DeadLetter] = {}
    for row in rows:
        seen.setdefault(row.dead_letter_id, row)
    return list(seen.values())

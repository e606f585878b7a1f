"""The hostile-input corpus (tests/corpus/hostile.py) through the whole pipeline, on each warehouse:
every case ends as an exact ledger row or as a dead letter naming its field, nothing crashes the
run, and every line read is accounted for."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from pipeline import metrics
from pipeline.contract import FIELD
from pipeline.dead_letters import STAGE_PARSE, dead_letter_id
from pipeline.events import ContractViolation, parse_event
from pipeline.field_kinds import Money, Timestamp
from pipeline.sinks.warehouse import WarehouseFactory
from tests.corpus.hostile import BASE, Case, cases
from tests.helpers import read_tables, run_lines, utc

CASES = cases()


def test_the_corpus_is_large_and_covers_both_outcomes() -> None:
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)
    assert {c.lands for c in CASES} == {True, False}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name[:40])
def test_each_case_meets_the_contract_at_parse(case: Case) -> None:
    if case.lands:
        assert parse_event(case.payload).event_id == case.row["event_id"]  # type: ignore[index]
    else:
        with pytest.raises(ContractViolation) as caught:
            parse_event(case.payload)
        assert caught.value.field == case.field


def _expected_row(case: Case) -> dict[str, object]:
    assert case.row is not None
    expected: dict[str, object] = {**BASE, **case.row}
    for name, value in expected.items():  # JSON values as the contract normalises them
        kind = FIELD[name].kind
        if value is not None and isinstance(kind, Money | Timestamp):
            expected[name] = Decimal(str(value)) if isinstance(kind, Money) else utc(str(value))
    return expected


def test_every_case_ends_exactly_as_promised_through_the_pipeline(
    warehouse: WarehouseFactory,
) -> None:
    payloads = [case.payload for case in CASES]
    summary = run_lines(payloads, warehouse)

    tables = read_tables(warehouse)
    ledger = {row["event_id"]: row for row in tables["transaction_events"]}
    dead_letters = {row["dead_letter_id"]: row for row in tables["dead_letters"]}
    for case in CASES:
        if case.lands:
            expected = _expected_row(case)
            row = ledger.get(str(expected["event_id"]))
            assert row is not None, f"{case.name} did not land"
            for name, value in expected.items():
                got = row[name]
                if isinstance(got, dt.datetime):
                    got = got.astimezone(dt.UTC)
                assert got == value, (case.name, name, got, value)
        else:
            row = dead_letters.get(dead_letter_id(STAGE_PARSE, case.payload))
            assert row is not None, f"{case.name} is not a dead letter"
            assert row["error"].startswith(f"{case.field}: "), (case.name, row["error"])
    assert len(ledger) == sum(case.lands for case in CASES)
    # Every line read is accepted, an identical duplicate or a dead letter; nothing else.
    assert summary.get(metrics.LINES_READ) == len(CASES)
    assert summary.get(metrics.LINES_READ) == (
        summary.get(metrics.LEDGER_INSERTED) + summary.identical_duplicates + summary.dead_letters
    )

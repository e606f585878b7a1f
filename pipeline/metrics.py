"""Names of the Beam counters every outcome increments, and the run summary read from them.

One namespace, one constant per counter: the DoFns increment them, the summary and the tests read
them, and Dataflow's monitoring shows them under the same names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.metrics.metricbase import Counter
from apache_beam.runners.runner import PipelineResult

from pipeline import progress
from pipeline.sinks.warehouse import MergeOutcome

NAMESPACE = "effectively_once"

LINES_READ = "lines_read"
EVENTS_PARSED = "events_parsed"
DEAD_LETTERS_PARSE = "dead_letters_parse"
PARSE_INTERNAL_ERRORS = "parse_internal_errors"
DUPLICATES_PIPELINE = "identical_duplicates_pipeline"
CONFLICTING_VERSIONS = "conflicting_versions_seen"
DEDUP_STATE_CREATED = "dedup_state_created"
DEDUP_STATE_EXPIRED = "dedup_state_expired"
LEDGER_INSERTED = "ledger_rows_inserted"
DUPLICATES_WAREHOUSE = "identical_duplicates_warehouse"
CONFLICTS = "conflicts_dead_lettered"
TRANSACTIONS_UPSERTED = "transactions_rows_upserted"
WINDOW_TOTALS_UPSERTED = "window_totals_rows_upserted"
DEAD_LETTERS_INSERTED = "dead_letters_rows_inserted"
ROWS_STAGED = "ledger_rows_staged"
MERGE_CYCLES = "merge_cycles"
MERGE_RETRIES = "merge_retries"
MERGE_FALLBACKS = "merge_unrestricted_fallbacks"
# The cost meter of merge cycles (docs/BIGQUERY.md, "What a cycle costs"): what BigQuery reports
# for each cycle's jobs, summed over cycles. The duration and lag are distributions per cycle:
# how long a cycle took, and the age of the oldest row it committed (arrival to commit).
MERGE_CYCLE_BYTES_BILLED = "merge_cycle_bytes_billed"
MERGE_CYCLE_SLOT_MS = "merge_cycle_slot_ms"
MERGE_CYCLE_SECONDS = "merge_cycle_seconds"
MERGE_CYCLE_LAG_SECONDS = "merge_cycle_lag_seconds"


def outcome_counts(outcome: MergeOutcome) -> dict[str, int]:
    """The counters a merged batch or cycle increments."""
    return {
        LEDGER_INSERTED: outcome.inserted,
        DUPLICATES_WAREHOUSE: outcome.duplicates,
        CONFLICTS: outcome.conflicts,
        TRANSACTIONS_UPSERTED: outcome.transactions_upserted,
        WINDOW_TOTALS_UPSERTED: outcome.windows_upserted,
        DEAD_LETTERS_INSERTED: outcome.dead_letters_inserted,
        MERGE_FALLBACKS: int(outcome.used_fallback),
    }


def counter(name: str) -> Counter:
    return Metrics.counter(NAMESPACE, name)


class OutcomeCounters:
    """The counters one DoFn increments: Beam counters, mirrored into the run's in-process tally
    when the run has one (the streaming DirectRunner's own counters are unreliable; see
    pipeline/progress.py)."""

    def __init__(self) -> None:
        self._counters: dict[str, Counter] = {}

    def inc(self, name: str, value: int = 1) -> None:
        if not value:
            return
        if name not in self._counters:
            self._counters[name] = counter(name)
        self._counters[name].inc(value)
        run = progress.observed()
        if run is not None:
            run.count(name, value)

    def count_outcome(self, outcome: MergeOutcome) -> None:
        """A merge's outcome, counter by counter (``outcome_counts``)."""
        for name, value in outcome_counts(outcome).items():
            self.inc(name, value)


def read_counters(result: PipelineResult) -> dict[str, int]:
    """Committed counter values where the runner reports them, attempted ones otherwise."""
    values: dict[str, int] = {}
    for metric in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
        value = metric.committed if metric.committed is not None else metric.attempted
        values[metric.key.metric.name] = values.get(metric.key.metric.name, 0) + (value or 0)
    return values


@dataclass(frozen=True)
class RunSummary:
    counters: Mapping[str, int]

    def get(self, name: str) -> int:
        return self.counters.get(name, 0)

    @property
    def dead_letters(self) -> int:
        return self.get(DEAD_LETTERS_PARSE) + self.get(CONFLICTS)

    @property
    def identical_duplicates(self) -> int:
        return self.get(DUPLICATES_PIPELINE) + self.get(DUPLICATES_WAREHOUSE)

    def _writes(self) -> tuple[str, str]:
        """How the sink wrote: staged appends and merge cycles (pipeline/sinks/upsert.py)."""
        retries = f"{self.get(MERGE_RETRIES)}, {self.get(MERGE_FALLBACKS)}"
        return (
            "rows staged, merge cycles (retries, unrestricted fallbacks)",
            f"{self.get(ROWS_STAGED)}, {self.get(MERGE_CYCLES)} ({retries})",
        )

    def render(self) -> str:
        rows = [
            ("lines read", self.get(LINES_READ)),
            ("accepted (new ledger rows)", self.get(LEDGER_INSERTED)),
            (
                "identical duplicates dropped",
                f"{self.identical_duplicates} (pipeline {self.get(DUPLICATES_PIPELINE)},"
                f" warehouse {self.get(DUPLICATES_WAREHOUSE)})",
            ),
            ("conflicting versions", self.get(CONFLICTS)),
            (
                "dead letters",
                f"{self.dead_letters} (parse {self.get(DEAD_LETTERS_PARSE)},"
                f" conflict {self.get(CONFLICTS)})",
            ),
            ("rows merged: transaction_events", self.get(LEDGER_INSERTED)),
            ("rows merged: transactions", self.get(TRANSACTIONS_UPSERTED)),
            ("rows merged: account_window_totals", self.get(WINDOW_TOTALS_UPSERTED)),
            ("rows merged: dead_letters", self.get(DEAD_LETTERS_INSERTED)),
            self._writes(),
        ]
        width = max(len(label) for label, _ in rows)
        return "\n".join(
            ["Run summary", *(f"  {label:<{width}}  {value}" for label, value in rows)]
        )

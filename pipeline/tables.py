"""The four output tables (and the checkpoints table), defined once; the event's columns are
the contract's fields (pipeline/contract.py).

Every warehouse derives its DDL from these definitions: DuckDB's CREATE TABLE, BigQuery's, and
the BigQuery JSON schema files Terraform reads (``terraform/schemas/``, written by
``python -m pipeline.tools.schemas``; a test fails when they drift). Types are logical, named
after BigQuery's: money is NUMERIC (DECIMAL(38, 9)), times are TIMESTAMP in UTC.

BigQuery layout: every table is partitioned by day of its ``time_column``, the column each MERGE
restricts its target on, so a MERGE reads only the partitions of its batch. Clustering is chosen
per table for the lookups the MERGEs and their checks make; see each table.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.contract import FIELD, FIELDS, TRANSACTION_FIELDS, Field

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def validate_identifier(name: str) -> str:
    """Table and column names go into SQL text, so only plain identifiers are accepted."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid identifier (letters, digits, underscore)")
    return name


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # STRING | NUMERIC | TIMESTAMP | INT64 | BOOL | JSON
    required: bool
    description: str

    def __post_init__(self) -> None:
        validate_identifier(self.name)


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]  # one row per key
    time_column: str  # the column MERGEs restrict on and BigQuery partitions by (day)
    description: str
    clustering: tuple[str, ...] = ()  # BigQuery clustering columns, most selective lookups first
    partitioned: bool = True

    def __post_init__(self) -> None:
        validate_identifier(self.name)
        names = self.column_names
        missing = [c for c in (*self.key, self.time_column, *self.clustering) if c not in names]
        if missing:
            raise ValueError(f"{self.name}: unknown columns {missing}")

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)


def _s(name: str, description: str, required: bool = True) -> Column:
    return Column(name, "STRING", required, description)


def _ts(name: str, description: str, required: bool = True) -> Column:
    return Column(name, "TIMESTAMP", required, description)


def contract_column(field: Field) -> Column:
    """A contract field's column (pipeline/contract.py): nullable when the field is optional."""
    return Column(field.name, field.kind.column_type, field.required, field.kind.description)


# The contract's fields as columns, in its order: the ledger's, and every staging table's.
CONTRACT_COLUMNS = tuple(contract_column(f) for f in FIELDS)

TRANSACTION_EVENTS = Table(
    name="transaction_events",
    columns=(
        *CONTRACT_COLUMNS,
        _ts("ingested_at", "When the row was first merged, UTC."),
    ),
    key=("event_id",),
    time_column="event_time",
    description="The ledger: every accepted event exactly once.",
    # event_id first: the check that no version of an event_id exists outside a MERGE's
    # partitions looks ids up across the whole table, and clustering lets it skip most blocks.
    # account_id next: the window recomputation filters the batch's partitions by account.
    clustering=("event_id", "account_id"),
)

TRANSACTIONS = Table(
    name="transactions",
    columns=(
        _s("transaction_id", "One row per transaction."),
        *(contract_column(FIELD[name]) for name in TRANSACTION_FIELDS),
        _s(
            "event_id",
            "The event whose fields the row holds: latest event_time, ties to the"
            " greater event_id.",
        ),
        _ts("updated_at", "When the row last changed, UTC."),
    ),
    key=("transaction_id",),
    time_column="event_time",
    description="Current state of each transaction, from its latest event.",
    # The MERGE and its uniqueness check look rows up by transaction_id.
    clustering=("transaction_id", "account_id"),
)

# What a ``transactions`` row copies from its newest ledger row, besides its key: the contract's
# fields marked for it, and the event_id. Both warehouses' SQL and reconcile use this one list.
TRANSACTION_COPIED = tuple(
    name for name in TRANSACTIONS.column_names if name not in ("transaction_id", "updated_at")
)

ACCOUNT_WINDOW_TOTALS = Table(
    name="account_window_totals",
    columns=(
        _s("account_id", "Account."),
        _s("currency", "Currency of the total."),
        _ts("window_start", "Start of the fixed event-time window (inclusive), UTC."),
        _ts("window_end", "End of the window (exclusive), UTC."),
        Column("event_count", "INT64", True, "Events of the ledger in the window."),
        Column(
            "total_amount",
            "NUMERIC",
            False,
            "Exact sum of their amounts; NULL when it does not fit NUMERIC(38, 9).",
        ),
        Column(
            "total_overflow",
            "BOOL",
            True,
            "True when the exact sum does not fit NUMERIC(38, 9) (total_amount is then NULL).",
        ),
        _ts("updated_at", "When the row last changed, UTC."),
    ),
    key=("account_id", "currency", "window_start"),
    time_column="window_start",
    description="Exact count and sum per account, currency and fixed event-time window,"
    " recomputed from the ledger.",
    clustering=("account_id", "currency"),  # the MERGE key within a window_start partition
)

DEAD_LETTERS = Table(
    name="dead_letters",
    columns=(
        _s("dead_letter_id", "Hash of stage and payload: a replay adds no row."),
        _s("stage", "Step that refused the input: parse or dedup."),
        _s("error", "Why; names the offending field, or says conflict."),
        _s("payload", "The raw input (base64 when it was not UTF-8), or the conflicting version."),
        _s("payload_encoding", "utf-8 or base64."),
        _s("event_id", "The event_id when it could be read.", required=False),
        _s("message_id", "Pub/Sub message id, for streaming input.", required=False),
        Column("attributes", "JSON", False, "Pub/Sub message attributes, for streaming input."),
        _ts("arrival_time", "When the input was first refused, UTC."),
    ),
    key=("dead_letter_id",),
    time_column="arrival_time",
    description="Input the pipeline refused, with the reason; nothing is dropped silently.",
    clustering=("stage", "dead_letter_id"),  # operators filter by stage; the MERGE by id
)

DATA_TABLES = (TRANSACTION_EVENTS, TRANSACTIONS, ACCOUNT_WINDOW_TOTALS, DEAD_LETTERS)

# Operational: where a streaming run may resume reading without losing anything (see
# pipeline/progress.py). Not part of the data contract; reconcile ignores it.
INGEST_CHECKPOINTS = Table(
    name="ingest_checkpoints",
    columns=(
        _s("source", "The input, e.g. projects/P/subscriptions/S."),
        _ts("replay_from", "Everything published before this instant is committed, UTC."),
        _ts("updated_at", "When the checkpoint was written, UTC."),
    ),
    key=("source",),
    time_column="updated_at",
    description="Replay checkpoints of streaming inputs.",
    partitioned=False,  # one row per input
)

ALL_TABLES = (*DATA_TABLES, INGEST_CHECKPOINTS)


# BigQuery's own names, as its API returns them (Terraform then shows no spurious diff).
BIGQUERY_TYPES = {
    "STRING": "STRING",
    "NUMERIC": "NUMERIC",
    "TIMESTAMP": "TIMESTAMP",
    "INT64": "INTEGER",
    "BOOL": "BOOLEAN",
    "JSON": "JSON",
}


def bigquery_field(column: Column) -> dict[str, str]:
    """A column in BigQuery's JSON schema format."""
    return {
        "name": column.name,
        "type": BIGQUERY_TYPES[column.type],
        "mode": "REQUIRED" if column.required else "NULLABLE",
        "description": column.description,
    }


def bigquery_schema(table: Table) -> list[dict[str, str]]:
    """The table's columns in BigQuery's JSON schema format."""
    return [bigquery_field(column) for column in table.columns]

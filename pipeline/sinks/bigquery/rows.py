"""Rows and values as BigQuery takes and gives them: load-job JSON (exact: NUMERIC as decimal
text, TIMESTAMP as RFC 3339, nothing through float), query parameters, and rows read back as
DuckDB gives them, so both warehouses compare equal."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from google.cloud import bigquery

from pipeline.dead_letters import DeadLetter
from pipeline.events import CONTRACT_FIELDS, Event, format_amount, format_timestamp
from pipeline.tables import Table


def json_row(values: dict[str, Any]) -> dict[str, Any]:
    """Load-job JSON: NUMERIC as plain-notation strings and TIMESTAMP as RFC 3339, so nothing
    passes through float."""
    row: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Decimal):
            row[key] = format_amount(value)
        elif isinstance(value, dt.datetime):
            row[key] = format_timestamp(value)
        else:
            row[key] = value
    return row


def dead_letter_row(row: DeadLetter) -> dict[str, Any]:
    values = row._asdict()
    if values["attributes"] is not None:
        values["attributes"] = json.loads(values["attributes"])
    return json_row(values)


def event_of(row: dict[str, Any], prefix: str = "") -> Event:
    return Event(*(row[prefix + name] for name in CONTRACT_FIELDS))


def normalised(spec: Table, row: dict[str, Any]) -> dict[str, Any]:
    """Rows as DuckDB returns them: JSON columns as text, so both warehouses compare equal."""
    for column in spec.columns:
        if column.type == "JSON" and row.get(column.name) is not None:
            row[column.name] = json.dumps(row[column.name], sort_keys=True)
    return row


def scalar(name: str | None, kind: str, value: Any) -> bigquery.ScalarQueryParameter:
    return bigquery.ScalarQueryParameter(name, kind, value)


def timestamp(name: str, value: dt.datetime) -> bigquery.ScalarQueryParameter:
    return bigquery.ScalarQueryParameter(name, "TIMESTAMP", value)


def array(name: str, kind: str, values: Sequence[Any]) -> bigquery.ArrayQueryParameter:
    return bigquery.ArrayQueryParameter(name, kind, list(values))

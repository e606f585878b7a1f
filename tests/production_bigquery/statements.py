"""What a query job's SQL touches, read with sqlglot's BigQuery dialect: the tables it reads, the
table it changes, whether it is mutating DML (UPDATE, DELETE, MERGE: queued per table), whether it
may update or delete rows (only those conflict with each other), and which partitions its target
restriction allows.

https://cloud.google.com/bigquery/docs/data-manipulation-language#concurrent_jobs: "Mutating DML
statements that run concurrently on a table cause DML statement conflicts when the statements try
to mutate the same partition"; "A MERGE statement ... doesn't conflict ... as long as the statement
only inserts rows". Whether a MERGE's UPDATE clause fires is known only once it ran, so a MERGE
with any WHEN MATCHED clause counts as updating: stricter than BigQuery, never looser.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlglot
from sqlglot import expressions as exp

TableId = tuple[str, str, str]  # project, dataset, table


@dataclass(frozen=True)
class Statement:
    kind: str  # SELECT, MERGE, UPDATE, DELETE, INSERT, CREATE, ...
    reads: frozenset[TableId]
    target: TableId | None  # the table a DML or DDL statement changes
    updates_rows: bool  # may update or delete existing rows (a conflict-prone mutation)
    # Dates of the target's partitions the statement may change (inclusive); None: any.
    partitions: tuple[dt.date, dt.date] | None
    # A script's statements that change a table (their kind and target), each checked for the
    # right its kind needs; a script itself has no ``target`` and is not queued as one DML.
    script_writes: tuple[tuple[str, TableId], ...] = ()

    @property
    def mutating_dml(self) -> bool:
        return self.kind in {"MERGE", "UPDATE", "DELETE", "TRUNCATETABLE"}


def analyse(
    sql: str,
    project: str,
    default_dataset: str | None,
    parameters: Sequence[Mapping[str, Any]],
    partition_column: Any = None,
) -> Statement:
    """``partition_column(table) -> column name or None`` gives a target's partitioning field.
    A script (several statements) reads what its statements read and writes what they write;
    its temporary tables (no dataset) are neither."""
    trees = [tree for tree in sqlglot.parse(sql, read="bigquery") if tree is not None]
    if len(trees) > 1:
        parts = [_analyse(tree, project, default_dataset, parameters, None) for tree in trees]
        writes = tuple((part.kind, part.target) for part in parts if part.target and part.target[1])
        reads = frozenset(table for part in parts for table in part.reads if table[1])
        return Statement("SCRIPT", reads, None, False, None, writes)
    return _analyse(trees[0], project, default_dataset, parameters, partition_column)


def _analyse(
    tree: exp.Expression,
    project: str,
    default_dataset: str | None,
    parameters: Sequence[Mapping[str, Any]],
    partition_column: Any,
) -> Statement:
    ctes = {cte.alias for cte in tree.find_all(exp.CTE)}
    tables = [t for t in tree.find_all(exp.Table) if t.name and (t.db or t.name not in ctes)]
    target_node = _target(tree)
    target = _table_id(target_node, project, default_dataset) if target_node else None
    reads = frozenset(
        _table_id(t, project, default_dataset)
        for t in tables
        if t is not target_node and (t.db or default_dataset)
    )
    kind = type(tree).__name__.upper()
    updates_rows = isinstance(tree, exp.Update | exp.Delete | exp.TruncateTable) or (
        isinstance(tree, exp.Merge) and any(_matched(when) for when in _whens(tree))
    )
    partitions = None
    if target is not None and target_node is not None and partition_column is not None:
        column = partition_column(target)
        if column:
            partitions = _restriction(tree, target_node, column, parameters)
    return Statement(kind, reads, target, updates_rows, partitions)


def _target(tree: exp.Expression) -> exp.Table | None:
    if isinstance(tree, exp.Drop | exp.TruncateTable):  # their table is not in ``this``
        return tree.find(exp.Table)
    if not isinstance(
        tree, exp.Merge | exp.Update | exp.Insert | exp.Create | exp.Delete | exp.Alter
    ):
        return None
    node = tree.this
    if isinstance(node, exp.Schema):  # INSERT INTO t (a, b) / CREATE TABLE t (...)
        node = node.this
    return node if isinstance(node, exp.Table) else None


def _table_id(table: exp.Table, project: str, default_dataset: str | None) -> TableId:
    return (table.catalog or project, table.db or (default_dataset or ""), table.name)


def _whens(merge: exp.Merge) -> list[exp.When]:
    whens = merge.args.get("whens")
    return list(whens.expressions) if whens is not None else []


def _matched(when: exp.When) -> bool:
    return bool(when.args.get("matched"))


def _restriction(
    tree: exp.Expression,
    target: exp.Table,
    column: str,
    parameters: Sequence[Mapping[str, Any]],
) -> tuple[dt.date, dt.date] | None:
    """The dates of ``alias.column BETWEEN lo AND hi`` in the MERGE's ON or the WHERE."""
    condition = tree.args.get("on") if isinstance(tree, exp.Merge) else tree.args.get("where")
    if isinstance(condition, exp.Where):
        condition = condition.this
    if condition is None:
        return None
    alias = target.alias_or_name
    values = {p.get("name"): p.get("parameterValue", {}).get("value") for p in parameters}
    # Only a restriction every row must meet: a conjunct of the condition, not a branch of an OR.
    conjuncts = condition.flatten() if isinstance(condition, exp.And) else [condition]
    for between in (c for c in conjuncts if isinstance(c, exp.Between)):
        subject = between.this
        if not (isinstance(subject, exp.Column) and subject.name == column):
            continue
        if subject.table and subject.table != alias:
            continue
        low, high = (_parameter_date(between.args[k], values) for k in ("low", "high"))
        if low is not None and high is not None:
            return low, high
    return None


def _parameter_date(node: exp.Expression, values: Mapping[str, Any]) -> dt.date | None:
    """The date of a bound: a query parameter, or a literal (``TIMESTAMP '2026-01-01'``)."""
    if isinstance(node, exp.Cast):
        node = node.this
    if isinstance(node, exp.Parameter | exp.Placeholder):
        text = values.get(node.name)
    elif isinstance(node, exp.Literal) and node.is_string:
        text = node.this
    else:
        return None
    if not isinstance(text, str):
        return None
    return dt.datetime.fromisoformat(text.replace(" ", "T").replace("Z", "+00:00")).date()

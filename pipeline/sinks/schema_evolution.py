"""Additive schema evolution: what an existing table needs to hold this version's columns, or why
it cannot without a migration. Both warehouses apply the same rules at start-up
(``create_tables``), with the rights the worker already has.

Evolves by itself: a column the contract adds as optional (added, nullable: rows stored before
have NULL, as events sent before carry no value), and a field made optional (its column's NOT NULL
is dropped). Everything else would change or lose what is stored, so the pipeline refuses to
start and says what to do: a new required field (stored rows have no value for it), a field
the contract no longer declares (its column would be left behind, and writes of every later row
would fail on a required one), a changed kind, and a field made required. docs/CONTRACT.md,
"Migrations", shows the steps.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from pipeline.sinks.warehouse import WarehouseSetupError
from pipeline.tables import Column

_HOW = "docs/CONTRACT.md, Migrations"


class MigrationNeeded(WarehouseSetupError):
    """The warehouse's tables differ from the contract in a way only a migration can mend."""


@dataclass(frozen=True)
class StoredColumn:
    """A column as the warehouse describes it: its type in the warehouse's own spelling."""

    type: str
    required: bool


@dataclass(frozen=True)
class Evolution:
    """What to do to one table: nothing when both are empty."""

    add: tuple[Column, ...] = ()  # nullable columns to add
    relax: tuple[Column, ...] = ()  # columns whose NOT NULL to drop

    def __bool__(self) -> bool:
        return bool(self.add or self.relax)


def evolution(
    table: str,
    declared: Sequence[Column],
    stored: Mapping[str, StoredColumn],
    type_of: Callable[[Column], str],
    own_columns: Collection[str] = (),
) -> Evolution:
    """The changes that make ``stored`` (an existing table's columns) hold ``declared``, or
    :class:`MigrationNeeded` listing every difference that needs one. ``type_of`` spells a
    declared column's type as the warehouse does; ``own_columns`` are columns the warehouse adds
    by itself (not declared, not a removed field)."""
    problems: list[str] = []
    add: list[Column] = []
    relax: list[Column] = []
    names = {column.name for column in declared}
    for column in declared:
        found = stored.get(column.name)
        if found is None:
            if column.required:
                problems.append(
                    f"{table}.{column.name} is a new required field, and the rows stored have"
                    " no value for it: declare it optional (`T | None = None`), which is added"
                    " by itself, or add and fill the column before starting this version"
                )
            else:
                add.append(column)
        elif found.type.upper() != type_of(column).upper():
            problems.append(
                f"{table}.{column.name} is {found.type} in the warehouse and {type_of(column)}"
                " in this version: a changed kind needs a new field (another name) beside the"
                " old one"
            )
        elif found.required and not column.required:
            relax.append(column)
        elif column.required and not found.required:
            problems.append(
                f"{table}.{column.name} is nullable in the warehouse and required in this"
                " version: rows stored may have no value: keep the field optional, or fill the"
                " column and make it NOT NULL before starting"
            )
    for name in stored:
        if name not in names and name not in own_columns:
            problems.append(
                f"{table}.{name} is a column this version does not declare (a removed field?):"
                " declare it again as optional (new rows leave it NULL), or drop the column"
                " once nothing reads it"
            )
    if problems:
        raise MigrationNeeded(
            "the warehouse's tables need a migration before this version can run ("
            + _HOW
            + "):\n  "
            + "\n  ".join(problems)
        )
    return Evolution(tuple(add), tuple(relax))

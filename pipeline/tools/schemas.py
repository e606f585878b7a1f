"""Write the BigQuery JSON schema files of the tables, generated from pipeline/tables.py and the
event contract (pipeline/contract.py): the command to run after editing the contract.

    python -m pipeline.tools.schemas [--out terraform/schemas]     (make contract)

Terraform reads these files to create the tables, so the pipeline and the infrastructure share
one schema. tests/test_schemas.py fails when the committed files drift from the package.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from pipeline.tables import ALL_TABLES, bigquery_schema

DEFAULT_OUT = Path(__file__).resolve().parents[2] / "terraform" / "schemas"


def render(table_name: str) -> str:
    table = next(t for t in ALL_TABLES if t.name == table_name)
    return json.dumps(bigquery_schema(table), indent=2) + "\n"


def write(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for table in ALL_TABLES:
        path = out / f"{table.name}.json"
        path.write_text(render(table.name), encoding="utf-8")
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    for path in write(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The project's Terraform read as data (python-hcl2), offline: for the tests that compare it with
the package, and for the production-rules BigQuery seam, which grants the worker exactly the roles
``terraform/iam.tf`` gives it."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

try:
    import hcl2
    from hcl2.utils import SerializationOptions
except ImportError as error:  # pragma: no cover - a clear message instead of a bare ImportError
    raise ImportError(
        "python-hcl2 is a test dependency (reading terraform/): pip install python-hcl2"
    ) from error

ROOT = Path(__file__).resolve().parents[1]
TERRAFORM = ROOT / "terraform"

_OPTIONS = SerializationOptions(
    strip_string_quotes=True, explicit_blocks=False, with_comments=False, preserve_heredocs=False
)


@cache
def parse(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as handle:
        return dict(hcl2.load(handle, serialization_options=_OPTIONS))


def blocks(folder: Path, kind: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.tf")):
        found.extend(parse(path).get(kind, []))
    return found


def named(folder: Path, kind: str) -> dict[str, dict[str, Any]]:
    """variable / output / module blocks of a folder, by name."""
    return {name: body for block in blocks(folder, kind) for name, body in block.items()}


def resources(folder: Path, resource_type: str) -> dict[str, dict[str, Any]]:
    return {
        name: body
        for block in blocks(folder, "resource")
        for kind, found in block.items()
        if kind == resource_type
        for name, body in found.items()
    }


def terraform_locals(folder: Path) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for block in blocks(folder, "locals"):
        merged.update(block)
    return merged


def unescape(expression: str) -> str:
    """python-hcl2 keeps the backslashes of quotes nested in expressions and heredocs."""
    return expression.replace('\\"', '"')

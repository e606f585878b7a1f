"""Step labels are API: Dataflow's ``--update`` maps a running job's state to the new graph by
label, so renaming a step (above all the stateful dedup and the sink) breaks updates. These lists
pin them; change them only with a migration note (a ``--transform_name_mapping``).

History: before the first release, ``DedupByEventId/GlobalWindow`` (now applied only to input
that is not in the global window) and ``AssignWindows/{ToEventTime, FixedEventTimeWindows,
BackToGlobalWindow}`` (now one step; the windowed branch is built only on request) were removed.
Both were stateless, so no state was mapped by them."""

from __future__ import annotations

import functools
from pathlib import Path

import apache_beam as beam
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor

from pipeline.run import build_pipeline
from pipeline.sinks.bigquery import BigQueryWarehouse
from pipeline.sinks.warehouse import WarehouseFactory
from tests.helpers import pipeline_options
from tests.warehouses import duckdb_factory

# Both warehouses are written by staged appends and merge cycles.
BOUNDED = [
    "ReadEvents",
    "ReadEvents/ReadLines",
    "ParseEvents",
    "ParseEvents/ValidateContract",
    "DedupByEventId",
    "DedupByEventId/KeyByEventId",
    "DedupByEventId/GroupVersionsByEventId",
    "DedupByEventId/ChooseVersion",
    "AssignWindows",
    "AssignWindows/StampWindowBounds",
    "MergeLedger",
    "MergeLedger/BatchForStaging",
    "MergeLedger/AppendToStaging",
    "MergeLedger/CountStaged",
    "MergeLedger/MergeCycle",
    "MergeDeadLetters",
    "MergeDeadLetters/BatchByArrivalDay",
    "MergeDeadLetters/MergeBatches",
]

# Streaming replaces the GroupByKey dedup by the stateful one (its state is keyed by this label).
STREAMING_STATEFUL = ["DedupByEventId/FirstVersionPerEventId"]
BOUNDED_ONLY = ("DedupByEventId/GroupVersionsByEventId", "DedupByEventId/ChooseVersion")


class _Labels(PipelineVisitor):
    def __init__(self) -> None:
        self.labels: list[str] = []

    def enter_composite_transform(self, node: AppliedPTransform) -> None:
        self.visit_transform(node)

    def visit_transform(self, node: AppliedPTransform) -> None:
        if node.full_label:
            self.labels.append(node.full_label)


def _factory(folder: Path, sink: str) -> WarehouseFactory:
    """Building the graph connects to nothing, BigQuery included."""
    if sink == "bigquery":
        return functools.partial(BigQueryWarehouse, "local-project", "events")
    return duckdb_factory(str(folder / "w.duckdb"))


def _labels(
    folder: Path, streaming: bool = False, depth: int = 1, sink: str = "duckdb"
) -> list[str]:
    (folder / "a.jsonl").write_text("")
    source = (
        {"input_subscription": "projects/local-project/subscriptions/events", "streaming": True}
        if streaming
        else {"input_files": f"{folder}/*.jsonl"}
    )
    opts = pipeline_options(**source)
    pipeline = beam.Pipeline(options=opts)
    build_pipeline(pipeline, opts, warehouse=_factory(folder, sink))
    visitor = _Labels()
    pipeline.visit(visitor)
    return [
        label
        for label in visitor.labels
        if label.count("/") <= depth and not label.endswith("]")  # "]": Beam-generated labels
    ]


def test_bounded_pipeline_labels_are_pinned(tmp_path: Path) -> None:
    for sink in ("duckdb", "bigquery"):
        assert _labels(tmp_path, sink=sink) == BOUNDED, sink


def _streaming(bounded: list[str]) -> list[str]:
    expected = [label for label in bounded if label not in ("ReadEvents/ReadLines", *BOUNDED_ONLY)]
    expected[1:1] = ["ReadEvents/ReadMessages", "ReadEvents/NoteArrival"]
    expected.insert(expected.index("DedupByEventId/KeyByEventId") + 1, STREAMING_STATEFUL[0])
    return expected


def test_streaming_pipeline_labels_are_pinned(tmp_path: Path) -> None:
    expected = _streaming(BOUNDED)
    expected.insert(expected.index("MergeLedger/CountStaged"), "MergeLedger/EveryInterval")
    for sink in ("duckdb", "bigquery"):
        assert _labels(tmp_path, streaming=True, sink=sink) == expected, sink
    # The dead letters' batching state in streaming:
    assert "MergeDeadLetters/BatchByArrivalDay/GroupIntoBatches" in _labels(tmp_path, True, 2)

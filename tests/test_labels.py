"""Step labels are API: Dataflow's ``--update`` maps a running job's state to the new graph by
label, so renaming a step (above all the stateful dedup and the sink) breaks updates. These lists
pin them; change them only with a migration note (a ``--transform_name_mapping``).

History: before the first release, ``DedupByEventId/GlobalWindow`` (now applied only to input
that is not in the global window) and ``AssignWindows/{ToEventTime, FixedEventTimeWindows,
BackToGlobalWindow}`` (now one step; the windowed branch is built only on request) were removed.
Both were stateless, so no state was mapped by them."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor

from pipeline.run import build_pipeline
from tests.helpers import pipeline_options
from tests.warehouses import duckdb_factory

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
    "MergeLedger/BatchByEventDay",
    "MergeLedger/MergeBatches",
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


def _labels(folder: Path, streaming: bool = False, depth: int = 1) -> list[str]:
    (folder / "a.jsonl").write_text("")
    source = (
        {"input_subscription": "projects/local-project/subscriptions/events", "streaming": True}
        if streaming
        else {"input_files": f"{folder}/*.jsonl"}
    )
    opts = pipeline_options(**source)
    pipeline = beam.Pipeline(options=opts)
    build_pipeline(pipeline, opts, warehouse=duckdb_factory(str(folder / "w.duckdb")))
    visitor = _Labels()
    pipeline.visit(visitor)
    return [
        label
        for label in visitor.labels
        if label.count("/") <= depth and not label.endswith("]")  # "]": Beam-generated labels
    ]


def test_bounded_pipeline_labels_are_pinned(tmp_path: Path) -> None:
    assert _labels(tmp_path) == BOUNDED


def test_streaming_pipeline_labels_are_pinned(tmp_path: Path) -> None:
    expected = [label for label in BOUNDED if label not in ("ReadEvents/ReadLines", *BOUNDED_ONLY)]
    expected[1:1] = ["ReadEvents/ReadMessages", "ReadEvents/NoteArrival"]
    expected.insert(expected.index("DedupByEventId/KeyByEventId") + 1, STREAMING_STATEFUL[0])
    assert _labels(tmp_path, streaming=True) == expected
    # The sink's batching state in streaming:
    assert "MergeLedger/BatchByEventDay/GroupIntoBatches" in _labels(tmp_path, True, depth=2)

"""Memory of one sink row on a worker: what a bounded run holds per row of a slice.

A bounded run groups each slice of event time (``--batch_slice_seconds``) and sorts its rows in
one worker's memory, so the slice's rows times this size is what that worker holds at once. The
rows are measured as the sink receives them: ledger candidates decoded by their coder (window
bounds shared through the coder's cache, as in a run), then at the peak of the sink's sort
(its sort keys and the sorted list beside the rows), with ``tracemalloc``.

    python -m bench.row_memory FILES_GLOB   # prints a JSON line
"""

from __future__ import annotations

import gc
import glob
import json
import sys
import tracemalloc

from pipeline.events import (
    ContractViolation,
    LedgerCandidate,
    LedgerCandidateCoder,
    parse_event,
)
from pipeline.sinks.upsert import event_order
from pipeline.tools.reconcile import window_of


def run(files: str) -> dict[str, object]:
    coder = LedgerCandidateCoder()
    encoded = []
    for path in sorted(glob.glob(files)):
        with open(path, "rb") as lines:
            for line in lines:
                try:
                    event = parse_event(line.rstrip(b"\r\n"))
                except ContractViolation:
                    continue
                bounds = window_of(event.event_time, 60)
                encoded.append(
                    coder.encode(LedgerCandidate(event, True, *bounds, event.event_time))
                )
    gc.collect()
    tracemalloc.start()
    rows = [coder.decode(value) for value in encoded]
    held, _ = tracemalloc.get_traced_memory()
    ordered = sorted(rows, key=event_order)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(ordered) == len(rows)
    return {
        "rows": len(rows),
        "bytes_per_row": round(held / len(rows)),
        "peak_bytes_per_row_sorting": round(peak / len(rows)),
        "encoded_bytes_per_row": round(sum(map(len, encoded)) / len(encoded)),
    }


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1])))

"""Memory of one sink row on a worker: what the per-batch sink held per row of a slice.

The per-batch sink (removed on 6 December: the ledger is now staged and merged in cycles, with no
sort in a worker) grouped each slice of event time and sorted its rows in one worker's memory;
this measures that, for the record of BENCHMARKS.md section 4 (dead letters are still batched
that way, by arrival time). The
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
    ordered = sorted(rows, key=lambda c: (c.event.event_time, c.event.event_id))
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

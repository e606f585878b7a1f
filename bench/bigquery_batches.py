"""The BigQuery warehouse's batches against BigQuery's production rules with their stated job
latency (tests/production_bigquery/, PRODUCTION_LATENCY): what one worker process of today's
design merges per second, with one DoFn instance and with several at once (the per-process
limiter lets two batches run). Latency off measures the local emulator alone, so the share the
latency adds is visible. A model: see BENCHMARKS.md for its assumptions.

    python -m bench.bigquery_batches ROWS_PER_BATCH BATCHES INSTANCES {production|none}

Prints one JSON line.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import threading
import time
from collections import Counter
from decimal import Decimal

from pipeline.events import Event, LedgerCandidate
from pipeline.tools.reconcile import window_of
from tests.bigquery_emulator import bigquery_emulator
from tests.production_bigquery import NO_LATENCY, PRODUCTION_LATENCY, ProductionBigQuery
from tests.warehouses import fresh_bigquery

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _batch(number: int, rows: int) -> list[LedgerCandidate]:
    day = T0 + dt.timedelta(days=number)
    batch = []
    for i in range(rows):
        at = day + dt.timedelta(seconds=i * 86_400 // rows)
        event = Event(
            f"b{number}-e{i}", f"b{number}-t{i // 2}", f"acct-{i % 500}", Decimal("12.34"),
            "USD", "POSTED", at,
        )  # fmt: skip
        batch.append(LedgerCandidate(event, True, *window_of(at, 60)))
    return batch


def measure(rows: int, batches: int, instances: int, latency_name: str) -> dict[str, object]:
    latency = PRODUCTION_LATENCY if latency_name == "production" else NO_LATENCY
    with bigquery_emulator() as emulator, ProductionBigQuery(emulator.endpoint) as rules:
        factory = fresh_bigquery(rules)
        setup = factory()
        setup.create_tables()
        setup.close()
        rules.scheduler.set_latency(latency)
        work = [_batch(n, rows) for n in range(batches)]
        lock = threading.Lock()

        def worker() -> None:
            warehouse = factory()  # one per DoFn instance, as in the sink
            try:
                while True:
                    with lock:
                        if not work:
                            return
                        batch = work.pop()
                    warehouse.merge_events(batch)
            finally:
                warehouse.close()

        before = len(rules.log)
        started = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(instances)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        calls = Counter(entry.operation for entry in rules.log[before:])
        return {
            "rows_per_batch": rows,
            "batches": batches,
            "instances": instances,
            "latency": latency_name,
            "seconds": round(seconds, 1),
            "seconds_per_batch": round(seconds / batches, 2),
            "rows_per_second": round(rows * batches / seconds),
            "jobs_per_batch": round(calls["jobs.insert"] / batches, 1),
            "api_calls_per_batch": round(sum(calls.values()) / batches, 1),
            "peak_ledger_dml_outstanding": rules.scheduler.peak_outstanding(
                (factory.project, factory.dataset, "transaction_events")
            ),
        }


if __name__ == "__main__":
    rows_arg, batches_arg, instances_arg, latency_arg = sys.argv[1:5]
    print(json.dumps(measure(int(rows_arg), int(batches_arg), int(instances_arg), latency_arg)))

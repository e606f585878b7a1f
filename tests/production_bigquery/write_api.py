"""The Storage Write API as in production, in front of the emulator's: a gRPC proxy that refuses
an ``AppendRows`` request over 10 MB (https://cloud.google.com/bigquery/quotas#write-api-limits),
an append to a table of a dataset where the caller lacks ``bigquery.tables.updateData``
(https://cloud.google.com/bigquery/docs/write-api#required_permissions), with the grants of the
REST proxy (proxy.py), and, for ``schema_lag_seconds`` after a table's schema changed, an append
naming a column added by the change: the write API sees a new column "in order of minutes"
(the client libraries' schema-update support, e.g. Java's SchemaAwareStreamWriter) and answers
INVALID_ARGUMENT "Input schema has more fields than BigQuery schema" until then. The warehouse
reaches it as it reaches the emulator, through
``BIGQUERY_STORAGE_EMULATOR_HOST`` or ``emulator_write_client``.

Requests and replies pass as bytes; only the requests are decoded, to be checked. A call's
requests are read before any is forwarded (the warehouse sends one request per call).
"""

from __future__ import annotations

import concurrent.futures
import re
import threading
import time
from collections.abc import Callable, Iterator

import grpc
from google.cloud.bigquery_storage_v1 import types

from tests.production_bigquery.iam import Grants

SERVICE = "google.cloud.bigquery.storage.v1.BigQueryWrite"
MAX_APPEND_REQUEST_BYTES = 10 * 1024 * 1024
_STREAM = re.compile(r"projects/(?P<p>[^/]+)/datasets/(?P<d>[^/]+)/tables/(?P<t>[^/]+)/.*")


class WriteApiRules:
    """Start with :meth:`start`, point the write client at :attr:`address`, :meth:`stop`."""

    def __init__(self, emulator_address: str, grants: Callable[[], Grants]) -> None:
        self._grants = grants
        # gRPC's own 4 MB default would refuse what BigQuery accepts: the limit here is the API's.
        sizes = [
            ("grpc.max_receive_message_length", 2 * MAX_APPEND_REQUEST_BYTES),
            ("grpc.max_send_message_length", 2 * MAX_APPEND_REQUEST_BYTES),
        ]
        self._upstream = grpc.insecure_channel(emulator_address, options=sizes)
        self._append_rows = self._upstream.stream_stream(f"/{SERVICE}/AppendRows")
        self._server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=16), options=sizes
        )
        handler = grpc.method_handlers_generic_handler(
            SERVICE, {"AppendRows": grpc.stream_stream_rpc_method_handler(self._append)}
        )
        self._server.add_generic_rpc_handlers((handler,))
        self.address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self.refused = 0  # calls refused by a rule
        # How long after a schema change the write API still sees the table's old columns. A
        # test that adds columns sets it; production's is minutes.
        self.schema_lag_seconds = 0.0
        self.refused_unseen_columns = 0  # calls refused because a new column was not seen yet
        self._lock = threading.Lock()
        self._changed: dict[tuple[str, str, str], tuple[float, frozenset[str]]] = {}

    def schema_changed(self, table: tuple[str, str, str], columns_before: frozenset[str]) -> None:
        """``table``'s schema changed now; until the lag is over, appends see ``columns_before``."""
        with self._lock:
            self._changed[table] = (time.monotonic(), columns_before)

    def _unseen_columns(
        self, table: tuple[str, str, str], request: types.AppendRowsRequest
    ) -> list[str]:
        with self._lock:
            changed = self._changed.get(table)
        if changed is None or time.monotonic() >= changed[0] + self.schema_lag_seconds:
            return []
        fields = request.proto_rows.writer_schema.proto_descriptor.field
        return [f.name for f in fields if f.name not in changed[1]]

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop(grace=None)
        self._upstream.close()

    def _append(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        received = list(requests)
        for raw in received:
            refusal = self._refusal(raw)
            if refusal is not None:
                self.refused += 1
                context.abort(*refusal)
        yield from self._append_rows(iter(received), timeout=context.time_remaining())

    def _refusal(self, raw: bytes) -> tuple[grpc.StatusCode, str] | None:
        if len(raw) > MAX_APPEND_REQUEST_BYTES:
            return (
                grpc.StatusCode.INVALID_ARGUMENT,
                f"AppendRows request too large: {len(raw)} bytes, the limit is"
                f" {MAX_APPEND_REQUEST_BYTES}",
            )
        request = types.AppendRowsRequest.deserialize(raw)
        match = _STREAM.fullmatch(request.write_stream)
        if match is None:
            return None  # a later request of a call may omit the stream
        project, dataset, table = match["p"], match["d"], match["t"]
        if not self._grants().on_dataset(project, dataset, "bigquery.tables.updateData"):
            return (
                grpc.StatusCode.PERMISSION_DENIED,
                f"Permission 'bigquery.tables.updateData' denied on table"
                f" {project}:{dataset}.{table}",
            )
        unseen = self._unseen_columns((project, dataset, table), request)
        if unseen:
            self.refused_unseen_columns += 1
            return (
                grpc.StatusCode.INVALID_ARGUMENT,
                "Input schema has more fields than BigQuery schema, extra fields:"
                f" {', '.join(repr(name) for name in unseen)} Entity: {request.write_stream}",
            )
        return None

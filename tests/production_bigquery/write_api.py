"""The Storage Write API as in production, in front of the emulator's: a gRPC proxy that refuses
an ``AppendRows`` request over 10 MB (https://cloud.google.com/bigquery/quotas#write-api-limits)
and an append to a table of a dataset where the caller lacks ``bigquery.tables.updateData``
(https://cloud.google.com/bigquery/docs/write-api#required_permissions), with the grants of the
REST proxy (proxy.py). The warehouse reaches it as it reaches the emulator, through
``BIGQUERY_STORAGE_EMULATOR_HOST`` or ``emulator_write_client``.

Requests and replies pass as bytes; only the requests are decoded, to be checked. A call's
requests are read before any is forwarded (the warehouse sends one request per call).
"""

from __future__ import annotations

import concurrent.futures
import re
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
        stream = types.AppendRowsRequest.deserialize(raw).write_stream
        match = _STREAM.fullmatch(stream)
        if match is None:
            return None  # a later request of a call may omit the stream
        project, dataset, table = match["p"], match["d"], match["t"]
        if not self._grants().on_dataset(project, dataset, "bigquery.tables.updateData"):
            return (
                grpc.StatusCode.PERMISSION_DENIED,
                f"Permission 'bigquery.tables.updateData' denied on table"
                f" {project}:{dataset}.{table}",
            )
        return None

"""Staged appends to BigQuery through the Storage Write API's default stream.

Why the Storage Write API and not load jobs: a merge cycle needs workers to append in parallel,
every bundle, all day. Load jobs are limited to 1,500 a table a day
(https://cloud.google.com/bigquery/quotas#load_jobs); the default stream has no such count, its
rows are committed (readable) as soon as the append returns, and unlike ``insertAll``'s streaming
buffer they can be changed by DML at once, which is how a merge cycle removes the rows it merged
(https://cloud.google.com/bigquery/docs/data-manipulation-language#limitations). The default
stream is at-least-once: an append retried after a lost reply may land twice. That is allowed:
staged rows carry their own id and a merge cycle treats identical versions as one.

Rows travel as protocol buffers (the write API's generally available format): the message type
is built at run time from the staged table's columns, NUMERIC as its exact decimal text and
TIMESTAMP as integer microseconds, so no value passes through a float. A request stays under the
API's 10 MB (``MAX_APPEND_BYTES``); a larger batch is sent as several requests.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from google.cloud.bigquery_storage_v1 import BigQueryWriteClient, types
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from pipeline.events import CONTRACT_FIELDS, LedgerCandidate, format_amount, to_micros
from pipeline.tables import CONTRACT_COLUMNS, Column, Table

# The staged rows: the event, the dedup step's verdict and window, and where the row came from.
# ``stage_id`` is unique per appended row, so a cycle deletes exactly the rows it merged;
# ``staged_at`` (the worker's clock) tells how long rows wait for a cycle.
STAGED_EVENTS = Table(
    name="staged_events",
    columns=(
        *CONTRACT_COLUMNS,
        Column("is_primary", "BOOL", True, "The dedup step chose this version for its event_id."),
        Column("window_start", "TIMESTAMP", True, "Start of the event's totals window, UTC."),
        Column("window_end", "TIMESTAMP", True, "End of the event's totals window, UTC."),
        Column("stage_id", "STRING", True, "Unique per appended row."),
        Column("staged_at", "TIMESTAMP", True, "When a worker appended the row, UTC."),
    ),
    key=("stage_id",),
    time_column="staged_at",
    description="Rows appended by workers, waiting for the next merge cycle.",
    partitioned=False,
)

# https://cloud.google.com/bigquery/quotas#write-api-limits: a request must be under 10 MB; the
# margin covers the request's other fields (stream name, schema).
MAX_APPEND_BYTES = 9 * 1024 * 1024
# Environment variable naming the gRPC address (host:port) of a local emulator's write API,
# beside BIGQUERY_EMULATOR_HOST for its REST API (see bigquery.default_client).
STORAGE_EMULATOR_ENV = "BIGQUERY_STORAGE_EMULATOR_HOST"

_PROTO_TYPES = {
    "STRING": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
    "NUMERIC": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,  # exact decimal text
    "TIMESTAMP": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,  # microseconds since the epoch
    "INT64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
    "BOOL": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
}


def _descriptor(table: Table) -> descriptor_pb2.DescriptorProto:
    message = descriptor_pb2.DescriptorProto(name=f"{table.name}_row")
    for number, column in enumerate(table.columns, start=1):
        message.field.add(
            name=column.name,
            number=number,
            type=_PROTO_TYPES[column.type],
            label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
        )
    return message


def _message_class(descriptor: descriptor_pb2.DescriptorProto) -> Any:
    file = descriptor_pb2.FileDescriptorProto(name=f"{descriptor.name}.proto", syntax="proto2")
    file.message_type.add().CopyFrom(descriptor)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(descriptor.name))


# Each contract field's value as the message holds it, by its column's type.
_CONVERSIONS: dict[str, Callable[[Any], Any]] = {"NUMERIC": format_amount, "TIMESTAMP": to_micros}
_PROTO_VALUES: dict[str, Callable[[Any], Any]] = {
    c.name: _CONVERSIONS.get(c.type, str)
    for c in STAGED_EVENTS.columns
    if c.name in CONTRACT_FIELDS
}
_STAGED_DESCRIPTOR = _descriptor(STAGED_EVENTS)
_STAGED_ROW = _message_class(_STAGED_DESCRIPTOR)


def staged_rows(candidates: Sequence[LedgerCandidate], now: dt.datetime) -> list[bytes]:
    """The batch as serialized rows of ``staged_events``, each with an id of its own."""
    batch_id = uuid.uuid4().hex
    staged_at = to_micros(now)
    rows = []
    for index, candidate in enumerate(candidates):
        row = _STAGED_ROW(
            is_primary=candidate.primary,
            window_start=to_micros(candidate.window_start),
            window_end=to_micros(candidate.window_end),
            stage_id=f"{batch_id}-{index}",
            staged_at=staged_at,
        )
        for name, value in zip(CONTRACT_FIELDS, candidate.event, strict=True):
            if value is not None:  # an absent optional value is an unset field: NULL
                setattr(row, name, _PROTO_VALUES[name](value))
        rows.append(row.SerializeToString())
    return rows


def request_chunks(rows: Sequence[bytes], limit: int = MAX_APPEND_BYTES) -> Iterator[list[bytes]]:
    """The rows in consecutive chunks whose serialized size stays under ``limit``."""
    chunk: list[bytes] = []
    size = 0
    for row in rows:
        if chunk and size + len(row) + 8 > limit:  # 8: a row's framing in the request, at most
            yield chunk
            chunk, size = [], 0
        chunk.append(row)
        size += len(row) + 8
    if chunk:
        yield chunk


class AppendFailed(RuntimeError):
    """The write API refused an append; ``transient`` says whether trying again may succeed."""

    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


# After a column is added to a table (a new optional field, at start-up), the write API sees it
# only minutes later (the client libraries' schema-update support says "in order of minutes"):
# until then an append naming it is refused with this INVALID_ARGUMENT, which is retried.
SCHEMA_NOT_YET_SEEN = "input schema has more fields than bigquery schema"
# google.rpc.Code values after which an append may succeed when sent again.
_TRANSIENT_CODES = {4, 8, 10, 13, 14}  # DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, ...


def append_requests(
    stream: str, rows: Sequence[bytes], limit: int = MAX_APPEND_BYTES
) -> Iterator[types.AppendRowsRequest]:
    """The requests that append ``rows`` to ``stream``, each under ``limit``."""
    for chunk in request_chunks(rows, limit):
        yield types.AppendRowsRequest(
            write_stream=stream,
            proto_rows=types.AppendRowsRequest.ProtoData(
                writer_schema=types.ProtoSchema(proto_descriptor=_STAGED_DESCRIPTOR),
                rows=types.ProtoRows(serialized_rows=chunk),
            ),
        )


def append(
    client: BigQueryWriteClient,
    stream: str,
    rows: Sequence[bytes],
    timeout: float,
    limit: int = MAX_APPEND_BYTES,
) -> None:
    """Append ``rows`` to ``stream`` (``projects/P/datasets/D/tables/T/streams/_default``), one
    call per request, each waited for; raises :class:`AppendFailed` or the client's error.
    Each call carries the stream as its routing header, as the library's own ``AppendRowsStream``
    does: the generated method sends an empty one, which BigQuery may answer with "Cannot route
    on empty project id" (googleapis/python-bigquery-storage#577)."""
    routing = (("x-goog-request-params", f"write_stream={stream}"),)
    for request in append_requests(stream, rows, limit):
        for response in client.append_rows(iter([request]), timeout=timeout, metadata=routing):
            if response.row_errors:
                raise AppendFailed(f"the write API refused rows: {response.row_errors}", False)
            if response.error.code:
                raise AppendFailed(
                    f"the write API refused an append: {response.error.message}",
                    response.error.code in _TRANSIENT_CODES
                    or SCHEMA_NOT_YET_SEEN in response.error.message.lower(),
                )


def default_write_client() -> BigQueryWriteClient:
    """The write API client a run uses: the local emulator's when ``STORAGE_EMULATOR_ENV`` is
    set (no credentials), Google's otherwise."""
    address = os.environ.get(STORAGE_EMULATOR_ENV)
    if not address:
        return BigQueryWriteClient()
    return emulator_write_client(address)


def emulator_write_client(address: str) -> BigQueryWriteClient:
    import grpc  # noqa: PLC0415  # a dependency of the client, needed only here
    from google.cloud.bigquery_storage_v1.services.big_query_write.transports import (  # noqa: PLC0415
        BigQueryWriteGrpcTransport,
    )

    channel = grpc.insecure_channel(address)
    return BigQueryWriteClient(transport=BigQueryWriteGrpcTransport(channel=channel))


WriteClientFactory = Callable[[], BigQueryWriteClient]

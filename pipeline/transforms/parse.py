"""Parse: raw records (file lines or Pub/Sub messages) to contract events or dead letters.

One bad record must never fail its bundle: in streaming that bundle would be retried forever.
Every record therefore ends either as a timestamped :class:`Event` on the main output or as a
:class:`DeadLetter` on the ``dead_letters`` output, whose reason names the offending field.

Timestamps: an event from a Pub/Sub message is timestamped with the message's publish time, the
position in the subscription that replay checkpoints track (pipeline/progress.py); an event from
a file line with its event_time. Event-time windows are assigned later, from the payload's
event_time (transforms/windows.py), so the timestamp here never decides a window.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import apache_beam as beam
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindows, TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from pipeline import metrics
from pipeline.contract import FIELD
from pipeline.dead_letters import DEAD_LETTER_TAG, STAGE_PARSE, DeadLetter, make_dead_letter
from pipeline.events import (
    ContractViolation,
    Event,
    decode_payload,
    parse_event,
    to_micros,
)
from pipeline.transforms.windows import in_global_window

_LOG = logging.getLogger(__name__)

Record = bytes | PubsubMessage


def peek_event_id(payload: bytes) -> str | None:
    """Best effort: the event_id of a rejected record, so operators can find related rows."""
    try:
        value: Any = decode_payload(payload).get("event_id")
    except (ContractViolation, AttributeError):
        return None
    try:
        return str(FIELD["event_id"].kind.parse(value, "event_id")) if value is not None else None
    except ContractViolation:
        return None


class ParseEventFn(beam.DoFn):
    """bytes or PubsubMessage -> timestamped Event | dead letter."""

    def __init__(self, global_input: bool = False) -> None:
        self._counters = metrics.OutcomeCounters()
        self._global_input = global_input  # input in the global window (as sources deliver)

    def process(self, record: Record) -> Iterator[TimestampedValue | WindowedValue | TaggedOutput]:
        self._counters.inc(metrics.LINES_READ)
        payload, attributes, message_id, published = _unpack(record)
        try:
            event = parse_event(payload)
        except ContractViolation as violation:
            self._counters.inc(metrics.DEAD_LETTERS_PARSE)
            yield TaggedOutput(
                DEAD_LETTER_TAG,
                _dead_letter(str(violation), payload, attributes, message_id, published),
            )
            return
        except Exception as error:  # a bug must not turn one record into a crash loop
            _LOG.exception("Unexpected error while parsing a record; routed to dead letters")
            self._counters.inc(metrics.PARSE_INTERNAL_ERRORS)
            self._counters.inc(metrics.DEAD_LETTERS_PARSE)
            reason = f"internal: {type(error).__name__}: {error}"
            yield TaggedOutput(
                DEAD_LETTER_TAG, _dead_letter(reason, payload, attributes, message_id, published)
            )
            return
        self._counters.inc(metrics.EVENTS_PARSED)
        micros = to_micros(published or event.event_time)
        if self._global_input:
            yield in_global_window(event, micros)
        else:
            yield TimestampedValue(event, Timestamp(micros=micros))


def _dead_letter(
    reason: str,
    payload: bytes,
    attributes: Mapping[str, str] | None,
    message_id: str | None,
    published: dt.datetime | None,
) -> DeadLetter:
    return make_dead_letter(
        STAGE_PARSE,
        reason,
        payload,
        event_id=peek_event_id(payload),
        message_id=message_id,
        attributes=attributes,
        # For a message, arrival is its publish time: the position replay checkpoints track.
        arrival_time=published or dt.datetime.now(dt.UTC),
    )


def _unpack(
    record: Record,
) -> tuple[bytes, Mapping[str, str] | None, str | None, dt.datetime | None]:
    if isinstance(record, PubsubMessage):
        published = record.publish_time
        if published is not None:
            published = published.astimezone(dt.UTC)
        return record.data or b"", record.attributes or None, record.message_id, published
    return record, None, None, None


class ParseEvents(beam.PTransform):
    """Validate raw records against the event contract.

    Input: ``bytes`` (one JSON object per file line) or ``PubsubMessage``.
    Outputs (a ``DoOutputsTuple``): ``events``, the valid :class:`Event` s, timestamped with the
    message's publish time (Pub/Sub) or their event_time (files); and ``dead_letters``, one
    :class:`DeadLetter` per refused record with the field at fault in its reason.
    Stateless and order-preserving per bundle; windows of the input are kept.
    """

    def expand(self, records: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        fn = ParseEventFn(isinstance(records.windowing.windowfn, GlobalWindows))
        return records | "ValidateContract" >> beam.ParDo(fn).with_output_types(Event).with_outputs(
            DEAD_LETTER_TAG, main="events"
        )

"""Sources: where raw records come from. Each yields ``bytes`` (or ``PubsubMessage``) records for
:class:`pipeline.transforms.parse.ParseEvents`; no decoding happens here, so a line that is not
UTF-8 still reaches the parser and becomes a dead letter instead of failing the read."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.io.gcp.pubsub import PubsubMessage, ReadFromPubSub

from pipeline import progress


class ReadEventFiles(beam.PTransform):
    """Newline-delimited files matching a glob -> one ``bytes`` record per line (bounded)."""

    def __init__(self, file_pattern: str) -> None:
        super().__init__()
        if not file_pattern:
            raise ValueError("file_pattern must not be empty")
        self._pattern = file_pattern

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return pbegin | "ReadLines" >> beam.io.ReadFromText(
            self._pattern, coder=BytesCoder(), strip_trailing_newlines=True
        ).with_output_types(bytes)


class NoteArrivalFn(beam.DoFn):
    """Registers each pulled message's publish time with the observed run (replay tracking,
    pipeline/progress.py); passes messages through untouched where no run is observed."""

    def process(self, message: PubsubMessage) -> Iterator[PubsubMessage]:
        run = progress.observed()
        if run is not None and message.publish_time is not None:
            run.pulled(message.publish_time.astimezone(dt.UTC))
        yield message


class ReadPubSubMessages(beam.PTransform):
    """A subscription (or a topic, through a temporary subscription) -> ``PubsubMessage`` s with
    attributes, message id and publish time (unbounded).

    Element timestamps are the ``timestamp_attribute``'s value when given (Beam's source then
    derives the watermark from it, and on Dataflow a message without it fails the read), else the
    publish time. No step of this pipeline groups by those timestamps; see docs/STREAMING.md.
    """

    def __init__(
        self,
        subscription: str | None = None,
        topic: str | None = None,
        timestamp_attribute: str | None = None,
    ) -> None:
        super().__init__()
        if bool(subscription) == bool(topic):
            raise ValueError("give exactly one of subscription and topic")
        self._subscription = subscription
        self._topic = topic
        self._timestamp_attribute = timestamp_attribute or None

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "ReadMessages"
            >> ReadFromPubSub(
                topic=self._topic,
                subscription=self._subscription,
                with_attributes=True,
                timestamp_attribute=self._timestamp_attribute,
            )
            | "NoteArrival" >> beam.ParDo(NoteArrivalFn())
        )


def seek_subscription(subscription: str, to: dt.datetime) -> None:
    """Mark every message of ``subscription`` published at or after ``to`` as unacknowledged, so
    it is delivered again (the subscription must retain acknowledged messages). Messages older
    than the retention are gone; Pub/Sub then seeks to the oldest it kept."""
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]  # noqa: PLC0415

    with pubsub_v1.SubscriberClient() as subscriber:
        subscriber.seek(request={"subscription": subscription, "time": to})


def ack_deadline_seconds(subscription: str) -> int:
    """The subscription's acknowledgement deadline: how long a message stays leased to a
    consumer that pulled it and never acknowledged it (for instance because it died)."""
    from google.cloud import pubsub_v1  # type: ignore[attr-defined]  # noqa: PLC0415

    with pubsub_v1.SubscriberClient() as subscriber:
        return int(subscriber.get_subscription(subscription=subscription).ack_deadline_seconds)

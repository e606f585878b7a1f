"""Dead letters: input the pipeline refuses, kept with the reason instead of being dropped.

A dead letter carries the raw payload, the stage that refused it and why. Its id is a hash of
the stage and the payload bytes only, so the same bad input seen again (a replay, a redelivery, a
duplicate publish) maps to the same id and the warehouse MERGE adds no second row. The reason is
deliberately not part of the id: it may be worded differently by the pipeline tier and the
warehouse tier for the same rejected version.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from typing import NamedTuple

from pipeline.events import Event

# Output tag of every step that can refuse input.
DEAD_LETTER_TAG = "dead_letters"

STAGE_PARSE = "parse"
STAGE_DEDUP = "dedup"


class DeadLetter(NamedTuple):
    dead_letter_id: str
    stage: str
    error: str
    payload: str
    payload_encoding: str  # "utf-8" when payload is the raw text, "base64" when it was not UTF-8
    event_id: str | None
    message_id: str | None
    attributes: str | None  # JSON object of the Pub/Sub message attributes, when there were any
    arrival_time: dt.datetime


def dead_letter_id(stage: str, payload: bytes) -> str:
    return hashlib.sha256(stage.encode() + b"\0" + payload).hexdigest()


def make_dead_letter(
    stage: str,
    error: str,
    payload: bytes,
    *,
    event_id: str | None = None,
    message_id: str | None = None,
    attributes: Mapping[str, str] | None = None,
    arrival_time: dt.datetime | None = None,
) -> DeadLetter:
    try:
        text, encoding = payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        # Stored losslessly rather than with replacement characters, so it can be replayed.
        text, encoding = base64.b64encode(payload).decode("ascii"), "base64"
    return DeadLetter(
        dead_letter_id=dead_letter_id(stage, payload),
        stage=stage,
        error=error,
        payload=text,
        payload_encoding=encoding,
        event_id=event_id,
        message_id=message_id,
        attributes=json.dumps(dict(sorted(attributes.items()))) if attributes else None,
        arrival_time=arrival_time or dt.datetime.now(dt.UTC),
    )


def conflict_dead_letter(rejected: Event, kept: Event | None) -> DeadLetter:
    """The dead letter for a version of an event that lost to another version of the same id."""
    if kept is None:
        error = "conflict: another version of this event_id was accepted in this run"
    else:
        fields = ", ".join(rejected.differing_fields(kept))
        error = (
            f"conflict: transaction_events already holds this event_id with a different {fields}"
        )
    return make_dead_letter(
        STAGE_DEDUP, error, rejected.to_json().encode("utf-8"), event_id=rejected.event_id
    )

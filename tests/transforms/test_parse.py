"""ParseEvents: every record ends as a timestamped event or a dead letter with its reason."""

from __future__ import annotations

import base64
import json

import apache_beam as beam
import pytest
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.pvalue import TaggedOutput
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import TestWindowedValue, assert_that, equal_to
from apache_beam.transforms.window import (
    FixedWindows,
    GlobalWindow,
    IntervalWindow,
    TimestampedValue,
)
from apache_beam.utils.timestamp import Timestamp
from hamcrest import assert_that as hamcrest_assert
from hamcrest import contains_string, has_properties, starts_with

from pipeline.dead_letters import DEAD_LETTER_TAG, STAGE_PARSE, dead_letter_id
from pipeline.events import parse_event, to_micros
from pipeline.transforms.parse import ParseEventFn, ParseEvents
from tests.helpers import event_line


def test_valid_line_is_emitted_at_its_event_time() -> None:
    line = event_line("e1", event_time="2026-01-01T02:00:00+02:00")
    (output,) = list(ParseEventFn().process(line))
    assert isinstance(output, TimestampedValue)
    assert output.value == parse_event(line)
    assert output.timestamp.micros == to_micros(parse_event(line).event_time)


def test_invalid_line_becomes_a_dead_letter_with_field_and_raw_payload() -> None:
    line = event_line("e1", currency="usd")
    (output,) = list(ParseEventFn().process(line))
    assert isinstance(output, TaggedOutput)
    assert output.tag == DEAD_LETTER_TAG
    hamcrest_assert(
        output.value,
        has_properties(
            stage=STAGE_PARSE,
            error=starts_with("currency: "),
            payload=line.decode(),
            payload_encoding="utf-8",
            event_id="e1",
            dead_letter_id=dead_letter_id(STAGE_PARSE, line),
        ),
    )


def test_non_utf8_payload_is_kept_losslessly_as_base64() -> None:
    line = b"\xff\xfe garbage \x80"
    (output,) = list(ParseEventFn().process(line))
    assert output.value.payload_encoding == "base64"
    assert base64.b64decode(output.value.payload) == line
    hamcrest_assert(output.value.error, contains_string("not UTF-8"))


def test_pubsub_dead_letter_keeps_attributes_and_message_id() -> None:
    message = PubsubMessage(
        b"{oops", {"event_id": "e9", "event_time": "2026-01-01T00:00:00Z"}, message_id="m-42"
    )
    (output,) = list(ParseEventFn().process(message))
    assert output.value.message_id == "m-42"
    assert json.loads(output.value.attributes) == {
        "event_id": "e9",
        "event_time": "2026-01-01T00:00:00Z",
    }


def test_composite_splits_events_and_dead_letters() -> None:
    good = [event_line("e1"), event_line("e2", amount="3.5")]
    bad = [b"nope", event_line("e3", status="DONE")]
    with TestPipeline() as p:
        parsed = p | beam.Create(good + bad) | ParseEvents()
        assert_that(
            parsed["events"],
            equal_to([parse_event(line) for line in good]),
            label="CheckEvents",
        )
        assert_that(
            parsed[DEAD_LETTER_TAG] | beam.Map(lambda d: (d.payload, d.error.split(":")[0])),
            equal_to([("nope", "payload"), (bad[1].decode(), "status")]),
            label="CheckDeadLetters",
        )


@pytest.mark.parametrize("windowed_input", [False, True])
def test_events_are_timestamped_at_event_time_in_their_input_windows(windowed_input: bool) -> None:
    """From a source (the global window) and from windowed input alike, an event from a file
    line carries its event_time, in the window its input's WindowFn gives that time."""
    line = event_line("e1", event_time="2026-01-01T00:00:07Z")
    event = parse_event(line)
    at = Timestamp(micros=to_micros(event.event_time))
    window = IntervalWindow(at - 7, at + 3) if windowed_input else GlobalWindow()  # [00:00, 00:10)
    with TestPipeline() as p:
        records = p | beam.Create([line])
        if windowed_input:
            records = records | beam.WindowInto(FixedWindows(10))
        events = (records | ParseEvents())["events"]
        expected = TestWindowedValue(event, at, [window])
        assert_that(events, equal_to([expected]), reify_windows=True)

"""The envelope: deterministic ids, CloudEvents fields, JSON-safe values, timestamps."""

import json
import math
from datetime import UTC, datetime

import pytest

from gateway import events
from gateway.events import Reading


def test_same_reading_same_id_and_different_reading_different_id():
    a = Reading("press-1", "temp", 71.25, source_time=1_790_000_000.5, receive_time=1.0)
    again = Reading("press-1", "temp", 71.25, source_time=1_790_000_000.5, receive_time=2.0)
    other = Reading("press-1", "temp", 71.26, source_time=1_790_000_000.5, receive_time=1.0)
    assert events.telemetry(a).id == events.telemetry(again).id
    assert events.telemetry(a).id != events.telemetry(other).id


def test_encoded_event_is_a_cloudevent_with_extensions():
    reading = Reading("press-1", "temp", 71.25, unit="degC", source_time=1_790_000_000.25,
                      receive_time=1_790_000_000.5)
    body = json.loads(events.telemetry(reading).encode("/site/gw/press-1", 7))
    assert body["specversion"] == "1.0"
    assert body["type"] == "io.millwright.telemetry"
    assert body["source"] == "/site/gw/press-1"
    assert body["subject"] == "press-1/temp"
    assert body["seq"] == 7 and body["schemaversion"] == "1"
    assert body["time"] == "2026-09-21T14:13:20.250000Z"
    assert body["data"] == {
        "device": "press-1", "point": "temp", "value": 71.25, "unit": "degC", "quality": "good",
        "source_time": "2026-09-21T14:13:20.250000Z",
        "receive_time": "2026-09-21T14:13:20.500000Z",
    }


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_travel_as_null_with_bad_quality(value):
    data = json.loads(events.telemetry(Reading("d", "p", value)).encode("/s", 1))["data"]
    assert data["value"] is None and data["quality"] == "bad"


@pytest.mark.parametrize("ts", [0.0, 1.5, 1_700_000_000.999999, 1_790_000_000.123456, 4e9])
def test_rfc3339_matches_datetime(ts):
    expected = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert events.rfc3339(ts) == expected


def test_readings_from_an_unset_clock_are_flagged():
    early = events.telemetry(Reading("d", "p", 1, receive_time=86_400.0))
    late = events.telemetry(Reading("d", "p", 1, receive_time=1_790_000_000.0))
    assert early.data["clock_unsynchronised"] is True
    assert "clock_unsynchronised" not in late.data


def test_priorities_put_maintenance_last_to_go():
    order = sorted(events.KINDS, key=events.PRIORITY.__getitem__)
    assert order[0] == events.TELEMETRY and order[-1] == events.MAINTENANCE_NEEDED

"""MQTT payload decoding: data-driven cases, config errors, and properties no payload can break."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.mqtt.codec import (
    Plan,
    PointPlan,
    decode,
    device_level,
    parse_path,
    topic_matches,
    validate_filter,
)
from gateway import events
from gateway.config import validate
from gateway.errors import ConfigError
from gateway.frames import Frame
from tests.support.frames import flatten

TOPIC = "plant/press-1/telemetry"
RECEIVED = 1_800_000_000.0
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def plan(points: list[tuple[str, str, str | None]], *, topic_filter: str = "plant/+/telemetry",
         from_topic: bool = False, ts: str | None = None, unit: str = "s",
         max_bytes: int = 1024) -> Plan:
    return Plan(
        device="dev", topic_filter=topic_filter,
        points=tuple(PointPlan(name, parse_path(path), kind, None) for name, path, kind in points),
        device_level=device_level(topic_filter) if from_topic else None,
        timestamp_path=parse_path(ts) if ts is not None else None, timestamp_unit=unit,
        max_payload_bytes=max_bytes)


@dataclass
class Case:
    id: str
    payload: bytes | str
    points: list[tuple[str, str, str | None]]
    want: list[tuple[str, Any, str]] = field(default_factory=list)  # (point, value, quality)
    reasons: list[str] = field(default_factory=list)
    ts: str | None = None
    unit: str = "s"
    source_time: float | None = None
    topic: str | None = TOPIC
    max_bytes: int = 1024


X = [("x", "x", None)]
CASES = [
    Case("flat-number", '{"x": 21.5}', X, [("x", 21.5, "good")]),
    Case("nested-path", '{"signals": {"temp": 49.8}}', [("t", "signals.temp", "number")],
         [("t", 49.8, "good")]),
    Case("array-index", '{"axes": [{"rms": 1}, {"rms": 2.5}]}', [("y", "axes.1.rms", None)],
         [("y", 2.5, "good")]),
    Case("index-past-end", '{"axes": [1]}', [("y", "axes.3", None)], reasons=["missing_field"]),
    Case("index-into-object", '{"axes": {"0": 7}}', [("y", "axes.0", None)], [("y", 7, "good")]),
    Case("bare-number", "21.5", [("v", "", "number")], [("v", 21.5, "good")]),
    Case("bare-bool", "true", [("on", "", "bool")], [("on", True, "good")]),
    Case("bare-string", '"running"', [("s", "", "string")], [("s", "running", "good")]),
    Case("any-scalar-string", '{"x": "auto"}', X, [("x", "auto", "good")]),
    Case("any-scalar-bool", '{"x": false}', X, [("x", False, "good")]),
    Case("integer-from-float", '{"x": 3.0}', [("x", "x", "integer")], [("x", 3, "good")]),
    Case("integer-beyond-64-bit", '{"x": 9223372036854775808}', X, reasons=["wrong_type"]),
    Case("integer-64-bit-max", '{"x": 9223372036854775807}', X,
         [("x", 9223372036854775807, "good")]),
    Case("float-too-big-for-integer", '{"x": 1e300}', [("x", "x", "integer")],
         reasons=["wrong_type"]),
    Case("integer-fraction", '{"x": 3.5}', [("x", "x", "integer")], reasons=["wrong_type"]),
    Case("bool-is-not-number", '{"x": true}', [("x", "x", "number")], reasons=["wrong_type"]),
    Case("string-is-not-number", '{"x": "12.5"}', [("x", "x", "number")],
         reasons=["wrong_type"]),
    Case("lone-surrogate", '{"x": "a\\ud800"}', X, reasons=["wrong_type"]),
    Case("surrogate-pair", '{"x": "\\ud83d\\ude00"}', X, [("x", "\U0001f600", "good")]),
    Case("object-is-not-scalar", '{"x": {"v": 1}}', X, reasons=["wrong_type"]),
    Case("array-is-not-scalar", '{"x": [1]}', X, reasons=["wrong_type"]),
    Case("null-is-bad-quality", '{"x": null}', [("x", "x", "number")], [("x", None, "bad")]),
    Case("nan-is-a-bad-null", '{"x": NaN}', [("x", "x", "number")], [("x", None, "bad")]),
    Case("infinity-is-a-bad-null", '{"x": -Infinity}', X, [("x", None, "bad")]),
    Case("one-missing-others-flow", '{"a": 1}', [("a", "a", None), ("b", "b", None)],
         [("a", 1, "good")], reasons=["missing_field"]),
    Case("one-wrong-others-flow", '{"a": 1, "b": "x"}',
         [("a", "a", "number"), ("b", "b", "number")], [("a", 1, "good")],
         reasons=["wrong_type"]),
    Case("all-missing", '{"z": 1}', [("a", "a", None), ("b", "b", None)],
         reasons=["missing_field", "missing_field"]),
    Case("not-json", '{"x": 1', X, reasons=["malformed"]),
    Case("empty", "", X, reasons=["malformed"]),
    Case("not-utf8", b"\xff\xfe{", X, reasons=["malformed"]),
    Case("bom", b'\xef\xbb\xbf{"x": 1}', X, reasons=["malformed"]),
    Case("deep-but-parseable", "[" * 900 + "]" * 900, [("v", "", None)],
         reasons=["wrong_type"], max_bytes=1 << 20),
    Case("deeper-than-the-parser", "[" * 60_000 + "]" * 60_000, [("v", "", None)],
         reasons=["malformed"], max_bytes=1 << 20),
    Case("integer-too-long-to-convert", "1" * 5000, [("v", "", None)], reasons=["malformed"],
         max_bytes=1 << 20),
    Case("cap-checked-before-parsing", "[" * 60_000 + "]" * 60_000, [("v", "", None)],
         reasons=["oversized"]),
    Case("oversized", json.dumps({"x": 1, "pad": "p" * 2000}), X, reasons=["oversized"]),
    Case("ts-seconds", '{"x": 1, "ts": 1767225600.25}', X, [("x", 1, "good")], ts="ts",
         source_time=T0 + 0.25),
    Case("ts-millis", '{"x": 1, "ts": 1767225600250}', X, [("x", 1, "good")], ts="ts",
         unit="ms", source_time=T0 + 0.25),
    Case("ts-nanos", '{"x": 1, "ts": 1767225600250000000}', X, [("x", 1, "good")], ts="ts",
         unit="ns", source_time=T0 + 0.25),
    Case("ts-iso-z", '{"x": 1, "meta": {"at": "2026-01-01T00:00:00.250Z"}}', X,
         [("x", 1, "good")], ts="meta.at", source_time=T0 + 0.25),
    Case("ts-iso-offset", '{"x": 1, "ts": "2026-01-01T01:00:00+01:00"}', X,
         [("x", 1, "good")], ts="ts", source_time=T0),
    Case("ts-iso-naive-is-utc", '{"x": 1, "ts": "2026-01-01T00:00:00"}', X,
         [("x", 1, "good")], ts="ts", source_time=T0),
    Case("ts-missing", '{"x": 1}', X, reasons=["bad_timestamp"], ts="ts"),
    Case("ts-garbage", '{"x": 1, "ts": "yesterday"}', X, reasons=["bad_timestamp"], ts="ts"),
    Case("ts-bool", '{"x": 1, "ts": true}', X, reasons=["bad_timestamp"], ts="ts"),
    Case("ts-object", '{"x": 1, "ts": {}}', X, reasons=["bad_timestamp"], ts="ts"),
    Case("ts-negative", '{"x": 1, "ts": -5}', X, reasons=["bad_timestamp"], ts="ts"),
    Case("ts-year-10000", '{"x": 1, "ts": 1e20}', X, reasons=["bad_timestamp"], ts="ts"),
    Case("ts-infinite", '{"x": 1, "ts": Infinity}', X, reasons=["bad_timestamp"], ts="ts"),
    Case("ts-huge-int", '{"x": 1, "ts": 1' + "0" * 400 + "}", X, reasons=["bad_timestamp"],
         ts="ts"),
    Case("unexpected-topic", '{"x": 1}', X, reasons=["unexpected_topic"], topic="other/x"),
    Case("invalid-utf8-topic", '{"x": 1}', X, reasons=["bad_device"], topic=None),
]


def frames_of(decoded: Any) -> list[Frame]:
    return [] if decoded.frame is None else [decoded.frame]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_decode_case(case: Case) -> None:
    payload = case.payload.encode() if isinstance(case.payload, str) else case.payload
    p = plan(case.points, ts=case.ts, unit=case.unit, max_bytes=case.max_bytes)
    decoded = decode(p, case.topic, payload, RECEIVED)
    got = [(r.point, r.value, r.quality) for r in flatten(frames_of(decoded))]
    assert len(got) == len(case.want), got
    for (point, value, quality), (want_point, want_value, want_quality) in zip(
            got, case.want, strict=True):
        assert (point, quality) == (want_point, want_quality)
        if isinstance(want_value, float) and math.isnan(want_value):
            assert isinstance(value, float) and math.isnan(value)
        else:
            assert value == want_value and type(value) is type(want_value)
    assert [r.reason for r in decoded.rejections] == case.reasons
    assert all(r.detail for r in decoded.rejections)
    if decoded.frame is not None:  # one message, one frame: at the payload's time, if it has one
        frame = decoded.frame
        assert frame.device == "dev" and frame.received == RECEIVED and frame.times == {}
        assert frame.time == (pytest.approx(case.source_time)
                              if case.source_time is not None else RECEIVED)


def test_device_comes_from_the_wildcard_level() -> None:
    p = plan(X, topic_filter="site/+/line/#", from_topic=True)
    decoded = decode(p, "site/press-7/line/a/b", b'{"x": 1}', RECEIVED)
    assert decoded.frame is not None and decoded.frame.device == "press-7"
    bad = decode(p, "site//line/a", b'{"x": 1}', RECEIVED)
    assert [r.reason for r in bad.rejections] == ["bad_device"]
    # The gateway's own name cannot be borrowed by a plant publisher.
    reserved = decode(p, "site/_gateway/line/a", b'{"x": 1}', RECEIVED)
    assert [r.reason for r in reserved.rejections] == ["bad_device"]


def test_without_device_from_topic_readings_belong_to_the_device() -> None:
    decoded = decode(plan(X), "plant/anything/telemetry", b'{"x": 1}', RECEIVED)
    assert decoded.frame is not None and decoded.frame.device == "dev"


@pytest.mark.parametrize("topic_filter,topic,matches", [
    ("plant/+/telemetry", "plant/p1/telemetry", True),
    ("plant/+/telemetry", "plant/p1/status", False),
    ("plant/+/telemetry", "plant/p1/telemetry/x", False),
    ("plant/#", "plant", True),
    ("plant/#", "plant/a/b/c", True),
    ("#", "$SYS/broker/uptime", False),
    ("+/x", "$SYS/x", False),
    ("a/b", "a/b", True),
    ("a/b", "a/b/", False),
    ("a/+", "a/", True),
])
def test_topic_matching(topic_filter: str, topic: str, matches: bool) -> None:
    assert topic_matches(tuple(topic_filter.split("/")), topic) is matches


@pytest.mark.parametrize("bad", ["", "a/#/b", "a/b#", "a/b+/c", "a/\x00"])
def test_invalid_topic_filters(bad: str) -> None:
    with pytest.raises(ValueError):
        validate_filter(bad)


def _device(**table: Any) -> dict[str, Any]:
    return {"name": "plant", "protocol": "mqtt", "url": "mqtt://127.0.0.1:1883",
            "topic": "plant/+/telemetry", "points": [{"name": "x", "path": "x"}], **table}


@pytest.mark.parametrize("table,fragment", [
    (_device(topic="plant/#/x"), "devices[0].topic (device 'plant'): '#' must be"),
    (_device(topic="a/+/+", device_from_topic=True), "exactly one '+'"),
    (_device(topic="a/b", device_from_topic=True), "exactly one '+'"),
    (_device(points=[{"name": "x", "path": "a..b"}]), "devices[0].points[0] (point 'x').path"),
    (_device(points=[{"name": "x", "path": "x"}, {"name": "x", "path": "y"}]),
     "repeated: x"),
    (_device(points=[]), "devices[0].points"),
    (_device(points=[{"name": "x", "path": "x", "type": "float"}]), "'number'"),
    (_device(qos=2), "devices[0].qos"),
    (_device(timestamp_path=""), "timestamp_path"),
    (_device(url="http://x"), "not an MQTT URL"),
    (_device(topik="x"), "unknown key 'topik'; allowed:"),
    (_device(password_file="nope.txt", username="u"), "file not found"),
])
def test_config_errors_name_the_place(table: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate({"gateway": {"id": "g"}, "devices": [table]})
    assert any(fragment in line for line in caught.value.problems), caught.value.problems


def test_config_defaults() -> None:
    config = validate({"gateway": {"id": "g"}, "devices": [_device()]})
    device = config.devices[0]
    assert device.effective_client_id == "millwright-plant"  # type: ignore[attr-defined]
    assert (device.qos, device.mqtt_version) == (1, "5")  # type: ignore[attr-defined]


# -- properties: nothing a broker can deliver crashes the codec --------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats()
    | st.text(st.characters(exclude_categories=()), max_size=20),  # surrogates too
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["x", "ts", "a", "0", "signals"]), children, max_size=4),
    max_leaves=20,
)
PROPERTY_PLAN = plan([("x", "x", None), ("n", "signals.a", "number"), ("i", "a.0", "integer"),
                      ("b", "a", "bool"), ("s", "x", "string"), ("w", "", None)],
                     ts="ts", max_bytes=4096)


def _check(decoded: Any) -> None:
    assert decoded.frame is not None or decoded.rejections
    for reading in flatten(frames_of(decoded)):
        assert reading.value is None or isinstance(reading.value, int | float | bool | str)
        assert not (isinstance(reading.value, float) and not math.isfinite(reading.value))
        assert reading.value is not None or reading.quality == "bad"
    if decoded.frame is not None:
        # Whatever the codec lets through, the envelope can encode.
        json.loads(events.telemetry(decoded.frame).encode("/lab/gw", 1))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600), st.text(max_size=40) | st.none())
def test_no_bytes_or_topic_crash_the_codec(payload: bytes, topic: str | None) -> None:
    _check(decode(PROPERTY_PLAN, topic, payload, RECEIVED))


shaped_documents = st.fixed_dictionaries({}, optional={
    "ts": st.integers() | st.floats() | st.text(max_size=30) | json_values,
    "x": json_values, "signals": json_values, "a": json_values,
})


@settings(max_examples=500, deadline=None)
@given(json_values | shaped_documents, st.sampled_from(["s", "ms", "us", "ns"]),
       st.booleans())
def test_no_json_document_crashes_the_codec(document: Any, unit: str, timestamped: bool) -> None:
    payload = json.dumps(document).encode()  # NaN and Infinity included, as Python writes them
    p = plan([("x", "x", None), ("n", "signals.a", "number"), ("i", "a.0", "integer"),
              ("b", "a", "bool"), ("s", "x", "string"), ("w", "", None)],
             ts="ts" if timestamped else None, unit=unit, max_bytes=4096)
    decoded = decode(p, TOPIC, payload, RECEIVED)
    _check(decoded)
    if decoded.frame is not None:
        if timestamped:
            assert datetime.fromtimestamp(decoded.frame.time, UTC).year <= 9999
        else:
            assert decoded.frame.time == RECEIVED

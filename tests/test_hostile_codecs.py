"""Hostile device data: Modbus register words and MQTT payloads/topics that no device should send.

The MQTT codec's own file (tests/test_mqtt_codec.py) already fuzzes arbitrary bytes,
arbitrary JSON documents and topics against a fixed plan. Added here: invalid
UTF-8 hidden inside otherwise valid JSON, numbers at and past every limit, deep
nesting along the configured path, hostile device names taken from a topic level,
and the property that whatever a codec lets through the envelope can carry.
Modbus: every register word, type, byte order, scale and offset decodes or raises
the codec's documented ValueError, and NaN/infinity always end as bad nulls.
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from drivers.modbus.codec import (
    BYTE_ORDERS,
    DATA_TYPES,
    Codec,
    is_finite,
    register_count,
    registers_to_bytes,
)
from drivers.mqtt.codec import Plan, PointPlan, decode, device_level, parse_path
from gateway import events
from gateway.cloudevents import decode as decode_event
from gateway.config_base import Name
from gateway.frames import Frame, Sample, one_frame
from gateway.topics import sanitise_level

RECEIVED = 1_800_000_000.0

# -- Modbus ----------------------------------------------------------------------------------

words = st.integers(0, 0xFFFF)
scales = st.floats(allow_nan=False) | st.sampled_from([1.0, 0.1, -1.0, 1e308, -1e-308, 5e-324])
offsets = st.floats(allow_nan=False) | st.sampled_from([0.0, -1e308, 1e308])


def reading_of(value: float | int | bool) -> Frame:
    """A frame of the one value, as a driver makes it: a value not finite is a bad null."""
    return one_frame("press-1", [Sample("p", value)], RECEIVED)


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(DATA_TYPES), st.sampled_from(BYTE_ORDERS), scales, offsets, st.data())
def test_any_register_words_decode_and_travel(data_type: str, byte_order: str, scale: float,
                                              offset: float, data: st.DataObject) -> None:
    if data_type == "bool":
        scale, offset = 1.0, 0.0  # the config refuses scale/offset on a bool point
    codec = Codec(data_type, byte_order, scale, offset)  # type: ignore[arg-type]
    registers = data.draw(st.lists(words, min_size=codec.width, max_size=codec.width))
    value = codec.decode(registers)
    if data_type == "bool":
        assert isinstance(value, bool)
    elif data_type.startswith("float") or scale != 1.0 or offset != 0.0:
        assert isinstance(value, float)
    else:
        assert isinstance(value, int) and not isinstance(value, bool)
    body = json.loads(events.telemetry(reading_of(value)).encode("/lab/gw/press-1", 1))
    if is_finite(value):
        assert "quality" not in body["data"] and body["data"]["values"]["p"] == value
    else:
        assert body["data"]["quality"] == {"p": "bad"} and body["data"]["values"]["p"] is None


@pytest.mark.parametrize("byte_order", BYTE_ORDERS)
@pytest.mark.parametrize("pattern", [0x7FC00000, 0xFFC00001, 0x7F800000, 0xFF800000, 0x7F800001],
                         ids=["nan", "negative-nan", "inf", "minus-inf", "signalling-nan"])
def test_every_non_finite_float32_pattern_is_a_bad_reading(byte_order: str,
                                                           pattern: int) -> None:
    codec = Codec("float32", byte_order)  # type: ignore[arg-type]
    value = codec.decode(Codec("uint32", byte_order).encode(pattern))  # type: ignore[arg-type]
    assert isinstance(value, float) and not is_finite(value)
    data = events.telemetry(reading_of(value)).data
    assert data["values"]["p"] is None and data["quality"] == {"p": "bad"}


@pytest.mark.parametrize("data_type", ["int64", "uint64", "int32"])
def test_scaling_past_the_float_range_is_a_bad_reading_not_an_error(data_type: str) -> None:
    codec = Codec(data_type, "ABCD", scale=1e308)  # type: ignore[arg-type]
    value = codec.decode([0x7FFF] + [0xFFFF] * (codec.width - 1))
    assert value == math.inf
    assert events.telemetry(reading_of(value)).data["quality"] == {"p": "bad"}


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(DATA_TYPES), st.sampled_from(BYTE_ORDERS),
       st.lists(st.integers() | st.floats() | st.none() | st.text(max_size=2), max_size=5))
def test_register_values_that_are_not_words_are_a_value_error(data_type: str, byte_order: str,
                                                             registers: list[Any]) -> None:
    codec = Codec(data_type, byte_order)  # type: ignore[arg-type]
    try:
        codec.decode(registers)
    except ValueError as exc:
        assert "registers" in str(exc), str(exc)
    else:
        assert len(registers) >= codec.width  # extra words after the value are ignored
        assert all(isinstance(r, int) and 0 <= r <= 0xFFFF for r in registers)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(DATA_TYPES), st.sampled_from(BYTE_ORDERS), st.binary(max_size=20),
       st.integers(-12, 12))
def test_any_buffer_and_offset_decode_or_raise_the_documented_error(
        data_type: str, byte_order: str, buffer: bytes, register_offset: int) -> None:
    codec = Codec(data_type, byte_order)  # type: ignore[arg-type]
    try:
        codec.decode_bytes(buffer, register_offset)
    except ValueError as exc:
        assert f"{data_type} needs {register_count(data_type)} registers" in str(exc)  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([t for t in DATA_TYPES if t != "bool"]), st.sampled_from(BYTE_ORDERS),
       st.data())
def test_encode_then_decode_is_the_identity(data_type: str, byte_order: str,
                                            data: st.DataObject) -> None:
    fmt = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "int64": "q",
           "uint64": "Q", "float32": "f", "float64": "d"}[data_type]
    raw = data.draw(st.binary(min_size=struct.calcsize(fmt), max_size=struct.calcsize(fmt)))
    (value,) = struct.unpack(">" + fmt, raw)
    codec = Codec(data_type, byte_order)  # type: ignore[arg-type]
    registers = codec.encode(value)
    assert registers_to_bytes(registers)  # all words
    again = codec.decode(registers)
    if isinstance(value, float) and math.isnan(value):
        assert isinstance(again, float) and math.isnan(again)
    elif data_type == "float32":  # the shortest decimal of the same float32
        assert struct.pack(">f", again) == struct.pack(">f", value)
    else:
        assert again == value


# -- MQTT ------------------------------------------------------------------------------------

TOPIC = "plant/press-1/telemetry"


def plan(points: list[tuple[str, str, str | None]], *, topic_filter: str = "plant/+/telemetry",
         from_topic: bool = False, max_bytes: int = 1 << 20) -> Plan:
    return Plan(device="dev", topic_filter=topic_filter,
                points=tuple(PointPlan(n, parse_path(p), k, None) for n, p, k in points),
                device_level=device_level(topic_filter) if from_topic else None,
                max_payload_bytes=max_bytes)


def carried(decoded: Any) -> list[dict[str, Any]]:
    """Whatever the codec let through, encoded and decoded again as the cloud will: each
    value with its quality."""
    out = []
    if decoded.frame is not None:
        body = events.telemetry(decoded.frame).encode("/lab/gw/dev", 1).encode()
        [event] = decode_event(body)
        data = event["data"]
        out += [{"value": value, "quality": data.get("quality", {}).get(point, "good")}
                for point, value in data["values"].items()]
    assert decoded.frame is not None or decoded.rejections
    assert all(r.reason and r.detail for r in decoded.rejections)
    return out


@pytest.mark.parametrize(("payload", "reasons"), [
    (b'{"x": "\xff"}', ["malformed"]),  # invalid UTF-8 inside a JSON string
    (b'{"x": "\xed\xa0\x80"}', ["malformed"]),  # a UTF-8-encoded surrogate
    (b'{"x": "\xc0\xaf"}', ["malformed"]),  # an overlong encoding of '/'
    (b'{"x": 1, "y": "\xe2\x82"}', ["malformed"]),  # a truncated sequence elsewhere
    (b'{"\xff": 1, "x": 2}', ["malformed"]),  # in a key
    (b'{"x": 1}\x00', ["malformed"]),
    (b'{"x": 1} {"x": 2}', ["malformed"]),
    (b'{"x": "a\x00b"}', ["malformed"]),  # raw control characters are not JSON
], ids=["in-string", "surrogate", "overlong", "truncated", "in-key", "trailing-nul",
        "two-documents", "raw-control"])
def test_invalid_utf8_or_json_anywhere_is_malformed(payload: bytes, reasons: list[str]) -> None:
    decoded = decode(plan([("x", "x", None)]), TOPIC, payload, RECEIVED)
    assert [r.reason for r in decoded.rejections] == reasons
    assert decoded.frame is None


@pytest.mark.parametrize(("literal", "value", "quality"), [
    ("1e400", None, "bad"), ("-1e400", None, "bad"),  # JSON numbers past float: infinity
    ("1.7976931348623157e308", 1.7976931348623157e308, "good"),
    ("5e-324", 5e-324, "good"), ("1e-400", 0.0, "good"), ("-0.0", -0.0, "good"),
    ("-9223372036854775808", -(2**63), "good"), ("-9223372036854775809", None, None),
    ('"\\u0000\\u001b[2J"', "\x00\x1b[2J", "good"),  # escaped control characters are text
    ('"' + "x" * 100_000 + '"', "x" * 100_000, "good"),
])
def test_numbers_and_strings_at_the_limits_reach_the_envelope_safely(
        literal: str, value: Any, quality: str | None) -> None:
    decoded = decode(plan([("x", "x", None)]), TOPIC, f'{{"x": {literal}}}'.encode(), RECEIVED)
    data = carried(decoded)
    if quality is None:
        assert [r.reason for r in decoded.rejections] == ["wrong_type"] and not data
        return
    [point] = data
    assert point["value"] == value and point["quality"] == quality
    if value == 0.0:
        assert math.copysign(1, point["value"]) == math.copysign(1, value)


@pytest.mark.parametrize("depth", [10, 500, 900])
def test_a_path_deep_into_a_deep_document(depth: int) -> None:
    path = ".".join(["a"] * depth)
    payload = ('{"a":' * depth + "7" + "}" * depth).encode()
    decoded = decode(plan([("x", path, "number")]), TOPIC, payload, RECEIVED)
    assert [d["value"] for d in carried(decoded)] == [7]


@settings(max_examples=500, deadline=None)
# A topic arrives as strict UTF-8 (paho gives None otherwise): no lone surrogates.
@given(st.text(st.characters(exclude_categories=("Cs",)), max_size=60))
def test_a_device_named_by_a_topic_level_is_a_valid_name_and_one_topic_level(
        level: str) -> None:
    p = plan([("x", "x", None)], topic_filter="plant/+/telemetry", from_topic=True)
    decoded = decode(p, f"plant/{level}/telemetry", b'{"x": 1}', RECEIVED)
    if decoded.frame is not None:
        assert decoded.frame.device == level
        TypeAdapter(Name).validate_python(decoded.frame.device)  # a device name's rules
        safe = sanitise_level(decoded.frame.device)
        assert "/" not in safe and "+" not in safe and "#" not in safe
        safe.encode("utf-8")
    else:
        assert [r.reason for r in decoded.rejections] in (["bad_device"], ["unexpected_topic"])
    carried(decoded)


json_leaves = (st.none() | st.booleans() | st.integers() | st.floats()
               | st.text(st.characters(exclude_categories=()), max_size=10))


@settings(max_examples=300, deadline=None)
@given(st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(["x", "a", "0", "1"]), inner, max_size=3),
                    max_leaves=40),
       st.sampled_from(["x", "a.x", "a.0", "0", "a.a.a", ""]),
       st.sampled_from([None, "number", "integer", "bool", "string"]))
def test_whatever_the_mqtt_codec_lets_through_the_cloud_can_decode(document: Any, path: str,
                                                                  kind: str | None) -> None:
    try:
        payload = json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")
    except ValueError:  # a surrogate in a key json cannot write
        return
    decoded = decode(plan([("p", path, kind)]), TOPIC, payload, RECEIVED)
    for point in carried(decoded):
        assert point["quality"] in ("good", "bad", "uncertain")


# -- OPC UA strings ----------------------------------------------------------------------------


def test_an_opc_ua_string_that_is_not_utf8_on_the_wire_is_a_bad_reading() -> None:
    from asyncua import ua
    from asyncua.common.utils import Buffer
    from asyncua.ua.ua_binary import variant_from_binary, variant_to_binary

    from drivers.opcua.codec import PointPlan
    from drivers.opcua.codec import sample as opcua_sample

    wire = variant_to_binary(ua.Variant("ok", ua.VariantType.String))
    hostile = wire[:-1] + b"\xff"  # what a server with a broken string encoder sends
    value = variant_from_binary(Buffer(hostile))
    point = opcua_sample(PointPlan("mill-2", "state", None), ua.DataValue(value))
    frame = one_frame("mill-2", [point], RECEIVED)
    data = json.loads(events.telemetry(frame).encode("/lab/gw/mill-2", 1))["data"]
    assert data.get("quality") == {"state": "bad"} or data["values"]["state"] == "o\ufffd"

"""gateway.cloudevents.decode: everything the gateway publishes decodes to itself, and no byte
string makes it raise anything but CloudEventError with one clear line."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import events
from gateway.cloudevents import MAX_PAYLOAD_BYTES, CloudEventError, decode, telemetry_readings
from gateway.config import CloudSection
from gateway.frames import Frame, Sample, frames_by_time, one_frame
from gateway.store import OutboxRow
from gateway.uplink_pack import Packer

SOURCE = "/lab/gw-test/press-1"


def encoded(event: events.Event, seq: int = 1) -> bytes:
    return event.encode(SOURCE, seq).encode()


def a_frame(**changes: Any) -> Frame:
    fields: dict[str, Any] = {"device": "press-1", "time": 1_790_000_000.25,
                              "values": {"temp": 21.5}, "received": 1_790_000_000.5}
    return Frame(**{**fields, **changes})


def valid_event() -> dict[str, Any]:
    return json.loads(encoded(events.telemetry(a_frame())))


def problem(payload: bytes) -> str:
    with pytest.raises(CloudEventError) as caught:
        decode(payload)
    message = str(caught.value)
    assert message and len(message.splitlines()) == 1, message
    return message


# -- what the gateway publishes decodes to itself --------------------------------------------

# Any text at all, lone surrogates excluded: a Python str holding one cannot be UTF-8 encoded,
# so it can never reach the wire (the MQTT codec refuses them before a frame is made).
names = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40)
values = (st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
          | st.floats() | st.text(st.characters(exclude_categories=("Cs",)), max_size=60))
times = st.floats(0, 253_402_300_799)
# Points from a small set too, so that a point given twice in one frame is common.
samples = st.builds(Sample, point=names | st.sampled_from(["a", "b"]), value=values,
                    quality=st.sampled_from(["good", "bad", "uncertain"]),
                    time=st.none() | times)
frames = st.builds(one_frame, device=names, samples=st.lists(samples, min_size=1, max_size=8),
                   received=times)


def travelling(device: str, drawn: list[Sample], received: float,
               by_time: bool) -> list[tuple[Any, ...]]:
    """What each sample should arrive as, (device, point, time, value, quality) as
    `telemetry_readings` gives them: where a point is given twice in one frame the last
    value counts; a value JSON cannot hold is null and bad, and a null is never good."""
    last: dict[Any, Sample] = {}
    stamps: dict[str, float] = {}
    for sample in drawn:
        at = received if sample.time is None else sample.time
        last[(at, sample.point) if by_time else sample.point] = sample
        if sample.time is not None:
            stamps[sample.point] = sample.time
    expected = []
    for key, sample in last.items():
        at = key[0] if by_time else stamps.get(sample.point, received)
        value, quality = sample.value, sample.quality
        if isinstance(value, float) and not math.isfinite(value):
            value, quality = None, "bad"
        elif value is None and quality == "good":
            quality = "bad"
        expected.append((device, sample.point, events.rfc3339(at), value, quality))
    return expected


@settings(max_examples=300, deadline=None)
@given(names, st.lists(samples, min_size=1, max_size=8), times, st.booleans(),
       st.integers(1, 2**53))
def test_every_telemetry_event_the_gateway_encodes_decodes_to_itself(
        device: str, drawn: list[Sample], received: float, by_time: bool, seq: int) -> None:
    made = (frames_by_time(device, drawn, received) if by_time
            else [one_frame(device, drawn, received)])
    arrived: list[tuple[Any, ...]] = []
    for frame in made:
        event = events.telemetry(frame)
        body = event.encode(SOURCE, seq)
        [decoded] = decode(body.encode())
        assert decoded == json.loads(body)
        assert decoded["id"] == event.id and decoded["seq"] == seq
        data = decoded["data"]
        assert decoded["subject"] == data["device"] == device
        assert decoded["time"] == data["time"] == events.rfc3339(frame.time)
        assert list(data["values"]) == list(frame.values)
        # quality and times are there only when they name a point; a subscription's frame
        # holds one time, so it never needs `times`.
        assert data.get("quality", True) and data.get("times", True)
        assert set(data.get("times", {})) == set(frame.times)
        assert not (by_time and "times" in data)
        arrived += telemetry_readings(decoded)
    # Every sample arrives once, as its value (null where JSON has no number for it), its
    # quality and its own time, compared by their JSON text (so 1, 1.0 and true differ).
    assert sorted(json.dumps(r) for r in arrived) == sorted(
        json.dumps(r) for r in travelling(device, drawn, received, by_time))


@settings(max_examples=100, deadline=None)
@given(st.lists(frames, min_size=1, max_size=30), st.integers(1, 50),
       st.integers(1024, 8192), st.sampled_from(["none", "zstd"]))
def test_batches_packed_by_the_uplink_decode_to_their_events(batch: list[Frame],
                                                             max_events: int,
                                                             max_bytes: int,
                                                             compression: str) -> None:
    packer = Packer(CloudSection(batch_max_events=max_events, batch_max_bytes=max_bytes,
                                 mqtt_version="5", compression=compression), "lab/gw-test")
    bodies = [events.telemetry(f).encode(SOURCE, n) for n, f in enumerate(batch, 1)]
    rows = [OutboxRow(n, f.device, "telemetry", body, 0.0)
            for n, (f, body) in enumerate(zip(batch, bodies, strict=True), 1)]
    seen = []
    for message in packer.pack(rows):
        decoded = decode(message.payload)
        assert [e["seq"] for e in decoded] == message.positions
        seen += [json.dumps(e, sort_keys=True) for e in decoded]
    assert sorted(seen) == sorted(json.dumps(json.loads(b), sort_keys=True) for b in bodies)


def test_every_kind_of_event_decodes() -> None:
    made = [
        events.telemetry(a_frame(values={"temp": None}, quality={"temp": "bad"})),
        events.device_birth("press-1", []),
        events.device_status("press-1", "offline", "connection refused"),
        events.data_dropped({"capacity": 5}, 1_790_000_000.0, 1_790_000_100.0, ["press-1"]),
        events.maintenance_needed("press-1", {"probability": 0.9}, "k", at=1_790_000_000.0),
    ]
    batch = ("[" + ",".join(e.encode(SOURCE, n) for n, e in enumerate(made, 1)) + "]").encode()
    decoded = decode(batch)
    assert [e["type"] for e in decoded] == [f"io.millwright.{e.kind}" for e in made]
    assert decode(b"[]") == []  # the JSON batch format allows an empty batch


# -- no bytes crash it ---------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(["specversion", "id", "source", "type", "time", "seq",
                                       "data", "data_base64", "subject", "Bad-Name", ""])
                      | st.text(max_size=6), inner, max_size=6),
    max_leaves=25)


def decodes_or_refuses(payload: bytes) -> None:
    try:
        decoded = decode(payload)
    except CloudEventError as exc:
        assert str(exc) and len(str(exc).splitlines()) == 1, str(exc)
        return
    assert isinstance(decoded, list) and all(isinstance(e, dict) for e in decoded)
    for event in decoded:
        assert event["specversion"] == "1.0"
        for name in ("id", "source", "type"):
            assert isinstance(event[name], str) and event[name]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=500))
def test_no_bytes_crash_the_decoder(payload: bytes) -> None:
    decodes_or_refuses(payload)


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_no_json_document_crashes_the_decoder(document: Any) -> None:
    decodes_or_refuses(json.dumps(document).encode())  # NaN and Infinity as Python writes them


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_a_valid_event_with_one_attribute_changed_decodes_or_is_refused(
        data: st.DataObject) -> None:
    event = valid_event()
    name = data.draw(st.sampled_from([*event, "data_base64", "extra", "Bad_Name"]))
    if data.draw(st.booleans()) and name in event:
        del event[name]
    else:
        event[name] = data.draw(json_values)
    decodes_or_refuses(json.dumps(event).encode())
    decodes_or_refuses(json.dumps([valid_event(), event]).encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=8), st.integers(0, 400))
def test_corrupted_bytes_inside_a_valid_event_decode_or_are_refused(noise: bytes,
                                                                   at: int) -> None:
    body = bytearray(encoded(events.telemetry(a_frame())))
    at %= len(body)
    body[at:at + len(noise)] = noise
    decodes_or_refuses(bytes(body))


# -- clear refusals ------------------------------------------------------------------------


def with_(**changes: Any) -> bytes:
    event = valid_event()
    for key, value in changes.items():
        if value is ...:
            del event[key]
        else:
            event[key] = value
    return json.dumps(event).encode()


@pytest.mark.parametrize(("payload", "fragment"), [
    (b"", "payload is not JSON"),
    (b"\xff\xfe{}", "payload is not JSON"),
    (b'\xef\xbb\xbf{"id": 1}', "payload is not JSON"),  # a BOM
    (b'{"id": "\xed\xa0\x80"}', "payload is not JSON"),  # an encoded surrogate: not UTF-8
    (b'{"id": "\xc0\xaf"}', "payload is not JSON"),  # an overlong encoding of '/'
    (b'{"id": "\\ud800"}', "payload is not JSON"),  # an escaped lone surrogate
    (b'{"seq": NaN}', "payload is not JSON"),
    (b'{"seq": 1e400}', "payload is not JSON"),
    (b"[" * 5000 + b"]" * 5000, "payload is not JSON"),
    (b'{"a": ' * 5000 + b"1" + b"}" * 5000, "payload is not JSON"),
    (b"42", "must be a JSON object (one event) or an array (a batch), got a number"),
    (b'"event"', "got a string"),
    (b"null", "got null"),
    (b"[1]", "event 0 of the batch: must be a JSON object, got a number"),
    (b"[[]]", "event 0 of the batch: must be a JSON object, got an array"),
    (with_(specversion=...), "the event: required attribute 'specversion' is missing"),
    (with_(id=...), "required attribute 'id' is missing"),
    (with_(source=...), "required attribute 'source' is missing"),
    (with_(type=...), "required attribute 'type' is missing"),
    (with_(id=None), "required attribute 'id' is missing"),
    (with_(id=""), "'id' must be a non-empty string, got ''"),
    (with_(id=7), "'id' must be a non-empty string, got 7"),
    (with_(type={"x": 1}), "'type' must be a non-empty string, got an object"),
    (with_(specversion="0.3"), "'specversion' must be \"1.0\", got '0.3'"),
    (with_(specversion=1.0), "'specversion' must be a non-empty string, got 1.0"),
    (with_(seq=-1), "'seq' must be a non-negative integer, got -1"),
    (with_(seq=True), "'seq' must be a non-negative integer, got True"),
    (with_(seq=1.5), "'seq' must be a non-negative integer"),
    (with_(seq=10**30), "'seq' must be a non-negative integer"),  # past 64 bits: a float
    (with_(seq="1"), "'seq' must be a non-negative integer, got '1'"),
    (with_(time="yesterday"), "'time' must be an RFC 3339 timestamp, got 'yesterday'"),
    (with_(time="2026-02-30T00:00:00Z"), "'time' must be an RFC 3339 timestamp"),
    (with_(time="2026-01-01"), "'time' must be an RFC 3339 timestamp"),
    (with_(time="2026-01-01T00:00:00"), "'time' must be an RFC 3339 timestamp"),  # no offset
    (with_(time=1_790_000_000), "'time' must be an RFC 3339 timestamp, got 1790000000"),
    (with_(subject=5), "'subject' must be a string, got 5"),
    (with_(datacontenttype=[]), "attribute 'datacontenttype' must be a string, number or "
                                "boolean, got an array"),
    (with_(Seq=1), "attribute name 'Seq' is not allowed"),
    (with_(**{"my-ext": 1}), "attribute name 'my-ext' is not allowed"),
    (with_(**{"": 1}), "attribute name '' is not allowed"),
    (with_(ext={"nested": 1}), "attribute 'ext' must be a string, number or boolean"),
    (with_(data_base64="AA=="), "has both 'data' and 'data_base64'"),
    (b"[" + with_() + b"," + with_(id=...) + b"]",
     "event 1 of the batch: required attribute 'id' is missing"),
])
def test_refusals_say_what_and_where(payload: bytes, fragment: str) -> None:
    assert fragment in problem(payload)


@pytest.mark.parametrize("time", [
    "2026-01-01T00:00:00Z", "2026-01-01t00:00:00z", "2026-01-01T00:00:00.123456789Z",
    "2026-01-01T01:00:00+01:00", "2016-12-31T23:59:60Z", "1970-01-01T00:00:00-00:00",
])
def test_rfc3339_times_are_accepted(time: str) -> None:
    assert decode(with_(time=time))[0]["time"] == time


def test_long_values_are_shortened_in_the_message() -> None:
    message = problem(with_(specversion="x" * 100_000))
    assert len(message) < 200


def test_oversized_payload_is_refused_before_parsing() -> None:
    big = b"[" + b" " * MAX_PAYLOAD_BYTES + b"]"
    assert "exceeds the" in problem(big)
    with pytest.raises(CloudEventError, match="payload of 200 bytes exceeds the 100-byte limit"):
        decode(b" " * 200, max_bytes=100)


def test_non_bytes_are_refused() -> None:
    with pytest.raises(CloudEventError, match="payload must be bytes, got str"):
        decode("{}")  # type: ignore[arg-type]


def test_unicode_and_control_characters_travel_intact() -> None:
    hostile = "Presse S\u00fcd \u202e\U0001f600 \x00\x1b[2J\t/+#"
    event = events.telemetry(a_frame(device=hostile, values={hostile: hostile}))
    [decoded] = decode(encoded(event))
    assert decoded["data"]["device"] == hostile and decoded["subject"] == hostile
    assert decoded["data"]["values"] == {hostile: hostile}

"""The envelope: one frame per telemetry event, deterministic ids, births, timestamps."""

import json
import math
from datetime import UTC, datetime

import pytest

from gateway import events
from gateway.frames import Frame, PointSpec, Sample, frames_by_time, one_frame

T = 1_790_000_000.25


def frame(**changes: object) -> Frame:
    fields: dict[str, object] = {"device": "press-1", "time": T, "received": T + 0.25,
                                 "values": {"temp": 71.25, "running": True}}
    fields.update(changes)
    return Frame(**fields)  # type: ignore[arg-type]  # the fields of a Frame, by name


def test_the_same_frame_has_the_same_id_whenever_it_is_received() -> None:
    assert events.telemetry(frame()).id == events.telemetry(frame(received=T + 9)).id


@pytest.mark.parametrize("change", [
    {"device": "press-2"}, {"time": T + 0.000001}, {"values": {"temp": 71.26, "running": True}},
    {"values": {"temp": 71.25, "running": False}}, {"values": {"temp": 71.25}},
    {"values": {"temp": 71.25, "running": True, "speed": 0}},
    {"values": {"temp": 71.25, "running": 1}},
    {"quality": {"temp": "uncertain"}}, {"times": {"running": T - 5}},
])
def test_anything_that_makes_a_frame_what_it_is_changes_its_id(change: dict[str, object]) -> None:
    assert events.telemetry(frame(**change)).id != events.telemetry(frame()).id


@pytest.mark.parametrize("change", [
    {"quality": {"temp": "bad"}}, {"quality": {"running": "uncertain"}},
    {"quality": {"temp": "uncertain", "running": "bad"}},
    {"times": {"running": T - 5.000001}}, {"times": {"temp": T - 5}},
    {"times": {"running": T - 5, "temp": T - 1}},
])
def test_a_different_quality_or_point_time_changes_the_id(change: dict[str, object]) -> None:
    marked: dict[str, object] = {"quality": {"temp": "uncertain"}, "times": {"running": T - 5}}
    same = events.telemetry(frame(**marked, received=T + 9)).id
    assert same == events.telemetry(frame(**marked)).id
    assert events.telemetry(frame(**{**marked, **change})).id != same


def test_encoded_telemetry_is_a_cloudevent_holding_the_frame() -> None:
    body = json.loads(events.telemetry(frame()).encode("/site/gw/press-1", 7))
    assert body == {
        "specversion": "1.0", "id": events.telemetry(frame()).id, "source": "/site/gw/press-1",
        "type": "io.millwright.telemetry", "time": "2026-09-21T14:13:20.250000Z",
        "subject": "press-1", "datacontenttype": "application/json", "seq": 7,
        "schemaversion": "2",
        "data": {"device": "press-1", "time": "2026-09-21T14:13:20.250000Z",
                 "values": {"temp": 71.25, "running": True}},
    }
    assert events.telemetry(frame()).readings == 2


def test_quality_and_times_appear_only_for_the_points_that_need_them() -> None:
    data = events.telemetry(frame(quality={"temp": "uncertain"},
                                  times={"running": T - 2.5})).data
    assert data["quality"] == {"temp": "uncertain"}
    assert data["times"] == {"running": "2026-09-21T14:13:17.750000Z"}
    assert "clock_unsynchronised" not in data


def test_quality_and_times_are_left_out_when_every_point_is_good_and_on_time() -> None:
    polled = one_frame("d", [Sample("p", 1.5, time=T), Sample("q", 2, time=T)], T + 1)
    assert events.telemetry(polled).data == {
        "device": "d", "time": events.rfc3339(T), "values": {"p": 1.5, "q": 2}}
    # One point late and one uncertain: only those two are named, each where it belongs.
    mixed = one_frame("d", [Sample("p", 1.5, time=T), Sample("q", 2, time=T),
                            Sample("r", 3, "uncertain", time=T), Sample("s", 4, time=T - 1)],
                      T + 1)
    data = events.telemetry(mixed).data
    assert data["time"] == events.rfc3339(T)
    assert data["times"] == {"s": events.rfc3339(T - 1)}
    assert data["quality"] == {"r": "uncertain"}
    for made in frames_by_time("d", [Sample("p", 1.5, time=T), Sample("q", 2, time=T - 1)], T):
        assert set(events.telemetry(made).data) == {"device", "time", "values"}


@pytest.mark.parametrize("builder", ["one_frame", "frames_by_time"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_travel_as_null_with_bad_quality(value: float, builder: str) -> None:
    samples = [Sample("p", value, time=T), Sample("q", 1.5, time=T)]
    [made] = ([one_frame("d", samples, T + 1)] if builder == "one_frame"
              else frames_by_time("d", samples, T + 1))
    body = events.telemetry(made).encode("/s", 1)
    assert "NaN" not in body and "Infinity" not in body
    data = json.loads(body)["data"]
    assert data["values"] == {"p": None, "q": 1.5} and data["quality"] == {"p": "bad"}
    assert data["time"] == events.rfc3339(T) and "times" not in data


def test_a_missing_value_is_never_good() -> None:
    made = one_frame("d", [Sample("p", None), Sample("q", None, "uncertain")], T)
    assert events.telemetry(made).data["quality"] == {"p": "bad", "q": "uncertain"}


@pytest.mark.parametrize("ts", [0.0, 1.5, 1_700_000_000.999999, 1_790_000_000.123456, 4e9,
                                1_767_225_600.123])
def test_rfc3339_matches_datetime(ts: float) -> None:
    expected = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert events.rfc3339(ts) == expected


def test_frames_from_an_unset_clock_are_flagged() -> None:
    early = events.telemetry(Frame("d", 86_400.0, {"p": 1}, 86_400.0))
    late = events.telemetry(Frame("d", 1_790_000_000.0, {"p": 1}, 1_790_000_000.0))
    assert early.data["clock_unsynchronised"] is True
    assert "clock_unsynchronised" not in late.data
    # The line is November 2023: a frame just before it is flagged, one at it is not.
    sane = events.CLOCK_SANE_AFTER
    assert events.rfc3339(sane).startswith("2023-11-")
    just_before = events.telemetry(Frame("d", sane - 0.001, {"p": 1}, sane + 60))
    at_the_line = events.telemetry(Frame("d", sane, {"p": 1}, sane - 60))
    assert just_before.data["clock_unsynchronised"] is True
    assert "clock_unsynchronised" not in at_the_line.data
    # It is the frame's time that counts, not when the gateway received it.
    assert "clock_unsynchronised" not in events.telemetry(Frame("d", T, {"p": 1}, 0.0)).data


def test_text_that_is_not_valid_unicode_still_gets_an_id_and_a_body() -> None:
    broken = events.telemetry(frame(values={"label": "caf\udce9"}))
    assert len(broken.id) == 32
    assert json.loads(broken.encode("/s", 1))["data"]["values"] == {"label": "caf\ufffd"}


def test_a_birth_describes_each_point_once() -> None:
    points = [PointSpec("temp", "float32", "degC"), PointSpec("running", "bool")]
    birth = events.device_birth("press-1", points, at=T)
    body = json.loads(birth.encode("/site/gw/press-1", 1))
    assert body["type"] == "io.millwright.device_birth" and body["subject"] == "press-1"
    assert body["data"] == {"device": "press-1", "points": [
        {"name": "temp", "type": "float32", "unit": "degC", "writable": False},
        {"name": "running", "type": "bool", "unit": None, "writable": False}]}
    # A birth is an event of its time: announcing the same points later is a new event.
    assert events.device_birth("press-1", points, at=T).id == birth.id
    assert events.device_birth("press-1", points, at=T + 60).id != birth.id
    assert events.device_birth("press-1", points[:1], at=T).id != birth.id
    assert body["time"] == events.rfc3339(T) and birth.readings == 0


def test_priorities_put_maintenance_last_to_go() -> None:
    order = sorted(events.KINDS, key=events.PRIORITY.__getitem__)
    assert order[0] == events.TELEMETRY and order[-1] == events.MAINTENANCE_NEEDED
    assert events.PRIORITY[events.DEVICE_BIRTH] > events.PRIORITY[events.TELEMETRY]


def test_a_drop_notice_counts_readings_too() -> None:
    notice = events.data_dropped({"capacity": 3}, T, T + 1, ["press-1"], at=T + 2,
                                 readings={"capacity": 300})
    assert notice.data["dropped"] == 3 and notice.data["readings"] == 300
    assert notice.data["readings_by_reason"] == {"capacity": 300}

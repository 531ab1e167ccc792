"""Frames and report by exception, without I/O: how samples become frames, what is sent."""

from __future__ import annotations

import math
from typing import Any

import pytest

from gateway.config import validate
from gateway.errors import ConfigError
from gateway.frames import Frame, Sample, frames_by_time, one_frame
from gateway.report import ExceptionFilter
from tests.support import configs

T0 = 1_790_000_000.0


def test_a_poll_is_one_frame_at_the_time_most_points_share() -> None:
    frame = one_frame("mill-2", [Sample("a", 1.0, time=T0), Sample("b", 2, time=T0),
                                 Sample("c", True, time=T0 - 30), Sample("d", "x")], T0 + 0.5)
    assert (frame.device, frame.time, frame.received) == ("mill-2", T0, T0 + 0.5)
    assert frame.values == {"a": 1.0, "b": 2, "c": True, "d": "x"}
    # Only the points whose time differs are named: c had its own, d had none (received).
    assert frame.times == {"c": T0 - 30, "d": T0 + 0.5}
    assert frame.quality == {}


def test_a_poll_without_source_times_is_sampled_when_received() -> None:
    frame = one_frame("press-1", [Sample("a", 1.0), Sample("b", None, "bad")], T0)
    assert (frame.time, frame.times, frame.quality) == (T0, {}, {"b": "bad"})


def test_notifications_become_one_frame_per_source_time() -> None:
    frames = frames_by_time("mill-2", [
        Sample("a", 1.0, time=T0 + 1), Sample("a", 0.5, time=T0), Sample("b", 7, time=T0),
        Sample("b", 8, time=T0 + 1), Sample("c", 3.0, "uncertain", time=T0 + 1)], T0 + 2)
    assert [(f.time, f.values, f.quality) for f in frames] == [
        (T0, {"a": 0.5, "b": 7}, {}),
        (T0 + 1, {"a": 1.0, "b": 8, "c": 3.0}, {"c": "uncertain"})]
    assert all(f.times == {} and f.received == T0 + 2 for f in frames)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, None])
def test_nan_infinity_and_null_are_bad_nulls(value: float | None) -> None:
    for frame in (one_frame("d", [Sample("x", value)], T0),
                  frames_by_time("d", [Sample("x", value)], T0)[0]):
        assert frame.values == {"x": None} and frame.quality == {"x": "bad"}


def test_a_later_good_value_of_a_point_clears_its_bad_quality() -> None:
    [frame] = frames_by_time("d", [Sample("x", None, "bad", T0), Sample("x", 2.0, time=T0)], T0)
    assert (frame.values, frame.quality) == ({"x": 2.0}, {})


# -- report by exception -------------------------------------------------------------------


def device(**options: Any) -> dict[str, Any]:
    points = options.pop("points", [{"name": "t", "path": "t"}, {"name": "s", "path": "s"}])
    return {"name": "d", "protocol": "mqtt", "url": "mqtt://127.0.0.1:1", "topic": "p/d",
            "points": points, **options}


def exception_filter(**options: Any) -> ExceptionFilter:
    config = validate({"gateway": {"id": "g"}, "devices": [device(**options)]})
    made = ExceptionFilter.for_config(config.devices[0])
    assert made is not None
    return made


def frame(at: float, quality: dict[str, Any] | None = None, **values: Any) -> Frame:
    return Frame("d", at, values, at, quality or {})


def sent(filt: ExceptionFilter, *frames: Frame) -> list[dict[str, Any] | None]:
    out = []
    for f in frames:
        kept = filt.apply(f)
        out.append(None if kept is None else kept.values)
    return out


def test_always_is_no_filter_at_all() -> None:
    config = validate({"gateway": {"id": "g"}, "devices": [device()]})
    assert ExceptionFilter.for_config(config.devices[0]) is None


def test_on_change_sends_changes_only() -> None:
    filt = exception_filter(report="on_change")
    assert sent(filt, frame(T0, t=20.0, s="run"), frame(T0 + 1, t=20.0, s="run"),
                frame(T0 + 2, t=20.5, s="run"), frame(T0 + 3, t=20.5, s="stop")) == [
        {"t": 20.0, "s": "run"}, None, {"t": 20.5}, {"s": "stop"}]


def test_a_deadband_holds_back_small_moves_from_the_last_value_sent() -> None:
    filt = exception_filter(report="on_change", deadband=0.5)
    assert sent(filt, *(frame(T0 + i, t=v, s="run") for i, v in
                        enumerate([20.0, 20.3, 20.4, 20.6, 20.2, 19.9]))) == [
        {"t": 20.0, "s": "run"}, None, None, {"t": 20.6}, None, {"t": 19.9}]


def test_a_heartbeat_resends_quiet_points_in_sample_time() -> None:
    filt = exception_filter(report="on_change", heartbeat_s=10.0)
    assert sent(filt, frame(T0, t=1.0, s="run"), frame(T0 + 5, t=1.0, s="run"),
                frame(T0 + 10, t=1.0, s="run"), frame(T0 + 15, t=2.0, s="run"),
                frame(T0 + 20, t=2.0, s="run")) == [
        {"t": 1.0, "s": "run"}, None, {"t": 1.0, "s": "run"}, {"t": 2.0}, {"s": "run"}]


def test_a_quality_change_is_a_change() -> None:
    filt = exception_filter(report="on_change")
    got = [filt.apply(f) for f in (frame(T0, t=None, quality={"t": "bad"}),
                                   frame(T0 + 1, t=None, quality={"t": "bad"}),
                                   frame(T0 + 2, t=None, quality={"t": "uncertain"}))]
    assert got[1] is None
    assert got[2] is not None and got[2].quality == {"t": "uncertain"}


def test_points_override_their_device() -> None:
    filt = exception_filter(report="on_change", points=[
        {"name": "t", "path": "t", "deadband": 1.0},
        {"name": "s", "path": "s", "report": "always"}])
    assert sent(filt, frame(T0, t=1.0, s="a"), frame(T0 + 1, t=1.5, s="a"),
                frame(T0 + 2, t=2.5, s="a")) == [
        {"t": 1.0, "s": "a"}, {"s": "a"}, {"t": 2.5, "s": "a"}]


def test_a_reconnect_sends_everything_again() -> None:
    filt = exception_filter(report="on_change")
    assert sent(filt, frame(T0, t=1.0, s="a"), frame(T0 + 1, t=1.0, s="a")) == [
        {"t": 1.0, "s": "a"}, None]
    filt.reset()
    assert sent(filt, frame(T0 + 2, t=1.0, s="a")) == [{"t": 1.0, "s": "a"}]


def test_true_and_one_are_different_values() -> None:
    filt = exception_filter(report="on_change")
    assert sent(filt, frame(T0, t=1, s=True), frame(T0 + 1, t=True, s=1)) == [
        {"t": 1, "s": True}, {"t": True, "s": 1}]


@pytest.mark.parametrize(("options", "where"), [
    ({"deadband": 0.5}, "devices[0] (device 'd')"),
    ({"heartbeat_s": 60}, "devices[0] (device 'd')"),
    ({"points": [{"name": "t", "path": "t", "deadband": 0.5}]}, "devices[0] (device 'd')"),
])
def test_deadband_and_heartbeat_need_on_change(options: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate({"gateway": {"id": "g"}, "devices": [device(**options)]})
    [line] = caught.value.problems
    assert line.startswith(where) and 'apply only with report = "on_change"' in line


def test_report_settings_are_checked(tmp_path: Any) -> None:
    raw = configs.base(tmp_path, "mqtt://127.0.0.1:1",
                       [device(report="sometimes", deadband=-1)])
    with pytest.raises(ConfigError) as caught:
        validate(raw)
    text = "\n".join(caught.value.problems)
    assert "devices[0].report (device 'd'): Input should be 'always' or 'on_change'" in text
    assert "devices[0].deadband (device 'd'): Input should be greater than or equal to 0" in text

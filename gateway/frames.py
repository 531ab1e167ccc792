"""Frames: the values one device produced at one sampling instant, the unit of the data plane.

One Modbus poll, one plant MQTT message, or the notifications of one OPC UA publish
that share a source time is one frame; it travels as one telemetry event and one
outbox row. A frame says each value once, under its point's name; what describes
the points (type, unit) travels once per device, in its birth (`PointSpec`).

`quality` lists only the points that are not good, and `times` only the points
whose own time differs from the frame's, so the common frame carries nothing but
its values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

Quality = Literal["good", "bad", "uncertain"]
Value = float | int | bool | str | None


@dataclass(slots=True)
class Frame:
    """What one device gave at one instant; `received` is the gateway's clock (not sent)."""

    device: str
    time: float  # the sample time, epoch seconds: the device's own when it gives one
    values: dict[str, Value]
    received: float
    quality: dict[str, Quality] = field(default_factory=dict)  # non-good points only
    times: dict[str, float] = field(default_factory=dict)  # points whose time differs

    def time_of(self, point: str) -> float:
        return self.times.get(point, self.time)

    def quality_of(self, point: str) -> Quality:
        return self.quality.get(point, "good")


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one point as a driver saw it, before it is placed in a frame."""

    point: str
    value: Value
    quality: Quality = "good"
    time: float | None = None  # the point's own source time, when the device gives one


@dataclass(frozen=True, slots=True)
class PointSpec:
    """What a device's birth says about one point."""

    name: str
    type: str | None = None
    unit: str | None = None
    writable: bool = False

    def as_json(self) -> dict[str, object]:
        return {"name": self.name, "type": self.type, "unit": self.unit,
                "writable": self.writable}


def one_frame(device: str, samples: Iterable[Sample], received: float) -> Frame:
    """All `samples` in one frame (a poll): its time is the one most points share, or
    `received` when none has a time; the other points' times go in `times`."""
    frame = Frame(device, received, {}, received)
    stamps: dict[str, float] = {}
    for sample in samples:
        _put(frame, sample)
        if sample.time is not None:
            stamps[sample.point] = sample.time
    if stamps:
        counts: dict[float, int] = {}
        for stamp in stamps.values():
            counts[stamp] = counts.get(stamp, 0) + 1
        frame.time = max(counts, key=counts.__getitem__)
        frame.times = {point: stamp for point, stamp in stamps.items() if stamp != frame.time}
        frame.times.update((point, received) for point in frame.values if point not in stamps)
    return frame


def frames_by_time(device: str, samples: Iterable[Sample], received: float) -> list[Frame]:
    """One frame per distinct sample time (a subscription's notifications), in time order;
    a point given twice at one time keeps its last value."""
    by_time: dict[float, Frame] = {}
    for sample in samples:
        at = received if sample.time is None else sample.time
        frame = by_time.get(at)
        if frame is None:
            frame = by_time[at] = Frame(device, at, {}, received)
        _put(frame, sample)
    return [by_time[at] for at in sorted(by_time)]


def _put(frame: Frame, sample: Sample) -> None:
    value, quality = sample.value, sample.quality
    # JSON has no NaN or infinity: such a value travels as null, and null is never good.
    if isinstance(value, float) and not math.isfinite(value):
        value, quality = None, "bad"
    elif value is None and quality == "good":
        quality = "bad"
    frame.values[sample.point] = value
    if quality != "good":
        frame.quality[sample.point] = quality
    else:
        frame.quality.pop(sample.point, None)

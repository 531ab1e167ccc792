"""Report by exception: a point is sent when it changed, or when its heartbeat is due.

Per device (`report`, `deadband`, `heartbeat_s`) with per-point overrides, as
ThingsBoard's report strategies, EdgeX's `onChange` and SiteWise's deadband do:
- "always" (the default) sends every value of every frame;
- "on_change" sends a point's value when it differs from the last one *sent* (for
  numbers, by more than `deadband`), when its quality changed, and, with
  `heartbeat_s`, when it was last sent that long ago (in sample time), so a quiet
  point can be told from a dead device.
A frame left with no point is not sent at all. After a (re)connect every point is
sent once again (`reset`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config_base import DeviceConfig
from gateway.frames import Frame, Quality, Value


@dataclass(frozen=True, slots=True)
class Policy:
    on_change: bool
    deadband: float = 0.0
    heartbeat_s: float | None = None


@dataclass(slots=True)
class _Sent:
    value: Value
    quality: Quality
    at: float


class ExceptionFilter:
    """The report-by-exception state of one driver's devices."""

    def __init__(self, default: Policy, per_point: dict[str, Policy]) -> None:
        self._default = default
        self._per_point = per_point
        self._sent: dict[tuple[str, str], _Sent] = {}

    @classmethod
    def for_config(cls, config: DeviceConfig) -> ExceptionFilter | None:
        """The filter for a device table; None when every point is reported always."""
        default = _policy(config.report, config.deadband, config.heartbeat_s)
        per_point = {}
        for point in getattr(config, "points", ()):
            report = getattr(point, "report", None) or config.report
            deadband = _point_deadband(point)
            heartbeat = getattr(point, "heartbeat_s", None)
            per_point[point.name] = _policy(
                report, config.deadband if deadband is None else deadband,
                config.heartbeat_s if heartbeat is None else heartbeat)
        if not default.on_change and not any(p.on_change for p in per_point.values()):
            return None
        return cls(default, per_point)

    def reset(self) -> None:
        """A (re)connect: every point is sent in full again."""
        self._sent.clear()

    def apply(self, frame: Frame) -> Frame | None:
        """The part of `frame` to send; None when nothing in it is to be sent."""
        kept: dict[str, Value] = {}
        for point, value in frame.values.items():
            policy = self._per_point.get(point, self._default)
            quality = frame.quality_of(point)
            at = frame.time_of(point)
            key = (frame.device, point)
            if policy.on_change:
                sent = self._sent.get(key)
                if sent is not None and not _due(sent, value, quality, at, policy):
                    continue
            self._sent[key] = _Sent(value, quality, at)
            kept[point] = value
        if len(kept) == len(frame.values):
            return frame
        if not kept:
            return None
        return Frame(frame.device, frame.time, kept, frame.received,
                     {p: q for p, q in frame.quality.items() if p in kept},
                     {p: t for p, t in frame.times.items() if p in kept})


def _policy(report: str, deadband: float | None, heartbeat_s: float | None) -> Policy:
    return Policy(report == "on_change", deadband or 0.0, heartbeat_s)


def _point_deadband(point: Any) -> float | None:
    # An OPC UA point's percent deadband is the server's alone; an absolute one is both.
    if getattr(point, "deadband_type", "absolute") != "absolute":
        return None
    deadband = getattr(point, "deadband", None)
    return deadband if isinstance(deadband, int | float) else None


def _due(sent: _Sent, value: Value, quality: Quality, at: float, policy: Policy) -> bool:
    if quality != sent.quality:
        return True
    if policy.heartbeat_s is not None and at - sent.at >= policy.heartbeat_s:
        return True
    if value is None or sent.value is None:
        return value is not sent.value
    if _is_number(value) and _is_number(sent.value):
        return abs(value - sent.value) > policy.deadband  # type: ignore[operator]
    return type(value) is not type(sent.value) or value != sent.value


def _is_number(value: Value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)

"""What the commissioning page shows, kept in memory: bounded, fed by the runtime, read per tick.

The runtime tells a `PageState` what happens (frames accepted, devices online or
offline, poll durations, errors, alarms raised); the page reads `snapshot()` once a
tick and `history()` when a browser connects. Nothing here reads the outbox file:
the outbox, uplink and predictor figures come from the live objects
(`gateway_figures`). Memory is bounded: at most MAX_DEVICES devices of
MAX_POINTS points, one value per point, a sparkline ring of SPARK_SAMPLES values
per numeric point (one per SPARK_STEP_S), ALARM_HISTORY alarms per asset.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.events import MAINTENANCE_NEEDED, Event
from gateway.frames import Frame, PointSpec

SPARK_STEP_S = 2.0
SPARK_SAMPLES = 150  # five minutes at one sample per SPARK_STEP_S
MAX_DEVICES = 500  # devices named by frames (an MQTT wildcard) beyond the configured ones
MAX_POINTS = 2000
ALARM_HISTORY = 20


@dataclass(slots=True)
class _Device:
    name: str
    protocol: str
    poll_interval_s: float | None
    units: dict[str, str | None] = field(default_factory=dict)
    online: bool = False
    since: float | None = None  # wall time of the last online/offline change
    reason: str = "not connected yet"
    errors: int = 0
    last_error: str | None = None
    frames: int = 0
    last_frame: float | None = None
    poll_s: float | None = None  # how long the last poll took
    interval_s: float | None = None  # measured time between the last two frames
    latest: dict[str, Frame] = field(default_factory=dict)  # point -> frame of its last value
    spark: dict[str, deque[tuple[float, float]]] = field(default_factory=dict)
    spark_due: float = 0.0

    def view(self) -> dict[str, Any]:
        units = self.units
        # Inlined (no helper calls): this runs for every point of every device once a tick.
        points = [{"name": name, "value": frame.values.get(name), "unit": units.get(name),
                   "quality": frame.quality.get(name, "good"),
                   "time": frame.times.get(name, frame.time), "received": frame.received}
                  for name, frame in self.latest.items()]
        return {"name": self.name, "protocol": self.protocol, "online": self.online,
                "since": self.since, "reason": self.reason, "errors": self.errors,
                "last_error": self.last_error, "frames": self.frames,
                "poll_interval_s": self.poll_interval_s,
                "poll_ms": None if self.poll_s is None else round(self.poll_s * 1000, 1),
                "interval_s": None if self.interval_s is None else round(self.interval_s, 3),
                "points": points}


class PageState:
    """The page's model of the gateway; every method is cheap and runs on the loop."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._devices: dict[str, _Device] = {}
        self._alarms: dict[str, deque[dict[str, Any]]] = {}

    def add_device(self, name: str, protocol: str, poll_interval_s: float | None,
                   points: Sequence[PointSpec]) -> None:
        """A configured device, shown (offline) before it ever answers."""
        device = self._device(name, protocol, poll_interval_s)
        if device is not None:
            device.units.update((p.name, p.unit) for p in points)

    def _device(self, name: str, protocol: str = "?",
                poll_interval_s: float | None = None) -> _Device | None:
        device = self._devices.get(name)
        if device is None and len(self._devices) < MAX_DEVICES:
            device = self._devices[name] = _Device(name, protocol, poll_interval_s)
        return device

    # -- what the runtime reports ------------------------------------------------------

    def frames(self, frames: Iterable[Frame]) -> None:
        for frame in frames:
            device = self._device(frame.device)
            if device is None:
                continue
            device.frames += 1
            if device.last_frame is not None:
                device.interval_s = frame.received - device.last_frame
            device.last_frame = frame.received
            if len(device.latest) + len(frame.values) <= MAX_POINTS:
                device.latest.update(dict.fromkeys(frame.values, frame))
            else:
                device.latest.update((p, frame) for p in frame.values if p in device.latest)
            if frame.received >= device.spark_due:  # one sparkline sample per step
                device.spark_due = frame.received + SPARK_STEP_S
                _sample(device, frame)

    def set_online(self, device: str, online: bool, reason: str) -> None:
        found = self._device(device)
        if found is not None:
            found.online, found.reason, found.since = online, reason, self._clock()

    def polled(self, device: str, took_s: float) -> None:
        found = self._devices.get(device)
        if found is not None:
            found.poll_s = took_s

    def error(self, device: str, problem: str) -> None:
        found = self._devices.get(device)
        if found is not None:
            found.errors += 1
            found.last_error = problem

    def events(self, events: Iterable[Event]) -> None:
        """Keep the alarms among `events` (the predictor's), newest last."""
        for event in events:
            if event.kind == MAINTENANCE_NEEDED:
                asset = str(event.data.get("asset", event.device))
                self._alarms.setdefault(asset, deque(maxlen=ALARM_HISTORY)).append(
                    {"time": self._clock(), "probability": event.data.get("probability")})

    # -- what the page reads -----------------------------------------------------------

    def now(self) -> float:
        return float(self._clock())

    def devices(self) -> list[dict[str, Any]]:
        return [d.view() for d in self._devices.values()]

    def alarms(self, asset: str) -> list[dict[str, Any]]:
        return list(self._alarms.get(asset, ()))

    def history(self) -> dict[str, dict[str, list[tuple[float, float]]]]:
        """Every numeric point's sparkline samples, (time, value), oldest first."""
        return {d.name: {p: list(ring) for p, ring in d.spark.items()}
                for d in self._devices.values()}


def _sample(device: _Device, frame: Frame) -> None:
    for point, value in frame.values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value) or point in frame.quality:
            continue
        ring = device.spark.get(point)
        if ring is None:
            if len(device.spark) >= MAX_POINTS:
                continue
            ring = device.spark[point] = deque(maxlen=SPARK_SAMPLES)
        ring.append((round(frame.time_of(point), 3), float(value)))


def gateway_figures(gateway: Any, state: PageState) -> dict[str, Any]:
    """Outbox, uplink and asset figures from the running gateway's live objects."""
    stats = gateway.outbox.stats()
    max_bytes = gateway.config.store.max_bytes
    rate = getattr(gateway.outbox, "ingest_bytes_per_s", 0.0) or 0.0
    hours_left = None if rate <= 0 else round(max(0, max_bytes - stats.bytes) / rate / 3600, 2)
    uplink = gateway.uplink
    assets = []
    if gateway.predictor is not None:
        for asset in gateway.predictor.describe():
            assets.append({**asset, "alarms": state.alarms(asset["name"])})
    return {
        "gateway": {"id": gateway.config.gateway.id, "site": gateway.config.gateway.site},
        "outbox": {"depth": stats.depth, "bytes": stats.bytes, "readings": stats.readings,
                   "oldest_age_s": stats.oldest_age_s, "dropped": stats.dropped,
                   "writable": stats.writable, "max_bytes": max_bytes,
                   "ingest_bytes_per_s": round(rate, 1), "hours_left": hours_left},
        "uplink": {"connected": uplink.connected, "problem": uplink.problem,
                   "in_flight": uplink.in_flight,
                   "last_ack": uplink.last_ack_at},
        "assets": assets,
    }

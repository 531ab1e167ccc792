"""One driver's way into the outbox: report by exception, a birth per device, telemetry events.

The runtime hands every batch a driver gives to its `DeviceFeed`, which returns the
events to commit: each frame (after report by exception, gateway/report.py) as one
telemetry event, preceded by the device's `device_birth` the first time that device
is seen after a (re)connect, when what the driver says about its points differs from
the last birth sent (or none was sent yet by this process).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from gateway import events
from gateway.driver import Driver
from gateway.events import Event
from gateway.frames import Frame, PointSpec
from gateway.report import ExceptionFilter


class DeviceFeed:
    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.filter = ExceptionFilter.for_config(driver.config)
        self._births: dict[str, tuple[PointSpec, ...]] = {}  # device -> its last birth's points
        self._checked: set[str] = set()  # devices whose birth was checked since the connect

    def connected(self) -> None:
        """A (re)connect: every point is reported in full again, and births are checked."""
        if self.filter is not None:
            self.filter.reset()
        self._checked.clear()

    def refused(self) -> None:
        """The outbox refused the last events: report in full again, births included."""
        self.connected()
        self._births.clear()

    def events(self, frames: Sequence[Frame]) -> tuple[list[Event], Counter[str]]:
        """The events for `frames`, and the readings they carry per device."""
        out: list[Event] = []
        readings: Counter[str] = Counter()
        for frame in frames:
            device = frame.device
            if device not in self._checked:
                self._checked.add(device)
                points = tuple(self.driver.describe(device))
                if self._births.get(device) != points:
                    self._births[device] = points
                    out.append(events.device_birth(device, points, at=frame.received))
            sent = frame if self.filter is None else self.filter.apply(frame)
            if sent is not None:
                out.append(events.telemetry(sent))
                readings[device] += len(sent.values)
        return out, readings

"""A synthetic source for testing the core: frames numbered 0, 1, 2, … at a set rate.

Each frame carries one value (its number) under `point`, so every number is one event
and one outbox row, and a ledger of numbers is a ledger of events.

It is a real driver (the Driver contract, registered by name), not a mock of the
core: the outbox, uplink and runtime under test are the real ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Mapping
from typing import Literal

from pydantic import Field

import drivers
from gateway.config_base import DeviceConfig, Name, PointWriting
from gateway.driver import Batch, Driver
from gateway.errors import NotConnected, WriteFailed
from gateway.frames import Frame, PointSpec, Value

PROTOCOL = "counter"
# Test-only hooks for subprocess tests: every write appends one JSON line to the file
# WRITE_LOG names (before anything else), and with WRITE_KILL = "1" the process then
# kills itself with SIGKILL: a kill -9 between a command's intent and its result. At
# connect, the values in WRITE_LOG are the device's: a PLC keeps what was written to it.
WRITE_LOG = "MILLWRIGHT_TEST_WRITE_LOG"
WRITE_KILL = "MILLWRIGHT_TEST_WRITE_KILL"


class CounterPoint(PointWriting):
    """A point the cloud may write (commands); it holds what was written last."""

    name: Name
    type: str = "float64"


class CounterConfig(DeviceConfig):
    protocol: Literal["counter"]
    rate_hz: float = Field(100.0, gt=0)
    batch: int = Field(10, ge=1)
    limit: int | None = None  # stop producing after this many readings
    point: str = "n"
    points: list[CounterPoint] = []  # writable points, beside the counted one
    offline: bool = False  # connect raises NotConnected: the device never comes online
    refuse_writes: bool = False  # write raises WriteFailed, as a device's exception answer

    def produces(self, device: str, point: str) -> bool:
        return device == self.name and point == self.point


class CounterDriver(Driver):
    config_model = CounterConfig
    config: CounterConfig

    def __init__(self, config: CounterConfig) -> None:
        super().__init__(config)
        self.produced = 0
        self._next_at = 0.0
        self.values: dict[str, Value] = {}  # what was written, by point
        self.writes: list[dict[str, Value]] = []

    async def connect(self) -> None:
        if self.config.offline:
            raise NotConnected("counter configured offline")
        log_path = os.environ.get(WRITE_LOG)
        if log_path and os.path.exists(log_path):  # the "device" kept what was written to it
            with open(log_path, encoding="utf-8") as log:
                for line in log:
                    self.values.update(json.loads(line))
        self._next_at = time.monotonic()

    async def write(self, values: Mapping[str, Value]) -> dict[str, Value]:
        log_path = os.environ.get(WRITE_LOG)
        if log_path:
            with open(log_path, "a", encoding="utf-8") as log:
                log.write(json.dumps(dict(values)) + "\n")
                log.flush()
                os.fsync(log.fileno())
            if os.environ.get(WRITE_KILL) == "1":
                os.kill(os.getpid(), signal.SIGKILL)
        if self.config.refuse_writes:
            raise WriteFailed("exception answer 2 (illegal data address)")
        self.writes.append(dict(values))
        self.values.update(values)
        return {name: self.values[name] for name in values}

    async def read(self) -> Batch:
        cfg = self.config
        if cfg.limit is not None and self.produced >= cfg.limit:
            await asyncio.Event().wait()  # done: stay connected, produce nothing more
        self._next_at += cfg.batch / cfg.rate_hz
        await asyncio.sleep(max(0.0, self._next_at - time.monotonic()))
        count = cfg.batch if cfg.limit is None else min(cfg.batch, cfg.limit - self.produced)
        now = time.time()
        # The written points' values travel with each number, as a PLC's setpoints would.
        frames = [Frame(self.name, now, {cfg.point: self.produced + i, **self.values}, now)
                  for i in range(count)]
        self.produced += count
        return Batch(frames)

    def describe(self, device: str) -> list[PointSpec]:
        return [PointSpec(self.config.point, "integer"),
                *(PointSpec(p.name, p.type, writable=p.writable) for p in self.config.points)]

    async def close(self) -> None:
        return None


def table(name: str = "c", **options: object) -> dict[str, object]:
    """A `[[devices]]` table of the counter protocol that reconnects quickly."""
    return {"name": name, "protocol": PROTOCOL, "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.5, **options}


def register() -> None:
    drivers.REGISTRY[PROTOCOL] = f"{__name__}:CounterDriver"

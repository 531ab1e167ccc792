"""A synthetic source for testing the core: frames numbered 0, 1, 2, … at a set rate.

Each frame carries one value (its number) under `point`, so every number is one event
and one outbox row, and a ledger of numbers is a ledger of events.

It is a real driver (the Driver contract, registered by name), not a mock of the
core: the outbox, uplink and runtime under test are the real ones.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

from pydantic import Field

import drivers
from gateway.config_base import DeviceConfig
from gateway.driver import Batch, Driver
from gateway.frames import Frame, PointSpec

PROTOCOL = "counter"


class CounterConfig(DeviceConfig):
    protocol: Literal["counter"]
    rate_hz: float = Field(100.0, gt=0)
    batch: int = Field(10, ge=1)
    limit: int | None = None  # stop producing after this many readings
    point: str = "n"

    def produces(self, device: str, point: str) -> bool:
        return device == self.name and point == self.point


class CounterDriver(Driver):
    config_model = CounterConfig
    config: CounterConfig

    def __init__(self, config: CounterConfig) -> None:
        super().__init__(config)
        self.produced = 0
        self._next_at = 0.0

    async def connect(self) -> None:
        self._next_at = time.monotonic()

    async def read(self) -> Batch:
        cfg = self.config
        if cfg.limit is not None and self.produced >= cfg.limit:
            await asyncio.Event().wait()  # done: stay connected, produce nothing more
        self._next_at += cfg.batch / cfg.rate_hz
        await asyncio.sleep(max(0.0, self._next_at - time.monotonic()))
        count = cfg.batch if cfg.limit is None else min(cfg.batch, cfg.limit - self.produced)
        now = time.time()
        frames = [Frame(self.name, now, {cfg.point: self.produced + i}, now)
                  for i in range(count)]
        self.produced += count
        return Batch(frames)

    def describe(self, device: str) -> list[PointSpec]:
        return [PointSpec(self.config.point, "integer")]

    async def close(self) -> None:
        return None


def table(name: str = "c", **options: object) -> dict[str, object]:
    """A `[[devices]]` table of the counter protocol that reconnects quickly."""
    return {"name": name, "protocol": PROTOCOL, "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.5, **options}


def register() -> None:
    drivers.REGISTRY[PROTOCOL] = f"{__name__}:CounterDriver"

"""The Modbus driver: polls one unit id over TCP or RTU with a precompiled read plan.

Built from its config with no I/O: the read plan (drivers/modbus/planner.py) and
each point's decoder are compiled in `__init__`, so `millwright check` rejects a
map that cannot be read. `connect` joins the shared link for its endpoint
(drivers/modbus/link.py); `read` waits for the device's next poll slot, sends the
planned requests and decodes them into one batch.

Failure handling, per the driver contract:
- an exception response (e.g. illegal data address) or a short answer makes that
  request's points `quality = "bad"` readings; the device stays online;
- no answer within `timeout_s`, or a lost connection, raises NotConnected: the
  runtime marks the device offline and backs off, which also keeps a silent slave
  from occupying a shared line;
- a NaN or infinite float is a "bad" reading.

`connect` polls once to prove the unit answers. Polls then run at a fixed rate,
each device at its own phase inside the interval (derived from its name), so a
hundred devices do not fire together.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass

from drivers.modbus import link as links
from drivers.modbus.codec import Codec, is_finite, registers_to_bytes
from drivers.modbus.config import ModbusDeviceConfig, ModbusPoint
from drivers.modbus.link import BadAnswer
from drivers.modbus.planner import ReadRequest, plan
from gateway.driver import Batch, Driver
from gateway.errors import ConfigError, NotConnected
from gateway.events import Reading
from gateway.metrics import DEVICE_ERRORS

log = logging.getLogger(__name__)

# The stagger spreads first polls over at most this much of the interval, so a
# device with a long interval still reports soon after start.
MAX_STAGGER_S = 1.0


@dataclass(frozen=True, slots=True)
class _Decoder:
    name: str
    unit: str | None
    offset: int
    codec: Codec | None  # None: a bit from a coil or discrete input


class ModbusDriver(Driver):
    """One Modbus slave (unit id) on a TCP endpoint or a serial line."""

    config_model = ModbusDeviceConfig
    config: ModbusDeviceConfig

    def __init__(self, config: ModbusDeviceConfig) -> None:  # type: ignore[override]
        super().__init__(config)
        try:
            self.plan: list[ReadRequest] = plan(
                config.points, max_gap=config.max_gap,
                max_registers=config.max_registers_per_read,
                max_bits=config.max_bits_per_read,
            )
        except ValueError as exc:  # the config model checks the same; kept for direct use
            raise ConfigError([f"device '{config.name}': points: {exc}"]) from None
        self._decoders = [tuple(_decoder(p, offset) for p, offset in request.points)
                          for request in self.plan]  # type: ignore[arg-type]
        self._link: links.Link | None = None
        self._next_poll = 0.0
        self._pending: list[Reading] | None = None  # the probe's readings, returned first
        self._failing: dict[int, str] = {}  # request index -> last error, to log changes only
        self.polls = 0
        self.overruns = 0

    @property
    def link(self) -> links.Link | None:
        """The shared connection this device uses while connected."""
        return self._link

    @property
    def stagger_s(self) -> float:
        """This device's fixed offset into the poll interval."""
        digest = hashlib.blake2b(self.config.name.encode(), digest_size=8).digest()
        fraction = int.from_bytes(digest, "big") / 2**64
        return fraction * min(self.config.poll_interval_s, MAX_STAGGER_S)

    async def connect(self) -> None:
        """Join the endpoint's link, then poll once: a unit that does not answer is not connected.

        Probing here (rather than on the first read) keeps a silent slave offline
        under the runtime's growing backoff instead of flapping online, and makes it
        cost its shared line one request per attempt.
        """
        if self._link is None:
            self._link = links.acquire(self.config, self.name)
        await self._link.open(self.config.timeout_s)
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.stagger_s)
        started = loop.time()
        self._pending = await self.poll()
        self._next_poll = started + self.config.poll_interval_s

    async def read(self) -> Batch:
        if self._pending is not None:
            readings, self._pending = self._pending, None
            return Batch(readings)
        if self._link is None:
            raise NotConnected(f"{self.config.endpoint}: not connected")
        loop = asyncio.get_running_loop()
        delay = self._next_poll - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        readings = await self.poll()
        self._schedule_next(loop.time())
        return Batch(readings)

    async def poll(self) -> list[Reading]:
        """Read every planned request once, now."""
        link = self._link
        if link is None:
            raise NotConnected(f"{self.config.endpoint}: not connected")
        readings: list[Reading] = []
        for index, request in enumerate(self.plan):
            try:
                values = await link.read(request, self.config.unit_id, self.config.timeout_s,
                                         self.config.retries)
            except BadAnswer as exc:
                self._report(index, str(exc))
                now = time.time()
                readings.extend(
                    Reading(self.name, d.name, None, d.unit, "bad", receive_time=now)
                    for d in self._decoders[index]
                )
                continue
            self._report(index, None)
            readings.extend(self._decode(index, request, values))
        self.polls += 1
        return readings

    async def close(self) -> None:
        self._pending = None
        link, self._link = self._link, None
        if link is not None:
            links.release(link, self.name)

    def _schedule_next(self, now: float) -> None:
        interval = self.config.poll_interval_s
        self._next_poll += interval
        if self._next_poll < now:
            # The poll took longer than the interval: skip the missed slots, keep the phase.
            missed = int((now - self._next_poll) // interval) + 1
            self._next_poll += missed * interval
            self.overruns += missed

    def _decode(self, index: int, request: ReadRequest,
                values: list[int] | list[bool]) -> list[Reading]:
        now = time.time()
        decoders = self._decoders[index]
        out = []
        if request.is_bits:
            for d in decoders:
                out.append(Reading(self.name, d.name, bool(values[d.offset]), d.unit,
                                   receive_time=now))
            return out
        buffer = registers_to_bytes(values)  # type: ignore[arg-type]
        for d in decoders:
            assert d.codec is not None
            value = d.codec.decode_bytes(buffer, d.offset)
            quality = "good" if is_finite(value) else "bad"
            out.append(Reading(self.name, d.name, value, d.unit, quality, receive_time=now))
        return out

    def _report(self, index: int, error: str | None) -> None:
        # Log when a request starts or stops failing, not on every poll.
        previous = self._failing.get(index)
        if error is None:
            if previous is not None:
                del self._failing[index]
                log.info("device '%s': %s read again", self.name, _describe(self.plan[index]))
            return
        DEVICE_ERRORS.labels(self.name).inc()
        if previous != error:
            self._failing[index] = error
            log.warning("device '%s' (%s): %s; its points are reported with quality bad",
                        self.name, self.config.endpoint, error)


def _decoder(point: ModbusPoint, offset: int) -> _Decoder:
    if point.table in ("coil", "discrete"):
        return _Decoder(point.name, point.unit, offset, None)
    codec = Codec(point.data_type, point.byte_order, point.scale, point.offset)
    return _Decoder(point.name, point.unit, offset, codec)


def _describe(request: ReadRequest) -> str:
    return f"{request.table} {request.address}-{request.address + request.count - 1}"

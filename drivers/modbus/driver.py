"""The Modbus driver: polls one unit id over TCP or RTU with a precompiled read plan.

Built from its config with no I/O: the read plan (drivers/modbus/planner.py) and
each point's decoder are compiled in `__init__`, so `millwright check` rejects a
map that cannot be read. `connect` joins the shared link for its endpoint
(drivers/modbus/link.py); `poll` sends the planned requests and decodes them into one
batch. The runtime keeps the poll schedule (gateway/polling.py).

Failure handling, per the driver contract:
- an exception response (e.g. illegal data address) or a short answer makes that
  request's points `quality = "bad"` readings; the device stays online;
- no answer within `timeout_s`, or a lost connection, raises NotConnected: the
  runtime marks the device offline and backs off, which also keeps a silent slave
  from occupying a shared line;
- a NaN or infinite float is a "bad" reading.

A unit that does not answer its first poll after `connect` never goes online: the
runtime keeps it offline under its growing backoff instead of letting it flap, and
it costs its shared line one request per attempt.
"""

from __future__ import annotations

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
from gateway.events import Quality, Reading
from gateway.metrics import DEVICE_ERRORS

log = logging.getLogger(__name__)

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

    def __init__(self, config: ModbusDeviceConfig) -> None:
        super().__init__(config)
        try:
            self.plan: list[ReadRequest] = plan(
                config.points, max_gap=config.max_gap,
                max_registers=config.max_registers_per_read,
                max_bits=config.max_bits_per_read,
            )
        except ValueError as exc:  # the config model checks the same; kept for direct use
            raise ConfigError([f"device '{config.name}': points: {exc}"]) from None
        by_name = {p.name: p for p in config.points}
        self._decoders = [tuple(_decoder(by_name[p.name], offset) for p, offset in request.points)
                          for request in self.plan]
        self._link: links.Link | None = None
        self._failing: dict[int, str] = {}  # request index -> last error, to log changes only
        self.polls = 0

    @property
    def link(self) -> links.Link | None:
        """The shared connection this device uses while connected."""
        return self._link

    @property
    def poll_interval_s(self) -> float:
        return self.config.poll_interval_s

    async def connect(self) -> None:
        """Join the endpoint's link (opening it if this device is the first to need it)."""
        if self._link is None:
            self._link = links.acquire(self.config, self.name)
        await self._link.open(self.config.timeout_s)

    async def poll(self) -> Batch:
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
        return Batch(readings)

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            links.release(link, self.name)

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
        buffer = registers_to_bytes(values)
        for d in decoders:
            assert d.codec is not None
            value = d.codec.decode_bytes(buffer, d.offset)
            quality: Quality = "good" if is_finite(value) else "bad"
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

"""The Modbus driver: polls one unit id over TCP or RTU with a precompiled read plan.

Built from its config with no I/O: the read plan (drivers/modbus/planner.py) and
each point's decoder are compiled in `__init__`, so `millwright check` rejects a
map that cannot be read. `connect` joins the shared link for its endpoint
(drivers/modbus/link.py); `poll` sends the planned requests and decodes them into one
batch. The runtime keeps the poll schedule (gateway/polling.py). `write` encodes a
command's values (refusing one that does not fit its register), writes them in as
few requests as addresses allow, and reads them back, in one turn on the link.

One poll is one frame: every point's value, sampled at the time the poll finished.

Failure handling, per the driver contract:
- an exception response (e.g. illegal data address) or a short answer makes that
  request's points `quality = "bad"` values (null); the device stays online;
- no answer within `timeout_s`, or a lost connection, raises NotConnected: the
  runtime marks the device offline and backs off, which also keeps a silent slave
  from occupying a shared line;
- a NaN or infinite float is a "bad" value.

A unit that does not answer its first poll after `connect` never goes online: the
runtime keeps it offline under its growing backoff instead of letting it flap, and
it costs its shared line one request per attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from drivers.modbus import link as links
from drivers.modbus.codec import Codec, is_finite, registers_to_bytes
from drivers.modbus.config import ModbusDeviceConfig, ModbusPoint
from drivers.modbus.link import BadAnswer, ModbusExceptionResponse
from drivers.modbus.planner import ReadRequest, plan, plan_writes
from drivers.modbus.probe import mapping_view
from gateway.driver import Batch, Driver
from gateway.errors import ConfigError, NotConnected, WriteFailed
from gateway.frames import Frame, PointSpec, Quality, Value
from gateway.metrics import DEVICE_ERRORS

log = logging.getLogger(__name__)

@dataclass(frozen=True, slots=True)
class _Decoder:
    name: str
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
        self._points = by_name
        self._link: links.Link | None = None
        self._failing: dict[int, str] = {}  # request index -> last error, to log changes only
        # Each request's last answer (a reference, not a copy): the page's mapping help.
        self._answers: list[list[int] | list[bool] | None] = [None] * len(self.plan)
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
        values: dict[str, Value] = {}
        quality: dict[str, Quality] = {}
        for index, request in enumerate(self.plan):
            try:
                answer = await link.read(request, self.config.unit_id, self.config.timeout_s,
                                         self.config.retries)
            except BadAnswer as exc:
                self._answers[index] = None
                self._report(index, str(exc))
                for d in self._decoders[index]:
                    values[d.name] = None
                    quality[d.name] = "bad"
                continue
            self._report(index, None)
            self._answers[index] = answer
            self._decode(index, request, answer, values, quality)
        self.polls += 1
        now = time.time()
        return Batch([Frame(self.name, now, values, now, quality)])

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            links.release(link, self.name)

    def describe(self, device: str) -> list[PointSpec]:
        return [PointSpec(p.name, p.data_type, p.unit, p.writable) for p in self.config.points]

    def mapping_help(self, point: str) -> dict[str, Any] | None:
        """The registers the last poll read from `point`'s address on (up to 4, as far as
        that request went), decoded in every type and byte order."""
        for index, request in enumerate(self.plan):
            answer = self._answers[index]
            for planned, offset in request.points:
                if planned.name != point or answer is None or request.is_bits:
                    continue
                registers = [int(r) for r in answer[offset:offset + 4]]
                config = self._points[point]
                return mapping_view(request.address + offset, registers, {
                    "name": point, "table": config.table, "type": config.data_type,
                    "byte_order": config.byte_order, "scale": config.scale,
                    "offset": config.offset})
        return None

    async def write(self, values: Mapping[str, Value]) -> dict[str, Value]:
        """Write one command's values, then read the written points back (decoded).

        Every value is encoded before anything is sent: one that does not fit its
        register (after inverse scaling) fails the whole command and nothing is written.
        Points at consecutive addresses go in one request (functions 16 and 15; a single
        register or coil as 6 or 5). The writes and the read-back hold the shared line
        for their whole turn, so no poll of another device interleaves.
        """
        link = self._link
        if link is None:
            raise NotConnected(f"{self.config.endpoint}: not connected")
        encoded: list[tuple[ModbusPoint, list[int]]] = []
        for name, value in values.items():
            point = self._points.get(name)
            if point is None:
                raise WriteFailed(f"device '{self.name}' has no point '{name}'")
            if not point.writable:
                raise WriteFailed(f"point '{name}' of device '{self.name}' is not writable")
            try:
                encoded.append((point, _encode(point, value)))
            except ValueError as exc:
                raise WriteFailed(f"point '{name}': {exc}; nothing was written") from None
        if not encoded:
            return {}
        writes = plan_writes(encoded)
        cfg = self.config
        reads = plan([p for p, _ in encoded], max_gap=cfg.max_gap,
                     max_registers=cfg.max_registers_per_read, max_bits=cfg.max_bits_per_read)
        try:
            answers = await link.write(writes, reads, cfg.unit_id, cfg.timeout_s)
        except ModbusExceptionResponse as exc:
            partly = (f"; written before the refusal: {', '.join(exc.written)}"
                      if exc.written else "; nothing was written")
            raise WriteFailed(f"device '{self.name}' ({cfg.endpoint}) refused: {exc}"
                              f"{partly}") from exc
        except BadAnswer as exc:
            raise WriteFailed(f"device '{self.name}' ({cfg.endpoint}): {exc}") from exc
        # The core logs each command and its result once; this is the wire detail.
        log.debug("device '%s': wrote %s in %d request(s)", self.name,
                  ", ".join(sorted(values)), len(writes))
        read_back: dict[str, Value] = {}
        for request, answer in zip(reads, answers, strict=True):
            for planned, offset in request.points:
                decoder = _decoder(self._points[planned.name], offset)
                if decoder.codec is None:
                    read_back[decoder.name] = bool(answer[offset])
                    continue
                value = decoder.codec.decode_bytes(registers_to_bytes(answer), offset)
                read_back[decoder.name] = value if is_finite(value) else None
        return read_back

    def _decode(self, index: int, request: ReadRequest, answer: list[int] | list[bool],
                values: dict[str, Value], quality: dict[str, Quality]) -> None:
        decoders = self._decoders[index]
        if request.is_bits:
            for d in decoders:
                values[d.name] = bool(answer[d.offset])
            return
        buffer = registers_to_bytes(answer)
        for d in decoders:
            assert d.codec is not None
            value = d.codec.decode_bytes(buffer, d.offset)
            if is_finite(value):
                values[d.name] = value
            else:  # JSON has no NaN or infinity: null, and a null is never good
                values[d.name] = None
                quality[d.name] = "bad"

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
        return _Decoder(point.name, offset, None)
    codec = Codec(point.data_type, point.byte_order, point.scale, point.offset)
    return _Decoder(point.name, offset, codec)


def _encode(point: ModbusPoint, value: Value) -> list[int]:
    """The registers (or the coil's one bit, as 0/1) that write `value` to `point`."""
    return Codec(point.data_type, point.byte_order, point.scale, point.offset).encode_checked(
        value)


def _describe(request: ReadRequest) -> str:
    return f"{request.table} {request.address}-{request.address + request.count - 1}"

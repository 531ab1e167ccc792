"""Shared Modbus connections: one client per TCP endpoint or serial port, requests serialised.

Several devices (unit ids) behind one Modbus TCP gateway, or on one RS-485 bus,
must share one connection: a serial line carries one request at a time, and
many TCP gateways accept only a few connections. A `Link` is that connection.
Every device naming the same `host:port` or `serial_port` gets the same Link
(per event loop), and requests go out one at a time under its lock. A command's
writes and their read-back hold the lock together (`write`), so no other device's
poll comes between them.

Timeouts are counted from the moment a request owns the line, never while it
waits for the lock, so a slave that stops answering delays the others by at most
its own timeout per attempt; its driver then reports NotConnected and the
runtime's backoff keeps it off the line. This is the only module that touches
pymodbus's client; its exceptions become the errors below.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerType

from drivers.modbus.config import ModbusDeviceConfig
from drivers.modbus.planner import ReadRequest, WriteRequest
from gateway.errors import DriverError, NotConnected

log = logging.getLogger(__name__)

Client = AsyncModbusTcpClient | AsyncModbusSerialClient

# Modbus exception codes (application protocol v1.1b3, section 7).
EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "server device failure", 5: "acknowledge", 6: "server device busy",
    8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
GATEWAY_TARGET_SILENT = 11

# Consecutive unanswered requests (from any unit) after which the connection itself
# is presumed dead (a half-open TCP socket, a serial adapter gone) and reopened.
DEAD_LINK_TIMEOUTS = 3


class BadAnswer(DriverError):
    """The slave answered, but not with the data asked for: the request's points are bad."""


class ModbusExceptionResponse(BadAnswer):
    """The slave answered the request with a Modbus exception code."""

    def __init__(self, request: _Span, code: int) -> None:
        self.code = code
        self.written: tuple[str, ...] = ()  # a write's: points earlier requests did write
        self.name = EXCEPTION_NAMES.get(code, "unknown exception code")
        what = "write" if isinstance(request, WriteRequest) else "read"
        super().__init__(f"{_span(request)}: {what} answered with exception {code} "
                         f"({self.name})")


class _Span(Protocol):
    @property
    def table(self) -> str: ...
    @property
    def address(self) -> int: ...
    @property
    def count(self) -> int: ...


def _span(request: _Span) -> str:
    return f"{request.table} {request.address}-{request.address + request.count - 1}"


class NoAnswer(NotConnected):
    """The slave did not answer within its timeout (the link itself may be fine)."""


@dataclass(frozen=True, slots=True)
class _LineSettings:
    baudrate: int
    parity: str
    stopbits: int
    bytesize: int

    def __str__(self) -> str:
        return f"{self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


class Link:
    """One shared pymodbus client; `read` sends one request at a time."""

    def __init__(self, key: str, config: ModbusDeviceConfig) -> None:
        self.key = key
        self.endpoint = key.partition(":")[2]
        self._config = config  # connection settings come from the first device
        self._settings = _settings(config)
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._lock = asyncio.Lock()
        self._users: dict[str, int] = {}  # device name -> unit id
        self._unanswered = 0
        self._silent_units: set[int] = set()  # units unanswered since the last answer
        self.requests = 0

    def check_compatible(self, config: ModbusDeviceConfig) -> None:
        """Devices on one serial port must agree on how the line is driven."""
        if _settings(config) != self._settings:
            raise DriverError(
                f"device '{config.name}' sets {config.serial_port} to {_settings(config)} "
                f"but device '{self._config.name}' already uses it with {self._settings}; "
                "devices on one serial port need the same baudrate, parity, stopbits, bytesize"
            )

    def attach(self, user: str, unit_id: int) -> None:
        self._users[user] = unit_id

    def detach(self, user: str) -> bool:
        """Forget a user; True (and the connection closed) when it was the last one."""
        self._users.pop(user, None)
        if self._users:
            return False
        self._drop()
        return True

    @property
    def users(self) -> frozenset[str]:
        return frozenset(self._users)

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    async def open(self, timeout_s: float) -> None:
        """Connect if not connected; NotConnected when the endpoint cannot be reached."""
        if self.connected:
            return
        async with self._lock:
            if self.connected:
                return
            self._drop()
            client = self._make_client(timeout_s)
            try:
                async with asyncio.timeout(timeout_s):
                    ok = await client.connect()
                _redeliver_swallowed_cancel()
            except (TimeoutError, OSError, ModbusException) as exc:
                client.close()
                raise NotConnected(f"{self.endpoint}: cannot connect: {exc or 'timeout'}") from exc
            except BaseException:
                client.close()
                raise
            if not ok:
                client.close()
                raise NotConnected(f"{self.endpoint}: cannot connect")
            self._client = client
            self._unanswered = 0
            self._silent_units.clear()
            log.debug("modbus link %s connected", self.endpoint)

    async def read(self, request: ReadRequest, unit_id: int, timeout_s: float,
                   retries: int = 0) -> list[int] | list[bool]:
        """Registers or bits of one request; raises NotConnected, NoAnswer or the exception."""
        async with self._lock:
            return await self._read(request, unit_id, timeout_s, retries)

    async def write(self, writes: Sequence[WriteRequest], read_back: Sequence[ReadRequest],
                    unit_id: int, timeout_s: float) -> list[list[int] | list[bool]]:
        """Send `writes` in order, then the reads of `read_back`: one turn on the line.

        The lock is held from the first write to the last read, so no other device's
        poll interleaves (on an RTU bus), and what is read back is what this write left.
        Writes are never retried: a timeout leaves the write's fate unknown, and a repeat
        must be the caller's decision. An exception answer to a write raises
        ModbusExceptionResponse (the writes before it have been done); NoAnswer may
        follow a write the slave did execute.
        """
        async with self._lock:
            for done, request in enumerate(writes):
                try:
                    await self._exchange(functools.partial(_send_write, request=request,
                                                           unit_id=unit_id),
                                         request, unit_id, timeout_s, 0)
                except ModbusExceptionResponse as exc:
                    exc.written = tuple(name for w in writes[:done] for name in w.points)
                    raise
            return [await self._read(request, unit_id, timeout_s, 0) for request in read_back]

    async def _read(self, request: ReadRequest, unit_id: int, timeout_s: float,
                    retries: int) -> list[int] | list[bool]:
        response = await self._exchange(functools.partial(_send, request=request,
                                                          unit_id=unit_id),
                                        request, unit_id, timeout_s, retries)
        values = response.bits if request.is_bits else response.registers
        if len(values) < request.count:
            raise BadAnswer(f"{_span(request)}: answer holds only {len(values)} values")
        return values

    async def _exchange(self, send: Callable[[Client], Awaitable[Any]], request: _Span,
                        unit_id: int, timeout_s: float, retries: int) -> Any:
        """One request and its answer, under the caller's hold of the lock."""
        for attempt in range(retries + 1):
            client = self._client
            if client is None or not client.connected:
                self._drop()
                raise NotConnected(f"{self.endpoint}: connection lost")
            self.requests += 1
            try:
                # The clock starts only now that the request owns the line.
                async with asyncio.timeout(timeout_s):
                    response = await send(client)
                _redeliver_swallowed_cancel()
            except TimeoutError:
                if not client.connected:  # closed under the pending request
                    self._drop()
                    raise NotConnected(f"{self.endpoint}: connection lost") from None
                self._unanswered += 1
                self._silent_units.add(unit_id)
                if self._link_seems_dead():
                    log.info("modbus link %s: %d requests to every unit unanswered, "
                             "reconnecting", self.endpoint, self._unanswered)
                    self._drop()
                if attempt < retries and self._client is not None:
                    continue
                raise NoAnswer(
                    f"{self.endpoint} unit {unit_id}: no answer within {timeout_s:g}s"
                ) from None
            except ModbusException as exc:
                if not client.connected:
                    self._drop()
                    raise NotConnected(f"{self.endpoint}: connection lost: {exc}") from exc
                # A garbled or mismatched frame: this request failed, the line is alive.
                raise NoAnswer(f"{self.endpoint} unit {unit_id}: {exc}") from exc
            self._unanswered = 0
            self._silent_units.clear()
            if response.isError():
                code = int(getattr(response, "exception_code", 0))
                if code == GATEWAY_TARGET_SILENT:
                    raise NoAnswer(f"{self.endpoint} unit {unit_id}: gateway reports "
                                   "the target device did not respond")
                raise ModbusExceptionResponse(request, code)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _link_seems_dead(self) -> bool:
        # One silent slave must not take the line down for the others: only when every
        # unit on it has gone unanswered is the connection itself suspect.
        return (self._unanswered >= DEAD_LINK_TIMEOUTS
                and self._silent_units >= set(self._users.values()))

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _make_client(self, timeout_s: float) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        # reconnect_delay=0: the runtime owns reconnection; retries=0: `read` owns retries.
        # The library's own timeout is a backstop far behind ours.
        backstop = max(timeout_s * 4, 10.0)
        config = self._config
        if config.serial_port is not None:
            return AsyncModbusSerialClient(
                config.serial_port, framer=FramerType.RTU, baudrate=config.baudrate,
                bytesize=config.bytesize, parity=config.parity, stopbits=config.stopbits,
                timeout=backstop, retries=0, reconnect_delay=0,
            )
        assert config.host is not None
        return AsyncModbusTcpClient(config.host, port=config.port, timeout=backstop,
                                    retries=0, reconnect_delay=0)


async def _send_write(client: Client, *, request: WriteRequest,
                      unit_id: int):  # noqa: ANN202 - a pymodbus PDU, kept inside this module
    if request.is_bits:
        bits = [bool(v) for v in request.values]
        if len(bits) == 1:
            return await client.write_coil(request.address, bits[0], device_id=unit_id)
        return await client.write_coils(request.address, bits, device_id=unit_id)
    registers = [int(v) for v in request.values]
    if len(registers) == 1:
        return await client.write_register(request.address, registers[0], device_id=unit_id)
    return await client.write_registers(request.address, registers, device_id=unit_id)


async def _send(client: Client, *, request: ReadRequest,
                unit_id: int):  # noqa: ANN202 - a pymodbus PDU, kept inside this module
    if request.table == "holding":
        return await client.read_holding_registers(request.address, count=request.count,
                                                   device_id=unit_id)
    if request.table == "input":
        return await client.read_input_registers(request.address, count=request.count,
                                                 device_id=unit_id)
    if request.table == "coil":
        return await client.read_coils(request.address, count=request.count, device_id=unit_id)
    return await client.read_discrete_inputs(request.address, count=request.count,
                                             device_id=unit_id)


def _redeliver_swallowed_cancel() -> None:
    """Raise CancelledError if our task was cancelled but the library swallowed it.

    pymodbus awaits with asyncio.wait_for, which on Python 3.11 returns the result
    and drops the cancellation when the answer lands in the same loop iteration as
    the cancel. The device task would then poll on forever and the gateway's
    shutdown would wait for it forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _settings(config: ModbusDeviceConfig) -> _LineSettings | None:
    if config.serial_port is None:
        return None
    return _LineSettings(config.baudrate, config.parity, config.stopbits, config.bytesize)


# Links per event loop: a client made on one loop hangs when used from another.
_LINKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Link]] = (
    weakref.WeakKeyDictionary()
)


def acquire(config: ModbusDeviceConfig, user: str) -> Link:
    """The Link for this device's endpoint, shared with every other device on it."""
    links = _LINKS.setdefault(asyncio.get_running_loop(), {})
    link = links.get(config.link_key)
    if link is None:
        link = links[config.link_key] = Link(config.link_key, config)
    else:
        link.check_compatible(config)
    link.attach(user, config.unit_id)
    return link


def release(link: Link, user: str) -> None:
    """Give up a device's use of the link; the last user closes the connection."""
    if not link.detach(user):
        return
    for links in _LINKS.values():
        if links.get(link.key) is link:
            del links[link.key]

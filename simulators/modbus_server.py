"""A Modbus TCP (or RTU) server serving the plant's machines, one unit id each, with fault switches.

    async with ModbusSimulator(port=0) as sim:      # its own Plant, run in real time
        ... connect to 127.0.0.1:sim.port, unit ids sim.unit_ids ...
        sim.set_fault(2, "silent")                  # unit 2 stops answering
        await sim.stop_serving(); await sim.start_serving()   # the server goes away, comes back

Register map, identical for every unit id (addresses are protocol addresses, from 0):

| table    | address | type              | content                                        |
|----------|---------|-------------------|------------------------------------------------|
| input    | 0-9     | float32 ABCD      | speed_rpm, current_a, temperature_c,           |
|          |         |                   | vibration_mm_s, pressure_bar (2 registers each)|
| input    | 10-14   | int16, scaled     | the same signals x SCALES (x1, x100, x10,      |
|          |         |                   | x100, x100)                                    |
| input    | 15      | uint16            | status: 1 running, 2 failed (no wear shown)    |
| input    | 16      | uint16            | failures since start                           |
| input    | 17-18   | uint32 ABCD       | simulated machine time, seconds                |
| holding  | 0-9     | float32 CDAB      | the five signals again, word-swapped           |
| holding  | 10-29   | float64 ABCD      | the five signals again (4 registers each)      |
| holding  | 100     | uint16            | speed setpoint, rpm (default 1480): writable;  |
|          |         |                   | sets the machine's speed and wear rate; a      |
|          |         |                   | value above 1800 answers exception 3           |
| holding  | 1000-   | uint16            | scratch block (`scratch_registers`, default    |
|          |         |                   | 2000): register 1000+i holds i; writable       |
| coil     | 0-15    | bool              | 0 enabled (true), 1 maintenance mode (false),  |
|          |         |                   | 2-15 false; writable, no effect on the machine |
| discrete | 0-15    | bool              | 0 failed, 1 running, 2-15 false                |

Any other address answers exception 2 (illegal data address). A unit id that is
not served answers exception 11 (gateway target failed to respond) over TCP and
nothing over a serial line, as a real gateway and a real bus would.

Fault switches, per unit id or for all (`unit_id=None`):
- "silent": requests are read and never answered;
- "exception": requests are answered with an exception code (default 4, device failure);
- "close": the connection carrying the request is closed (on a serial line: no answer);
- "slow": answers are delayed by `delay_s`.
`stop_serving()` / `start_serving()` take the whole server away and bring it back
on the same port (or serial line).

Built on pymodbus 3.16's simulator datastore (`SimDevice`); fault handling hooks
pymodbus's per-connection request handler, which is internal API: the minor
version is pinned in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType, SimData, SimDevice

from simulators.machine import MAX_SPEED_SETPOINT_RPM

# The register map lives in modbus_map; its names are re-exported here for callers.
from simulators.modbus_map import (
    COIL_ENABLED,
    COIL_MAINTENANCE,
    DISCRETE_FAILED,
    DISCRETE_RUNNING,
    FAILURES_INPUT,
    FLOAT32_CDAB_HOLDING,
    FLOAT32_INPUT,
    FLOAT64_HOLDING,
    INT16_INPUT,
    MACHINE_TIME_INPUT,
    SCALES,
    SCRATCH_START,
    SPEED_SETPOINT_HOLDING,
    STATUS_FAILED,
    STATUS_INPUT,
    STATUS_RUNNING,
    device_points,
    device_tables,
    live_values,
    setpoint_point,
)
from simulators.plant import Plant

__all__ = [
    "COIL_ENABLED", "COIL_MAINTENANCE", "DISCRETE_FAILED", "DISCRETE_RUNNING", "FAILURES_INPUT",
    "FLOAT32_CDAB_HOLDING", "FLOAT32_INPUT", "FLOAT64_HOLDING", "INT16_INPUT",
    "MACHINE_TIME_INPUT", "SCALES", "SCRATCH_START", "SPEED_SETPOINT_HOLDING", "STATUS_FAILED",
    "STATUS_INPUT", "STATUS_RUNNING", "Fault", "ModbusSimulator", "device_points",
    "device_tables", "setpoint_point",
]

log = logging.getLogger(__name__)

FaultKind = Literal["silent", "exception", "close", "slow"]
FAULT_KINDS: tuple[str, ...] = ("silent", "exception", "close", "slow")

# Function codes whose requests count as reads, for `requests`.
_READ_CODES = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}


@dataclass(frozen=True, slots=True)
class Fault:
    kind: FaultKind
    delay_s: float = 0.5
    code: int = int(ExcCodes.DEVICE_FAILURE)


class _FaultyHandler(ServerRequestHandler):
    """pymodbus's per-connection handler, consulting the simulator's fault switches first."""

    async def handle_request(self) -> None:
        pdu, addr = self.last_pdu, self.last_addr
        if pdu is None:
            return
        sim: ModbusSimulator = self.server.simulator
        unit = pdu.dev_id
        kind = _READ_CODES.get(pdu.function_code, str(pdu.function_code))
        sim.requests[(unit, kind)] += 1
        if sim.request_log is not None:
            sim.request_log.append((unit, kind))
        if unit not in sim.served_units:
            if not sim.is_serial:
                self.server_send(self._exception(pdu, int(ExcCodes.GATEWAY_NO_RESPONSE)), addr)
            return
        fault = sim.fault_for(unit)
        if fault is not None:
            if fault.kind == "silent" or (fault.kind == "close" and sim.is_serial):
                return
            if fault.kind == "close":
                self.close()
                return
            if fault.kind == "exception":
                self.server_send(self._exception(pdu, fault.code), addr)
                return
            await asyncio.sleep(fault.delay_s)
            if self.transport is None:
                return
        setpoint = _setpoint_written(pdu)
        if setpoint is not None and setpoint > MAX_SPEED_SETPOINT_RPM:
            self.server_send(self._exception(pdu, int(ExcCodes.ILLEGAL_VALUE)), addr)
            return
        # The base class reads the request from these; another request may have
        # arrived on this connection while we slept.
        self.last_pdu, self.last_addr = pdu, addr
        await super().handle_request()
        if setpoint is not None:
            sim.set_speed_setpoint(unit, setpoint)

    @staticmethod
    def _exception(pdu: Any, code: int) -> ExceptionResponse:
        return ExceptionResponse(pdu.function_code, code, device_id=pdu.dev_id,
                                 transaction=pdu.transaction_id)


def _setpoint_written(pdu: Any) -> int | None:
    """The speed setpoint a write request (function 6 or 16) carries, if it covers it."""
    if pdu.function_code not in (6, 16):
        return None
    registers = list(pdu.registers)
    offset = SPEED_SETPOINT_HOLDING - pdu.address
    if 0 <= offset < len(registers):
        return int(registers[offset])
    return None


class _TcpServer(ModbusTcpServer):
    simulator: ModbusSimulator

    def callback_new_connection(self) -> ServerRequestHandler:
        return _FaultyHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class _SerialServer(ModbusSerialServer):
    simulator: ModbusSimulator

    def callback_new_connection(self) -> ServerRequestHandler:
        return _FaultyHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)


class ModbusSimulator:
    """The plant's machines as Modbus slaves; an async context manager.

    plant: the machines to serve; None makes a default `Plant()` and runs it
    (in real time) while the simulator is open. A plant passed in is run by the caller.
    unit_ids: machine name -> unit id; default: the plant's machines as 1, 2, 3...
    serial_port: serve Modbus RTU on this serial device (e.g. one end of a socat
    pty pair) instead of TCP.
    """

    def __init__(self, plant: Plant | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 unit_ids: dict[str, int] | None = None, serial_port: str | None = None,
                 baudrate: int = 19_200, scratch_registers: int = 2000,
                 served: list[tuple[float, str, dict[str, float]]] | None = None,
                 request_log: list[tuple[int, str]] | None = None) -> None:
        self._own_plant = plant is None
        self.plant = plant if plant is not None else Plant()
        if unit_ids is None:
            unit_ids = {name: i + 1 for i, name in enumerate(self.plant.machines)}
        unknown = set(unit_ids) - set(self.plant.machines)
        if unknown:
            raise ValueError(f"unit_ids name machines not in the plant: {sorted(unknown)}; "
                             f"the plant has {sorted(self.plant.machines)}")
        for name, unit in unit_ids.items():
            if not 1 <= unit <= 247:
                raise ValueError(f"unit id of '{name}' must be 1-247, not {unit}")
        if len(set(unit_ids.values())) != len(unit_ids):
            raise ValueError(f"unit ids must be distinct: {unit_ids}")
        if not 0 <= scratch_registers <= 65_536 - SCRATCH_START:
            raise ValueError(f"scratch_registers must be 0-{65_536 - SCRATCH_START}")
        self.unit_ids = dict(unit_ids)
        self.host = host
        self.port = port
        self.serial_port = serial_port
        self.baudrate = baudrate
        self.scratch_registers = scratch_registers
        self.requests: Counter[tuple[int, str]] = Counter()
        # When given, each refresh of the registers is recorded here as (time, machine,
        # signals): the ground truth for tests that check what reached the cloud.
        self.served = served
        # When given, every request is appended as (unit id, table read or function code
        # written: "holding", "6", "16"...), in the order the server received them.
        self.request_log = request_log
        self._faults: dict[int | None, Fault] = {}
        self._server: _TcpServer | _SerialServer | None = None
        self._plant_task: asyncio.Task[None] | None = None
        self._refresh_task: asyncio.Task[None] | None = None
        self._dirty = False
        self.plant.on_tick(self._on_tick)

    @property
    def is_serial(self) -> bool:
        return self.serial_port is not None

    @property
    def served_units(self) -> set[int]:
        return set(self.unit_ids.values())

    @property
    def serving(self) -> bool:
        return self._server is not None

    # Fault switches -------------------------------------------------------------------

    def set_fault(self, unit_id: int | None, kind: FaultKind | None, *, delay_s: float = 0.5,
                  code: int = int(ExcCodes.DEVICE_FAILURE)) -> None:
        """Switch a fault on for one unit id (None: every unit), or off with kind=None."""
        if kind is None:
            self._faults.pop(unit_id, None)
            return
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault '{kind}'; use one of {', '.join(FAULT_KINDS)}")
        if unit_id is not None and unit_id not in self.served_units:
            raise ValueError(
                f"unit id {unit_id} is not served; served: {sorted(self.served_units)}"
            )
        self._faults[unit_id] = Fault(kind, delay_s, code)

    def clear_faults(self) -> None:
        self._faults.clear()

    def fault_for(self, unit_id: int) -> Fault | None:
        return self._faults.get(unit_id) or self._faults.get(None)

    def set_speed_setpoint(self, unit_id: int, rpm: float) -> None:
        """What a write to the setpoint register does: the machine of `unit_id` follows."""
        for name, unit in self.unit_ids.items():
            if unit == unit_id:
                self.plant.machines[name].speed_setpoint_rpm = rpm

    def read_count(self, unit_id: int, table: str | None = None) -> int:
        """Read requests received for a unit id (optionally one table), answered or not."""
        return sum(n for (unit, kind), n in self.requests.items()
                   if unit == unit_id and (table is None or kind == table))

    # Lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> ModbusSimulator:
        await self.start_serving()
        if self._own_plant:
            self._plant_task = asyncio.create_task(self.plant.run(), name="modbus-sim plant")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._plant_task is not None:
            self._plant_task.cancel()
            await asyncio.gather(self._plant_task, return_exceptions=True)
            self._plant_task = None
        await self.stop_serving()

    async def start_serving(self) -> None:
        """Listen (again, on the same port once one was chosen) with the plant's current values."""
        if self._server is not None:
            return
        devices = [SimDevice(unit, simdata=self._blocks(name))
                   for name, unit in self.unit_ids.items()]
        server: _TcpServer | _SerialServer
        if self.serial_port is not None:
            server = _SerialServer(devices, framer=FramerType.RTU, port=self.serial_port,
                                   baudrate=self.baudrate)
        else:
            server = _TcpServer(devices, address=(self.host, self.port))
        server.simulator = self
        await server.serve_forever(background=True)
        if self.serial_port is None:
            self.port = server.transport.sockets[0].getsockname()[1]
        self._server = server
        log.info("modbus simulator serving %s, units %s", self.address, self.unit_ids)

    async def stop_serving(self) -> None:
        """Close the listener and every connection; registers are rebuilt on start."""
        server, self._server = self._server, None
        if self._refresh_task is not None:
            await asyncio.gather(self._refresh_task, return_exceptions=True)
            self._refresh_task = None
        if server is not None:
            await server.shutdown()

    @property
    def address(self) -> str:
        return self.serial_port if self.serial_port is not None else f"{self.host}:{self.port}"

    # Registers -----------------------------------------------------------------------

    async def refresh(self) -> None:
        """Copy every machine's current sample into its registers now."""
        server = self._server
        if server is None:
            return
        for name, unit in self.unit_ids.items():
            self._record(name)
            inputs, holding, discrete = live_values(self.plant, name)
            await server.async_setValues(unit, 4, 0, inputs)
            await server.async_setValues(unit, 3, 0, holding)
            await server.async_setValues(unit, 2, 0, discrete)

    def _on_tick(self, plant: Plant) -> None:
        if self._server is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # advanced outside the loop; `refresh()` catches up
        self._dirty = True
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = loop.create_task(self._refresh_while_dirty())

    async def _refresh_while_dirty(self) -> None:
        while self._dirty and self._server is not None:
            self._dirty = False
            await self.refresh()

    def _record(self, name: str) -> None:
        if self.served is not None:
            self.served.append((time.time(), name, self.plant.sample(name).signals()))

    def _blocks(self, name: str) -> tuple[list[SimData], list[SimData], list[SimData],
                                          list[SimData]]:
        self._record(name)
        inputs, holding, discrete = live_values(self.plant, name)
        setpoint = round(self.plant.machines[name].speed_setpoint_rpm)
        holding_blocks = [SimData(0, values=holding, datatype=DataType.REGISTERS),
                          SimData(SPEED_SETPOINT_HOLDING, values=[setpoint],
                                  datatype=DataType.REGISTERS)]
        if self.scratch_registers:
            holding_blocks.append(SimData(
                SCRATCH_START, datatype=DataType.REGISTERS,
                values=[i & 0xFFFF for i in range(self.scratch_registers)],
            ))
        # Bit blocks hold whole registers of 16 bits; addresses past the named bits read false.
        coils = [True, False] + [False] * 14
        return (
            [SimData(0, values=coils, datatype=DataType.BITS)],
            [SimData(0, values=discrete + [False] * 14, datatype=DataType.BITS)],
            holding_blocks,
            [SimData(0, values=inputs, datatype=DataType.REGISTERS)],
        )

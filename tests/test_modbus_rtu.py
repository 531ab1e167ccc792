"""Modbus RTU over a virtual serial line (a socat pty pair): same values as TCP, one shared bus."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.modbus.config import ModbusDeviceConfig
from drivers.modbus.driver import ModbusDriver
from gateway.driver import Batch
from gateway.errors import NotConnected
from simulators.modbus_serial import VirtualSerialPair, socat_available
from simulators.modbus_server import ModbusSimulator, device_tables
from simulators.plant import Plant
from tests.support.frames import Value, flatten

pytestmark = pytest.mark.skipif(
    not socat_available(),
    reason="socat is not installed (apt-get install socat): it provides the virtual serial line",
)


@pytest.fixture
async def line() -> AsyncIterator[VirtualSerialPair]:
    async with VirtualSerialPair() as pair:
        yield pair


def drivers_for(tables: list[dict[str, Any]], **options: Any) -> list[ModbusDriver]:
    return [ModbusDriver(ModbusDeviceConfig.model_validate(
        {**t, "poll_interval_s": 0.05, "timeout_s": 0.5, **options})) for t in tables]


async def poll_all(drivers: list[ModbusDriver]) -> dict[tuple[str, str], Value]:
    """Connect every driver at once (so they contend for the line), read once each."""
    await asyncio.gather(*(d.connect() for d in drivers))
    batches = await asyncio.gather(*(d.poll() for d in drivers))
    return {(r.device, r.point): r for batch in batches for r in flatten(batch)}


async def test_rtu_reads_the_same_values_as_tcp(line: VirtualSerialPair) -> None:
    plant = Plant()  # not run: both servers hold the same, fixed values
    async with (ModbusSimulator(plant) as tcp,
                ModbusSimulator(plant, serial_port=line.server_end, baudrate=115_200) as rtu):
        rtu_tables = device_tables(rtu)
        for table in rtu_tables:
            table["serial_port"] = line.client_end
        over_tcp, over_rtu = drivers_for(device_tables(tcp)), drivers_for(rtu_tables)
        try:
            via_tcp = await poll_all(over_tcp)
            via_rtu = await poll_all(over_rtu)
        finally:
            for driver in over_tcp + over_rtu:
                await driver.close()
    assert len(via_rtu) == 3 * len(rtu_tables[0]["points"])
    assert {k: (r.value, r.quality) for k, r in via_rtu.items()} == {
        k: (r.value, r.quality) for k, r in via_tcp.items()}
    assert {r.quality for r in via_rtu.values()} == {"good"}
    # Three unit ids on one serial port share one client.
    assert len({id(d.link) for d in over_rtu}) == 1


async def test_a_silent_slave_on_the_bus_leaves_the_others_readable(
        line: VirtualSerialPair) -> None:
    async with ModbusSimulator(Plant(), serial_port=line.server_end, baudrate=115_200) as rtu:
        tables = device_tables(rtu)
        for table in tables:
            table["serial_port"] = line.client_end
        press, mill, pump = drivers_for(tables)
        try:
            await asyncio.gather(press.connect(), mill.connect(), pump.connect())
            rtu.set_fault(2, "silent")
            results = await asyncio.gather(press.poll(), mill.poll(), pump.poll(),
                                           return_exceptions=True)
            assert isinstance(results[1], NotConnected)
            for batch in (results[0], results[2]):
                assert isinstance(batch, Batch)
                assert {r.quality for r in flatten(batch)} == {"good"}
            # Polled again while the silent one is backed off: the bus is still fine.
            again = await asyncio.gather(press.poll(), pump.poll())
            assert all(r.quality == "good" for batch in again for r in flatten(batch))
        finally:
            for driver in (press, mill, pump):
                await driver.close()

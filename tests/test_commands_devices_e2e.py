"""Commands through the whole path on real servers: the operator's `millwright command`
over a real Mosquitto, the gateway, and the Modbus and OPC UA simulators, with what landed
checked by independent clients (not by what the gateway believes).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client
from pymodbus.client import AsyncModbusTcpClient

from gateway.command_cli import send_command
from gateway.runtime import Gateway
from simulators.modbus_server import (
    COIL_MAINTENANCE,
    SCRATCH_START,
    SPEED_SETPOINT_HOLDING,
    ModbusSimulator,
    device_tables,
)
from simulators.mosquitto import Mosquitto
from simulators.opcua_server import OpcUaSimulator
from simulators.plant import Plant
from simulators.wait import until
from tests.support import configs

PREFIX = "millwright/lab/gw-test"


@pytest.fixture
async def modbus() -> AsyncIterator[ModbusSimulator]:
    async with ModbusSimulator(Plant()) as simulator:  # a plant not run: values stay put
        yield simulator


@pytest.fixture
async def opcua() -> AsyncIterator[OpcUaSimulator]:
    async with OpcUaSimulator(Plant()) as simulator:
        yield simulator


def press_table(modbus: ModbusSimulator) -> dict[str, Any]:
    table = next(t for t in device_tables(modbus, poll_interval_s=0.2, setpoint=True)
                 if t["name"] == "press-1")
    for point in table["points"]:
        if point["name"] == "maintenance_mode":
            point["writable"] = True
    return table


def mill_table(opcua: OpcUaSimulator) -> dict[str, Any]:
    return {"name": "mill-opcua", "protocol": "opcua", "endpoint": opcua.endpoint,
            "publishing_interval_ms": 100, "points": [
                {"name": "speed_setpoint", "node_id": opcua.node_id("mill-2", "SpeedSetpoint"),
                 "writable": True, "min": 0, "max": 1800, "unit": "rpm"},
                {"name": "speed", "node_id": opcua.node_id("mill-2", "Speed")}]}


async def command(url: str, device: str, values: dict[str, Any],
                  command_id: str) -> dict[str, Any]:
    return await asyncio.to_thread(send_command, url, PREFIX, device, values,
                                   command_id=command_id, timeout_s=20)


@contextlib.asynccontextmanager
async def independent_client(modbus: ModbusSimulator) -> AsyncIterator[AsyncModbusTcpClient]:
    """A client of its own: what the device holds, not what the gateway believes."""
    client = AsyncModbusTcpClient(modbus.host, port=modbus.port, timeout=2, retries=0)
    await client.connect()
    try:
        yield client
    finally:
        client.close()


async def read_holding(modbus: ModbusSimulator, address: int) -> int:
    async with independent_client(modbus) as client:
        answer = await client.read_holding_registers(address, count=1, device_id=1)
    assert not answer.isError()
    return int(answer.registers[0])


async def read_coil(modbus: ModbusSimulator, address: int) -> bool:
    async with independent_client(modbus) as client:
        answer = await client.read_coils(address, count=1, device_id=1)
    assert not answer.isError()
    return bool(answer.bits[0])


async def write_holding(modbus: ModbusSimulator, address: int, value: int) -> None:
    async with independent_client(modbus) as client:
        assert not (await client.write_register(address, value, device_id=1)).isError()


async def test_modbus_register_and_coil_and_an_opcua_setpoint_through_the_gateway(
        tmp_path: Path, mosquitto: Mosquitto, modbus: ModbusSimulator,
        opcua: OpcUaSimulator) -> None:
    raw = configs.base(tmp_path, mosquitto.url, [press_table(modbus), mill_table(opcua)],
                       commands={"enabled": True})
    async with Gateway(configs.validate(raw)) as gw:
        await until(lambda: gw.online["press-1"] and gw.online["mill-opcua"], 20,
                    "both devices online")

        result = await command(mosquitto.url, "press-1",
                               {"speed_setpoint_rpm": 1200, "maintenance_mode": True}, "mb-1")
        assert result["status"] == "done", result
        assert result["read_back"] == {"speed_setpoint_rpm": 1200, "maintenance_mode": True}
        assert await read_holding(modbus, SPEED_SETPOINT_HOLDING) == 1200
        assert await read_coil(modbus, COIL_MAINTENANCE) is True
        assert modbus.plant.machines["press-1"].speed_setpoint_rpm == 1200

        result = await command(mosquitto.url, "mill-opcua", {"speed_setpoint": 1000}, "ua-1")
        assert result["status"] == "done", result
        assert result["read_back"] == {"speed_setpoint": 1000.0}
        async with Client(opcua.endpoint) as client:
            node = client.get_node(opcua.node_id("mill-2", "SpeedSetpoint"))
            assert await node.read_value() == 1000.0

        # A value the point's limits refuse never reaches the register.
        refused = await command(mosquitto.url, "press-1", {"speed_setpoint_rpm": 5000}, "mb-2")
        assert refused["status"] == "rejected" and "out of range" in refused["reason"]
        assert await read_holding(modbus, SPEED_SETPOINT_HOLDING) == 1200


async def test_a_scaled_register_takes_the_engineering_value(
        tmp_path: Path, mosquitto: Mosquitto, modbus: ModbusSimulator) -> None:
    # An int16 register in tenths: the command says 21.4, the register holds 214.
    table = press_table(modbus)
    table["points"].append({"name": "trim", "table": "holding", "address": SCRATCH_START,
                            "type": "int16", "scale": 0.1, "writable": True})
    raw = configs.base(tmp_path, mosquitto.url, [table], commands={"enabled": True})
    async with Gateway(configs.validate(raw)) as gw:
        await until(lambda: gw.online["press-1"], 20, "press-1 online")

        result = await command(mosquitto.url, "press-1", {"trim": 21.4}, "scaled-1")
        assert result["status"] == "done", result
        assert result["read_back"] == {"trim": 21.4}
        assert await read_holding(modbus, SCRATCH_START) == 214

        # A value whose raw register would not fit int16 is refused by the driver, saying
        # why, and never reaches the register.
        too_big = await command(mosquitto.url, "press-1", {"trim": 4000}, "scaled-2")
        assert too_big["status"] == "failed", too_big
        assert "raw 40000" in too_big["reason"] and "int16 range" in too_big["reason"]
        assert "nothing was written" in too_big["reason"]
        assert await read_holding(modbus, SCRATCH_START) == 214


async def test_a_repeated_command_id_does_not_overwrite_another_clients_value(
        tmp_path: Path, mosquitto: Mosquitto, modbus: ModbusSimulator) -> None:
    raw = configs.base(tmp_path, mosquitto.url, [press_table(modbus)],
                       commands={"enabled": True})
    async with Gateway(configs.validate(raw)) as gw:
        await until(lambda: gw.online["press-1"], 20, "press-1 online")
        first = await command(mosquitto.url, "press-1", {"speed_setpoint_rpm": 1100}, "dup-mb")
        assert first["status"] == "done", first
        assert await read_holding(modbus, SPEED_SETPOINT_HOLDING) == 1100

        await write_holding(modbus, SPEED_SETPOINT_HOLDING, 900)  # the operator panel, say
        again = await command(mosquitto.url, "press-1", {"speed_setpoint_rpm": 1100}, "dup-mb")
        assert again == first  # the earlier result, sent again
        assert await read_holding(modbus, SPEED_SETPOINT_HOLDING) == 900
        assert modbus.plant.machines["press-1"].speed_setpoint_rpm == 900

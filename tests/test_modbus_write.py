"""Modbus writes against the simulator, checked by an independent pymodbus client."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus.codec import Codec
from drivers.modbus.config import ModbusDeviceConfig
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.planner import plan_writes
from gateway.errors import WriteFailed
from simulators.modbus_serial import VirtualSerialPair, socat_available
from simulators.modbus_server import (
    COIL_MAINTENANCE,
    SCRATCH_START,
    SPEED_SETPOINT_HOLDING,
    ModbusSimulator,
    device_tables,
    setpoint_point,
)
from simulators.plant import Plant
from tests.support.frames import flatten

FLOAT_AT = SCRATCH_START + 10  # two scratch registers hold a float32


def write_points() -> list[dict[str, Any]]:
    return [
        setpoint_point(),
        {"name": "target_bar", "table": "holding", "address": FLOAT_AT, "type": "float32",
         "scale": 0.5, "offset": 1.0, "writable": True},
        {"name": "limit", "table": "holding", "address": FLOAT_AT + 2, "type": "uint16",
         "writable": True},
        {"name": "small", "table": "holding", "address": FLOAT_AT + 3, "type": "int16",
         "scale": 0.1, "writable": True},
        {"name": "maintenance_mode", "table": "coil", "address": COIL_MAINTENANCE,
         "writable": True},
    ]


def make_driver(sim: ModbusSimulator, unit_id: int = 1, **options: Any) -> ModbusDriver:
    return ModbusDriver(ModbusDeviceConfig.model_validate({
        "name": f"unit-{unit_id}", "protocol": "modbus", "host": sim.host, "port": sim.port,
        "unit_id": unit_id, "timeout_s": 2.0, "points": write_points(), **options}))


@pytest.fixture
async def sim() -> AsyncIterator[ModbusSimulator]:
    async with ModbusSimulator(Plant()) as simulator:  # a plant not run: values stay put
        yield simulator


@pytest.fixture
async def other(sim: ModbusSimulator) -> AsyncIterator[AsyncModbusTcpClient]:
    """An independent client: what the device holds, not what the driver believes."""
    client = AsyncModbusTcpClient(sim.host, port=sim.port, timeout=2, retries=0)
    await client.connect()
    yield client
    client.close()


async def holding(client: AsyncModbusTcpClient, address: int, count: int) -> list[int]:
    answer = await client.read_holding_registers(address, count=count, device_id=1)
    assert not answer.isError()
    return list(answer.registers)


async def test_a_command_writes_registers_and_a_coil_and_reads_them_back(
        sim: ModbusSimulator, other: AsyncModbusTcpClient) -> None:
    driver = make_driver(sim)
    await driver.connect()
    try:
        read_back = await driver.write({"speed_setpoint_rpm": 1200, "target_bar": 7.5,
                                        "limit": 4242, "small": -12.3,
                                        "maintenance_mode": True})
    finally:
        await driver.close()
    assert read_back == {"speed_setpoint_rpm": 1200, "target_bar": 7.5, "limit": 4242,
                         "small": -12.3, "maintenance_mode": True}
    assert await holding(other, SPEED_SETPOINT_HOLDING, 1) == [1200]
    raw = await holding(other, FLOAT_AT, 4)
    # float32 ABCD of (7.5 - 1.0) / 0.5 = 13.0, then 4242, then round(-12.3 / 0.1) = -123.
    assert struct.unpack(">f", struct.pack(">2H", *raw[:2]))[0] == 13.0
    assert raw[2] == 4242
    assert struct.unpack(">h", struct.pack(">H", raw[3]))[0] == -123
    coils = await other.read_coils(COIL_MAINTENANCE, count=1, device_id=1)
    assert coils.bits[0] is True
    # The simulated press follows its setpoint.
    assert sim.plant.machines["press-1"].speed_setpoint_rpm == 1200
    # Contiguous points went in one request: 1010-1013 as one function 16.
    assert sim.requests[(1, "16")] == 1
    assert sim.requests[(1, "6")] == 1  # the setpoint alone
    assert sim.requests[(1, "5")] == 1  # the coil alone


async def test_a_value_that_does_not_fit_fails_and_writes_nothing(
        sim: ModbusSimulator, other: AsyncModbusTcpClient) -> None:
    driver = make_driver(sim)
    await driver.connect()
    before = await holding(other, FLOAT_AT, 4)
    try:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"limit": 70_000}, "outside the uint16 range 0..65535"),
            ({"limit": -1}, "outside the uint16 range"),
            ({"small": 3276.8}, "outside the int16 range"),  # raw 32768 would wrap to -32768
            ({"target_bar": 1e39}, "beyond the float32 range"),
            ({"limit": "high"}, "not a number"),
        ]
        for values, reason in cases:
            with pytest.raises(WriteFailed, match=reason):
                # A good value beside the bad one is not written either.
                await driver.write({"speed_setpoint_rpm": 900, **values})
    finally:
        await driver.close()
    assert await holding(other, FLOAT_AT, 4) == before
    assert await holding(other, SPEED_SETPOINT_HOLDING, 1) == [1480]
    assert not any(kind in ("5", "6", "15", "16") for (_, kind) in sim.requests)


async def test_an_exception_answer_is_a_write_failed_naming_the_exception(
        sim: ModbusSimulator) -> None:
    driver = make_driver(sim)
    await driver.connect()
    try:
        # The simulator refuses a setpoint above 1800 rpm with "illegal data value".
        with pytest.raises(WriteFailed, match=r"exception 3 \(illegal data value\); "
                                              "nothing was written"):
            await driver.write({"speed_setpoint_rpm": 1900})
        # Requests go coils first: the coil was written when the setpoint was refused.
        with pytest.raises(WriteFailed, match="written before the refusal: maintenance_mode"):
            await driver.write({"speed_setpoint_rpm": 1900, "maintenance_mode": True})
        sim.set_fault(1, "exception")
        with pytest.raises(WriteFailed, match=r"exception 4 \(server device failure\)"):
            await driver.write({"limit": 1})
    finally:
        await driver.close()
    assert sim.plant.machines["press-1"].speed_setpoint_rpm == 1480


async def test_births_say_which_points_are_writable(sim: ModbusSimulator) -> None:
    points = write_points() + [{"name": "status", "table": "input", "address": 15}]
    driver = ModbusDriver(ModbusDeviceConfig.model_validate({
        "name": "press-1", "protocol": "modbus", "host": sim.host, "port": sim.port,
        "points": points}))
    specs = {spec.name: spec for spec in driver.describe("press-1")}
    assert specs["limit"].writable and specs["maintenance_mode"].writable
    assert not specs["status"].writable


@pytest.mark.skipif(not socat_available(), reason="socat provides the virtual serial line")
async def test_a_write_on_an_rtu_bus_does_not_disturb_the_neighbours_polls() -> None:
    log: list[tuple[int, str]] = []
    async with (VirtualSerialPair() as line,
                ModbusSimulator(Plant(), serial_port=line.server_end, baudrate=115_200,
                                request_log=log) as rtu):
        tables = device_tables(rtu, setpoint=True)
        for table in tables:
            table.update(serial_port=line.client_end, timeout_s=1.0)
        drivers = [ModbusDriver(ModbusDeviceConfig.model_validate(t)) for t in tables]
        press, mill, pump = drivers
        try:
            await asyncio.gather(*(d.connect() for d in drivers))

            async def keep_polling(driver: ModbusDriver) -> list[str]:
                qualities: list[str] = []
                for _ in range(6):
                    batch = await driver.poll()
                    qualities.extend(r.quality for r in flatten(batch))
                return qualities

            async def keep_writing() -> list[dict[str, Any]]:
                return [await press.write({"speed_setpoint_rpm": rpm})
                        for rpm in (1000, 1100, 1200, 1300)]

            polled_mill, polled_pump, written = await asyncio.gather(
                keep_polling(mill), keep_polling(pump), keep_writing())
        finally:
            for driver in drivers:
                await driver.close()
    assert set(polled_mill) == set(polled_pump) == {"good"}
    assert written == [{"speed_setpoint_rpm": rpm} for rpm in (1000, 1100, 1200, 1300)]
    assert rtu.plant.machines["press-1"].speed_setpoint_rpm == 1300
    # Each write is followed on the line by its own read-back: nothing came between.
    writes = [i for i, entry in enumerate(log) if entry == (1, "6")]
    assert len(writes) == 4
    assert all(log[i + 1] == (1, "holding") for i in writes)
    # ...and the neighbours were polled while the writes went on.
    first, last = writes[0], writes[-1]
    assert {unit for unit, _ in log[first:last]} >= {2, 3}


def test_writes_are_planned_as_few_requests_without_writing_through_gaps() -> None:
    config = ModbusDeviceConfig.model_validate({
        "name": "p", "protocol": "modbus", "host": "127.0.0.1", "points": [
            {"name": "a", "address": 10, "type": "float32", "writable": True},
            {"name": "b", "address": 12, "writable": True},
            {"name": "c", "address": 14, "writable": True},  # a gap at 13: its own request
            {"name": "d", "table": "coil", "address": 3, "writable": True},
            {"name": "e", "table": "coil", "address": 4, "writable": True},
        ]})
    points = {p.name: p for p in config.points}
    encoded = [(points["c"], [3]), (points["a"], [1, 2]), (points["b"], [4]),
               (points["e"], [1]), (points["d"], [0])]
    requests = plan_writes(encoded)
    assert [(r.table, r.address, r.values, r.points, r.function_code) for r in requests] == [
        ("coil", 3, (False, True), ("d", "e"), 15),
        ("holding", 10, (1, 2, 4), ("a", "b"), 16),
        ("holding", 14, (3,), ("c",), 6),
    ]


def test_a_long_run_is_split_at_the_protocol_limit() -> None:
    config = ModbusDeviceConfig.model_validate({
        "name": "p", "protocol": "modbus", "host": "127.0.0.1", "points": [
            {"name": f"r{i}", "address": i, "type": "float64", "writable": True}
            for i in range(0, 200, 4)]})
    requests = plan_writes([(p, [0, 0, 0, 0]) for p in config.points])
    assert [r.count for r in requests] == [120, 80]  # 123 at most, never splitting a point


@pytest.mark.parametrize("order", ["ABCD", "BADC", "CDAB", "DCBA"])
@pytest.mark.parametrize(("data_type", "scale", "offset", "value"), [
    ("float32", 0.5, 1.0, 7.5), ("float64", 1.0, 0.0, -1e300), ("int32", 0.01, 0.0, -21474836.48),
    ("uint32", 1.0, 0.0, 4294967295), ("int64", 1.0, -5.0, -9223372036854775000),
    ("uint64", 1.0, 1.0, 2**64),
    ("uint16", 0.1, 20.0, 6573.5), ("int16", 1.0, 0.0, -32768), ("bool", 1.0, 0.0, True),
])
def test_encoding_for_a_write_decodes_to_the_value(order: str, data_type: str, scale: float,
                                                    offset: float, value: Any) -> None:
    codec = Codec(data_type, order, scale, offset)  # type: ignore[arg-type]
    assert codec.decode(codec.encode_checked(value)) == pytest.approx(value)


def test_64_bit_integers_with_an_integer_offset_are_encoded_exactly() -> None:
    codec = Codec("int64", "ABCD", 1.0, -5.0)
    registers = codec.encode_checked(-9223372036854775000)
    raw = struct.unpack(">q", struct.pack(">4H", *registers))[0]
    assert raw == -9223372036854775000 + 5  # (decoding scales through a float: not exact)
    with pytest.raises(ValueError, match="outside the int64 range"):
        codec.encode_checked(9223372036854775803)  # raw 2**63: one past the top


@pytest.mark.parametrize(("data_type", "scale", "value"), [
    ("float64", 1.0, 10**400), ("float32", 1.0, 10**40), ("uint16", 0.5, 10**400),
    ("float64", 1.0, float("nan")), ("int32", 1.0, float("inf")), ("uint16", 1.0, None),
])
def test_values_no_register_can_hold_are_refused(data_type: str, scale: float,
                                                 value: Any) -> None:
    with pytest.raises(ValueError):
        Codec(data_type, "ABCD", scale).encode_checked(value)  # type: ignore[arg-type]

"""The Modbus driver against the real Modbus simulator (pymodbus server on a free port).

The plant is not run, so registers hold each machine's first sample and the
expected values are exact. Faults come from the simulator's switches.
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus import link as links
from drivers.modbus.config import ModbusDeviceConfig
from drivers.modbus.driver import ModbusDriver
from gateway.config import validate
from gateway.errors import ConfigError, DriverError, NotConnected
from simulators.machine import SIGNALS, UNITS
from simulators.modbus_server import SCALES, ModbusSimulator, device_tables
from simulators.plant import Plant
from simulators.wait import until
from tests.support.frames import by_point, flatten


@pytest.fixture
async def sim() -> AsyncIterator[ModbusSimulator]:
    async with ModbusSimulator(Plant()) as simulator:
        yield simulator


def make_driver(sim: ModbusSimulator, unit_id: int = 1, *, name: str | None = None,
                points: list[dict[str, Any]] | None = None, **options: Any) -> ModbusDriver:
    table: dict[str, Any] = {
        "name": name or f"unit-{unit_id}", "protocol": "modbus", "host": sim.host,
        "port": sim.port, "unit_id": unit_id, "poll_interval_s": 0.05, "timeout_s": 0.5,
        "points": points or [{"name": "speed", "table": "input", "address": 0,
                              "type": "float32"}],
        **options,
    }
    return ModbusDriver(ModbusDeviceConfig.model_validate(table))


def as_float32(value: float) -> np.float32:
    return np.float32(struct.unpack(">f", struct.pack(">f", value))[0])


async def test_reads_every_point_of_the_register_map(sim: ModbusSimulator) -> None:
    table = device_tables(sim)[1]  # mill-2, unit 2
    driver = ModbusDriver(ModbusDeviceConfig.model_validate(table))
    await driver.connect()
    try:
        batch = await driver.poll()
    finally:
        await driver.close()
    assert len(batch.frames) == 1  # one poll, one frame
    readings = by_point(batch)
    sample = sim.plant.sample("mill-2")
    units = {p.name: p.unit for p in driver.describe("mill-2")}
    assert len(readings) == len(table["points"])
    assert all(r.device == "mill-2" and r.quality == "good" for r in readings.values())
    for signal in SIGNALS:
        value = getattr(sample, signal)
        # A float32 register arrives as the shortest decimal of that float32.
        assert np.float32(readings[signal].value) == as_float32(value)
        assert np.float32(readings[f"{signal}_cdab"].value) == as_float32(value)
        assert readings[f"{signal}_f64"].value == value
        assert readings[f"{signal}_int16"].value == pytest.approx(value, abs=0.5 / SCALES[signal])
        assert units[signal] == UNITS[signal]  # announced once, in the birth
    assert (readings["status"].value, readings["failures"].value) == (1, 0)
    assert readings["machine_time_s"].value == 0
    assert (readings["enabled"].value, readings["maintenance_mode"].value) == (True, False)
    assert (readings["failed"].value, readings["running"].value) == (False, True)


async def test_one_poll_sends_exactly_the_planned_requests(sim: ModbusSimulator) -> None:
    driver = ModbusDriver(ModbusDeviceConfig.model_validate(device_tables(sim)[0]))
    assert len(driver.plan) == 4  # input 0-18, holding 0-29, coils 0-1, discrete 0-1
    await driver.connect()
    try:
        before = sim.read_count(1)
        await driver.poll()
        assert sim.read_count(1) - before == 4
    finally:
        await driver.close()


async def test_a_thousand_points_in_ceil_span_over_125_requests(sim: ModbusSimulator) -> None:
    points = [{"name": f"r{i}", "address": 1000 + i} for i in range(1000)]
    driver = make_driver(sim, points=points)
    assert len(driver.plan) == math.ceil(1000 / 125)
    await driver.connect()
    try:
        before = sim.read_count(1, "holding")
        readings = flatten(await driver.poll())
        assert sim.read_count(1, "holding") - before == 8
    finally:
        await driver.close()
    assert [r.value for r in readings] == list(range(1000))


async def test_exception_answers_become_bad_readings_not_errors(sim: ModbusSimulator) -> None:
    driver = make_driver(sim, points=[
        {"name": "speed", "table": "input", "address": 0, "type": "float32"},
        {"name": "nowhere", "table": "holding", "address": 500, "type": "int16"},
    ])
    await driver.connect()
    try:
        readings = by_point(await driver.poll())
        assert readings["speed"].quality == "good"
        assert (readings["nowhere"].value, readings["nowhere"].quality) == (None, "bad")

        sim.set_fault(1, "exception", code=4)
        readings = by_point(await driver.poll())
        assert {r.quality for r in readings.values()} == {"bad"}

        sim.set_fault(1, None)
        readings = by_point(await driver.poll())
        assert readings["speed"].quality == "good"
    finally:
        await driver.close()


async def test_nan_and_infinite_floats_are_bad_readings(sim: ModbusSimulator) -> None:
    writer = AsyncModbusTcpClient(sim.host, port=sim.port, reconnect_delay=0)
    await writer.connect()
    try:
        await writer.write_registers(1000, [0x7FC0, 0x0000, 0xFF80, 0x0000, 0x3FC0, 0x0000],
                                     device_id=1)
    finally:
        writer.close()
    driver = make_driver(sim, points=[
        {"name": f"f{i}", "address": 1000 + 2 * i, "type": "float32"} for i in range(3)])
    await driver.connect()
    try:
        readings = by_point(await driver.poll())
    finally:
        await driver.close()
    # JSON has no NaN or infinity: such a value is a null, and a null is never good.
    assert (readings["f0"].value, readings["f0"].quality) == (None, "bad")
    assert (readings["f1"].value, readings["f1"].quality) == (None, "bad")
    assert (readings["f2"].value, readings["f2"].quality) == (1.5, "good")


async def test_a_server_that_goes_away_and_comes_back(sim: ModbusSimulator) -> None:
    driver = make_driver(sim)
    await driver.connect()
    try:
        await driver.poll()
        await sim.stop_serving()
        with pytest.raises(NotConnected):
            await driver.poll()
        await driver.close()
        with pytest.raises(NotConnected, match="cannot connect"):
            await driver.connect()
        await driver.close()
        await sim.start_serving()
        await driver.connect()
        assert [r.quality for r in flatten(await driver.poll())] == ["good"]
    finally:
        await driver.close()


async def test_a_silent_unit_delays_the_others_on_its_link_by_one_timeout_at_most(
        sim: ModbusSimulator) -> None:
    silent = make_driver(sim, 1, points=[
        {"name": "speed", "table": "input", "address": 0, "type": "float32"},
        {"name": "flag", "table": "coil", "address": 0},
    ])
    healthy = make_driver(sim, 2)
    await silent.connect()
    await healthy.connect()
    try:
        assert silent.link is healthy.link, "devices on one endpoint share one connection"
        sim.set_fault(1, "silent")
        before = sim.read_count(1)
        stalled = asyncio.create_task(silent.poll())
        await until(lambda: sim.read_count(1) > before, 5, "the silent unit's request on the line")
        waiting = asyncio.create_task(healthy.poll())
        results = await asyncio.gather(stalled, waiting, return_exceptions=True)
        # The silent unit gave up after its own timeout, then the other unit was served.
        assert isinstance(results[0], NotConnected) and "no answer within 0.5s" in str(results[0])
        assert [r.quality for r in flatten(results[1])] == ["good"]
        # It gave up after its first request: the rest of its plan never took the line.
        assert sim.read_count(1) - before == 1 and len(silent.plan) == 2
        await silent.close()

        # The runtime's first poll after a reconnect probes the unit: still silent, so
        # still not connected, and it cost the line one request.
        await silent.connect()
        with pytest.raises(NotConnected):
            await silent.poll()
        await silent.close()
        assert sim.read_count(1) - before == 2
        # The link stayed up for the unit that answers.
        assert [r.quality for r in flatten(await healthy.poll())] == ["good"]
    finally:
        await silent.close()
        await healthy.close()


async def test_a_slow_unit_still_answers_within_its_timeout(sim: ModbusSimulator) -> None:
    driver = make_driver(sim, timeout_s=2.0)
    sim.set_fault(1, "slow", delay_s=0.2)
    await driver.connect()
    try:
        assert [r.quality for r in flatten(await driver.poll())] == ["good"]
    finally:
        await driver.close()


async def test_a_closed_connection_is_not_connected(sim: ModbusSimulator) -> None:
    driver = make_driver(sim)
    await driver.connect()
    try:
        sim.set_fault(1, "close")
        with pytest.raises(NotConnected):
            await driver.poll()
        sim.set_fault(1, None)
        await driver.close()
        await driver.connect()
        assert [r.quality for r in flatten(await driver.poll())] == ["good"]
    finally:
        await driver.close()


async def test_the_last_device_to_leave_closes_the_link(sim: ModbusSimulator) -> None:
    first, second = make_driver(sim, 1), make_driver(sim, 2)
    await first.connect()
    await second.connect()
    link = first.link
    assert link is not None and link.users == {"unit-1", "unit-2"}
    await first.close()
    assert link.connected
    await second.close()
    await second.close()  # twice is harmless
    assert not link.connected


async def test_devices_on_one_serial_port_must_agree_on_line_settings() -> None:
    def rtu(name: str, baudrate: int) -> ModbusDriver:
        return ModbusDriver(ModbusDeviceConfig.model_validate({
            "name": name, "protocol": "modbus", "serial_port": "/dev/ttyMISSING0",
            "baudrate": baudrate, "timeout_s": 0.2,
            "points": [{"name": "x", "address": 0}],
        }))

    first, second = rtu("a", 9600), rtu("b", 19200)
    try:
        with pytest.raises(NotConnected):
            await first.connect()
        with pytest.raises(DriverError, match="device 'b' sets /dev/ttyMISSING0 .* device 'a'"):
            await second.connect()
    finally:
        await first.close()
        await second.close()
    assert not links._LINKS.get(asyncio.get_running_loop())


@pytest.mark.parametrize(
    ("device", "problem"),
    [
        ({"serial_port": "/dev/ttyUSB0"},
         "devices[0] (device 'd'): set exactly one of host (Modbus TCP) or serial_port"),
        ({"host": None},
         "devices[0] (device 'd'): set exactly one of host (Modbus TCP) or serial_port"),
        ({"points": [{"name": "x", "table": "coil", "address": 0, "type": "float32"}]},
         "devices[0].points[0] (point 'x') (device 'd'): a coil holds one bit: type must be "
         "\"bool\""),
        ({"points": [{"name": "x", "address": 0, "type": "bool", "scale": 2.0}]},
         "devices[0].points[0] (point 'x') (device 'd'): a bool point cannot have scale or offset"),
        ({"points": [{"name": "x", "address": 65534, "type": "float64"}]},
         "devices[0].points[0] (point 'x') (device 'd'): float64 at address 65534 runs past"),
        ({"points": [{"name": "x", "address": 0, "byte_order": "ABDC"}]},
         "devices[0].points[0] (point 'x').byte_order (device 'd'): Input should be 'ABCD', "
         "'BADC', "),
        ({"points": [{"name": "x", "address": 0, "type": "float16"}]},
         "devices[0].points[0] (point 'x').type (device 'd'): Input should be 'int16', "),
        ({"points": [{"name": "x", "adress": 0}]},
         "devices[0].points[0] (point 'x').adress (device 'd'): unknown key 'adress'; allowed: "
         "address,"),
        ({"host": None, "serial_port": "/dev/ttyUSB0", "unit_id": 248},
         "devices[0] (device 'd'): unit_id on a serial line must be 1-247, not 248"),
        ({"max_registers_per_read": 126},
         "devices[0].max_registers_per_read (device 'd'): Input should be less than or equal "
         "to 125"),
        ({"points": []}, "devices[0].points (device 'd'): List should have at least 1 item"),
        ({"max_registers_per_read": 2, "points": [{"name": "x", "address": 0, "type": "int64"}]},
         "devices[0].points[0] (point 'x').type (device 'd'): needs 4 registers but "
         "max_registers_per_read is 2"),
    ],
)
def test_config_errors_name_the_place_and_the_fix(device: dict[str, Any], problem: str) -> None:
    table = {"name": "d", "protocol": "modbus", "host": "127.0.0.1",
             "points": [{"name": "x", "address": 0}], **device}
    table = {k: v for k, v in table.items() if v is not None}
    with pytest.raises(ConfigError) as info:
        validate({"gateway": {"id": "g"}, "devices": [table]})
    assert any(line.startswith(problem) for line in info.value.problems), info.value.problems


async def test_a_cancellation_the_library_swallowed_is_delivered_again() -> None:
    # pymodbus awaits with asyncio.wait_for, which on Python 3.11 can return an answer
    # and drop a cancel that arrived in the same loop iteration. The link re-raises it,
    # or a cancelled device task would poll on and the gateway could never stop.
    ran_on: list[bool] = []

    async def victim() -> None:
        asyncio.current_task().cancel()  # requested, then "swallowed": no await in between
        links._redeliver_swallowed_cancel()
        ran_on.append(True)

    task = asyncio.create_task(victim())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not ran_on


async def test_a_late_answer_does_not_corrupt_the_next_request(sim: ModbusSimulator) -> None:
    driver = make_driver(sim, points=[{"name": "status", "table": "input", "address": 15}],
                         timeout_s=0.2)
    await driver.connect()
    try:
        sim.set_fault(1, "slow", delay_s=0.4)
        with pytest.raises(NotConnected, match="no answer within 0.2s"):
            await driver.poll()
        sim.set_fault(1, None)
        # The slow answer lands while this request waits; it must not be taken for it.
        for _ in range(3):
            assert [(r.value, r.quality) for r in flatten(await driver.poll())] == [(1, "good")]
    finally:
        await driver.close()


async def test_registers_follow_the_plant(sim: ModbusSimulator) -> None:
    driver = make_driver(sim, 3, points=[
        {"name": "machine_time_s", "table": "input", "address": 17, "type": "uint32"},
        {"name": "temperature_c", "table": "input", "address": 4, "type": "float32"}])
    await driver.connect()
    try:
        assert by_point(await driver.poll())["machine_time_s"].value == 0
        sim.plant.advance(3600.0)
        await sim.refresh()
        readings = by_point(await driver.poll())
    finally:
        await driver.close()
    assert readings["machine_time_s"].value == 3600
    assert np.float32(readings["temperature_c"].value) == as_float32(
        sim.plant.sample("pump-3").temperature_c)


async def test_a_simulator_with_its_own_plant_runs_it() -> None:
    async with ModbusSimulator() as running:
        driver = make_driver(running, points=[
            {"name": "machine_time_s", "table": "input", "address": 17, "type": "uint32"}])
        await driver.connect()
        try:
            async def machine_time() -> int:
                return int(flatten(await driver.poll())[0].value)

            first = await machine_time()

            async def advanced() -> bool:
                return await machine_time() > first

            await until(advanced, 10, "machine time advanced (the plant runs live)",
                        interval_s=0.1)
        finally:
            await driver.close()


def test_simulator_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="not in the plant"):
        ModbusSimulator(Plant(), unit_ids={"lathe-9": 4})
    with pytest.raises(ValueError, match="distinct"):
        ModbusSimulator(Plant(), unit_ids={"press-1": 1, "mill-2": 1})
    sim = ModbusSimulator(Plant())
    with pytest.raises(ValueError, match="unknown fault 'fire'"):
        sim.set_fault(1, "fire")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unit id 9 is not served"):
        sim.set_fault(9, "silent")

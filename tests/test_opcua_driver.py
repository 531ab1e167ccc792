"""The OPC UA driver against the real simulator (asyncua server on a free port): no mocks."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from drivers.opcua.config import OpcUaDeviceConfig
from drivers.opcua.driver import OpcUaDriver
from gateway import metrics
from gateway.driver import Batch
from gateway.errors import NotConnected
from simulators.mosquitto import free_port
from simulators.opcua_server import VARIABLE_NAMES, OpcUaSimulator
from simulators.wait import succeeds, until

SNAKE = {"Speed": "speed", "Current": "current", "Temperature": "temperature",
         "VibrationRms": "vibration_rms", "Pressure": "pressure", "Running": "running",
         "FailureCount": "failure_count", "State": "state"}


@pytest.fixture
async def sim() -> AsyncIterator[OpcUaSimulator]:
    async with OpcUaSimulator() as simulator:
        yield simulator


def make_config(sim: OpcUaSimulator, points: list[dict[str, Any]] | None = None,
                **options: Any) -> OpcUaDeviceConfig:
    if points is None:
        points = [{"name": SNAKE[v], "node_id": sim.node_id("mill-2", v)} for v in VARIABLE_NAMES]
    return OpcUaDeviceConfig.model_validate({
        "name": "mill-2", "protocol": "opcua", "endpoint": sim.endpoint,
        "publishing_interval_ms": 50, "poll_interval_s": 0.05, "points": points, **options})


async def next_batch(driver: OpcUaDriver) -> Batch:
    """The next batch as the runtime would get it: a read, or a poll on its schedule."""
    if driver.poll_interval_s is None:
        return await driver.read()
    await asyncio.sleep(driver.poll_interval_s)  # the poll interval the runtime would keep
    return await driver.poll()


@dataclass(frozen=True)
class Seen:
    """One value the driver gave, with its own time and its frame's receive time."""

    device: str
    point: str
    value: Any
    quality: str
    source_time: float | None  # None: the server gave no time, the frame fell back on receipt
    receive_time: float


def seen_in(batch: Batch) -> list[Seen]:
    """Every value of a batch's frames, in order."""
    seen: list[Seen] = []
    for f in batch.frames:
        for point, value in f.values.items():
            at = f.time_of(point)
            seen.append(Seen(f.device, point, value, f.quality_of(point),
                             None if at == f.received else at, f.received))
    return seen


async def collect(driver: OpcUaDriver, done: Callable[[list[Seen]], bool],
                  timeout_s: float = 10.0) -> list[Seen]:
    """Read batches until `done(all values so far)`; TimeoutError otherwise."""
    seen: list[Seen] = []
    try:
        async with asyncio.timeout(timeout_s):
            while not done(seen):
                seen.extend(seen_in(await next_batch(driver)))
    except TimeoutError:
        raise TimeoutError(f"not done after {timeout_s}s: {len(seen)} readings "
                           f"{sorted({r.point for r in seen})}") from None
    return seen


def latest(readings: list[Seen]) -> dict[str, Seen]:
    return {r.point: r for r in readings}


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_every_point_arrives_with_its_type_unit_and_source_time(
        sim: OpcUaSimulator, mode: str) -> None:
    driver = OpcUaDriver(make_config(sim, mode=mode))
    await driver.connect()
    try:
        readings = await collect(driver, lambda rs: len(latest(rs)) == len(VARIABLE_NAMES))
    finally:
        await driver.close()
    by_point = latest(readings)
    # Units (from the server's EngineeringUnits) and types go in the device's birth.
    described = {p.name: p for p in driver.describe("mill-2")}
    unit = {name: p.unit for name, p in described.items()}
    assert all(r.quality == "good" and r.device == "mill-2" for r in readings)
    assert type(by_point["speed"].value) is float and unit["speed"] == "rpm"
    assert type(by_point["current"].value) is float and unit["current"] == "A"
    assert type(by_point["temperature"].value) is float
    assert unit["temperature"] == "degC"
    assert unit["vibration_rms"] == "mm/s" and unit["pressure"] == "bar"
    assert by_point["running"].value is True and unit["running"] is None
    assert (described["speed"].type, described["temperature"].type) == ("Float", "Double")
    assert (described["running"].type, described["failure_count"].type) == ("Boolean", "UInt32")
    assert type(by_point["failure_count"].value) is int and by_point["failure_count"].value == 0
    assert by_point["state"].value == "running"
    # A Float arrives as the shortest decimal of the same float32, not 1480.1199951171875.
    speed = by_point["speed"].value
    assert isinstance(speed, float) and speed == float(str(np.float32(speed)))
    assert 1300 < speed < 1600
    for r in readings:
        # The server's SourceTimestamp, taken before the gateway received the value.
        assert r.source_time is not None
        assert r.receive_time - 10 < r.source_time <= r.receive_time + 0.001


async def test_browse_paths_and_namespace_uris_find_the_same_nodes(sim: OpcUaSimulator) -> None:
    points = [
        {"name": "by_id", "node_id": sim.node_id("pump-3", "Pressure")},
        {"name": "by_path", "browse_path": sim.browse_path("pump-3", "Pressure")},
        {"name": "by_uri", "node_id": "nsu=urn:millwright:machines;s=Pump3.Pressure"},
        {"name": "own_unit", "node_id": sim.node_id("pump-3", "Pressure"), "unit": "kPa"},
    ]
    driver = OpcUaDriver(make_config(sim, points))
    await driver.connect()
    try:
        readings = await collect(driver, lambda rs: len(latest(rs)) == 4)
    finally:
        await driver.close()
    first = {}
    for r in readings:
        first.setdefault(r.point, r)
    assert first["by_id"].value == first["by_path"].value == first["by_uri"].value
    unit = {p.name: p.unit for p in driver.describe("pump-3")}
    assert unit["by_path"] == "bar" and unit["own_unit"] == "kPa"


async def test_a_missing_node_is_reported_once_and_the_rest_keep_flowing(
        sim: OpcUaSimulator, caplog: pytest.LogCaptureFixture) -> None:
    points = [
        {"name": "speed", "node_id": sim.node_id("mill-2", "Speed")},
        {"name": "ghost", "node_id": "ns=2;s=Mill2.Ghost"},
        {"name": "lost_path", "browse_path": "/2:Mill2/2:Nowhere"},
        {"name": "other_ns", "node_id": "nsu=urn:elsewhere;s=X"},
    ]
    rejected = metrics.DEVICE_REJECTED.labels("mill-2", "node_unknown")
    before = rejected._value.get()
    driver = OpcUaDriver(make_config(sim, points))
    caplog.set_level(logging.WARNING, logger="drivers.opcua.driver")
    for _ in range(2):  # a second session must not report them again
        await driver.connect()
        try:
            readings = await collect(
                driver, lambda rs: sum(r.point == "speed" for r in rs) >= 5)
        finally:
            await driver.close()
        if _ == 0:
            bad = {r.point for r in readings if r.quality == "bad"}
            assert bad == {"ghost", "lost_path", "other_ns"}
            assert all(r.value is None for r in readings if r.point != "speed")
        else:
            assert {r.point for r in readings} == {"speed"}
    lines = [r.getMessage() for r in caplog.records if r.name == "drivers.opcua.driver"]
    assert len(lines) == 3, lines
    assert any("ns=2;s=Mill2.Ghost does not exist on the server (BadNodeIdUnknown)" in line
               for line in lines)
    assert any("browse path /2:Mill2/2:Nowhere not found" in line for line in lines)
    assert any("namespace urn:elsewhere is not on the server" in line for line in lines)
    assert rejected._value.get() - before == 3


async def test_status_codes_become_quality(sim: OpcUaSimulator) -> None:
    points = [{"name": "temperature", "node_id": sim.node_id("mill-2", "Temperature")},
              {"name": "speed", "node_id": sim.node_id("mill-2", "Speed")}]
    driver = OpcUaDriver(make_config(sim, points))
    await driver.connect()
    try:
        await collect(driver, lambda rs: "temperature" in latest(rs))
        sim.set_status("mill-2", "Temperature", "BadSensorFailure")
        readings = await collect(driver, lambda rs: any(
            r.point == "temperature" and r.quality == "bad" for r in rs))
        bad = next(r for r in readings if r.point == "temperature" and r.quality == "bad")
        assert bad.value is None and bad.source_time is not None
        sim.set_status("mill-2", "Temperature", "UncertainLastUsableValue")
        readings = await collect(driver, lambda rs: any(
            r.point == "temperature" and r.quality == "uncertain" for r in rs))
        uncertain = next(r for r in readings if r.quality == "uncertain")
        assert isinstance(uncertain.value, float)  # the server's best guess is kept
        sim.set_status("mill-2", "Temperature", None)
        await collect(driver, lambda rs: any(
            r.point == "temperature" and r.quality == "good" for r in rs))
    finally:
        await driver.close()


async def test_a_deadband_holds_back_small_changes(sim: OpcUaSimulator) -> None:
    points = [{"name": "speed", "node_id": sim.node_id("mill-2", "Speed")},
              {"name": "temperature", "node_id": sim.node_id("mill-2", "Temperature"),
               "deadband": 500.0}]
    driver = OpcUaDriver(make_config(sim, points))
    await driver.connect()
    try:
        readings = await collect(driver, lambda rs: sum(r.point == "speed" for r in rs) >= 10)
    finally:
        await driver.close()
    # Speed changed at every tick; temperature only ever sent its first value.
    assert sum(r.point == "temperature" for r in readings) == 1


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_a_restarted_server_gets_one_new_subscription_and_values_resume(
        sim: OpcUaSimulator, mode: str) -> None:
    driver = OpcUaDriver(make_config(sim, mode=mode))
    await driver.connect()
    expected_subscriptions = 1 if mode == "subscribe" else 0
    assert sim.subscription_count() == expected_subscriptions
    await collect(driver, lambda rs: len(rs) > 0)
    await sim.restart()
    with pytest.raises(NotConnected):
        await collect(driver, lambda rs: False, timeout_s=10)
    await driver.close()
    # What the runtime does: connect again after a pause until it works.
    await succeeds(driver.connect, 10, "reconnected", retry_on=NotConnected)
    try:
        restarted = time.time()
        readings = await collect(driver, lambda rs: any(
            r.point == "speed" and (r.source_time or 0) > restarted for r in rs))
        assert readings
        assert sim.subscription_count() == expected_subscriptions
        assert sim.connection_count() == 1
    finally:
        await driver.close()
    await until(lambda: sim.subscription_count() == 0, 5, "subscription deleted on close")


async def test_an_unreachable_server_is_not_connected() -> None:
    driver = OpcUaDriver(OpcUaDeviceConfig.model_validate({
        "name": "mill-2", "protocol": "opcua",
        "endpoint": f"opc.tcp://127.0.0.1:{free_port()}/millwright/",
        "points": [{"name": "speed", "node_id": "ns=2;s=Mill2.Speed"}]}))
    with pytest.raises(NotConnected, match="unreachable"):
        await driver.connect()
    with pytest.raises(NotConnected):
        await driver.read()
    await driver.close()
    await driver.close()  # safe twice

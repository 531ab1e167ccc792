"""OPC UA writes against the simulator, checked by an independent asyncua client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from asyncua import Client, ua

from drivers.opcua.codec import variant_for
from drivers.opcua.config import OpcUaDeviceConfig
from drivers.opcua.driver import OpcUaDriver
from gateway.errors import WriteFailed
from simulators.opcua_server import OpcUaSimulator
from simulators.plant import Plant


@pytest.fixture
async def sim() -> AsyncIterator[OpcUaSimulator]:
    async with OpcUaSimulator(Plant()) as simulator:  # a plant not run: values stay put
        yield simulator


def make_driver(sim: OpcUaSimulator, **options: Any) -> OpcUaDriver:
    return OpcUaDriver(OpcUaDeviceConfig.model_validate({
        "name": "press-1", "protocol": "opcua", "endpoint": sim.endpoint,
        "publishing_interval_ms": 50, "points": [
            {"name": "speed_setpoint", "node_id": sim.node_id("press-1", "SpeedSetpoint"),
             "writable": True, "min": 0, "max": 1800},
            # Float on the server: a Python float must go as a Float variant.
            {"name": "speed", "node_id": sim.node_id("press-1", "Speed"), "writable": True},
            {"name": "failures", "node_id": sim.node_id("press-1", "FailureCount"),
             "writable": True},
            {"name": "state", "node_id": sim.node_id("press-1", "State")},
        ], **options}))


async def read_independently(sim: OpcUaSimulator, variable: str) -> Any:
    async with Client(sim.endpoint) as client:
        return await client.get_node(sim.node_id("press-1", variable)).read_value()


@pytest.mark.parametrize("mode", ["subscribe", "poll"])
async def test_a_write_to_the_setpoint_lands_and_is_read_back(sim: OpcUaSimulator,
                                                              mode: str) -> None:
    driver = make_driver(sim, mode=mode)
    await driver.connect()
    try:
        read_back = await driver.write({"speed_setpoint": 1100})  # an int to a Double node
    finally:
        await driver.close()
    assert read_back == {"speed_setpoint": 1100.0}
    assert await read_independently(sim, "SpeedSetpoint") == 1100.0
    assert sim.plant.machines["press-1"].speed_setpoint_rpm == 1100.0


async def test_a_bad_status_is_write_failed_with_its_name(sim: OpcUaSimulator) -> None:
    driver = make_driver(sim)
    await driver.connect()
    try:
        # The simulator's measured values are read-only: the server refuses the write.
        with pytest.raises(WriteFailed, match=r"'speed' BadUserAccessDenied; nothing was"):
            await driver.write({"speed": 1234.5})
        # OPC UA writes node by node: the setpoint beside the refused node is written.
        with pytest.raises(WriteFailed, match=r"'speed' BadUserAccessDenied; written: "
                                              "speed_setpoint"):
            await driver.write({"speed": 1234.5, "speed_setpoint": 1300})
    finally:
        await driver.close()
    assert await read_independently(sim, "Speed") != 1234.5
    assert await read_independently(sim, "SpeedSetpoint") == 1300.0


async def test_a_value_that_does_not_fit_the_node_type_is_refused_before_sending(
        sim: OpcUaSimulator) -> None:
    driver = make_driver(sim)
    await driver.connect()
    try:
        for values, reason in [({"failures": -1}, "UInt32 node: outside its range"),
                               ({"failures": 2.5}, "takes whole numbers"),
                               ({"speed_setpoint": "fast"}, "takes numbers"),
                               ({"speed": 1e39}, "Float node: outside its range")]:
            with pytest.raises(WriteFailed, match=reason):
                await driver.write({"speed_setpoint": 900, **values})
        with pytest.raises(WriteFailed, match="not a writable point"):
            await driver.write({"state": "stopped"})
    finally:
        await driver.close()
    assert await read_independently(sim, "SpeedSetpoint") == 1480.0


async def test_a_writable_point_on_a_missing_node_names_the_node_and_the_fix(
        sim: OpcUaSimulator) -> None:
    driver = OpcUaDriver(OpcUaDeviceConfig.model_validate({
        "name": "press-1", "protocol": "opcua", "endpoint": sim.endpoint, "points": [
            {"name": "speed_setpoint", "node_id": "ns=2;s=NoSuch.Setpoint",  # a typo
             "writable": True}]}))
    await driver.connect()
    try:
        with pytest.raises(WriteFailed, match=r"node ns=2;s=NoSuch.Setpoint cannot be written: "
                                              r"the server answered BadNodeIdUnknown "
                                              r"\(check its node_id\); nothing was written"):
            await driver.write({"speed_setpoint": 900})
    finally:
        await driver.close()


async def test_births_say_which_points_are_writable(sim: OpcUaSimulator) -> None:
    specs = {s.name: s.writable for s in make_driver(sim).describe("press-1")}
    assert specs == {"speed_setpoint": True, "speed": True, "failures": True, "state": False}


@pytest.mark.parametrize(("value", "vtype"), [
    (10**400, "Double"), (3.5e38, "Float"), (float("nan"), "Double"), (True, "Int32"),
    (1, "Boolean"), (256, "Byte"), (-129, "SByte"), (2**64, "UInt64"), (7, "String"),
    ("x", "Guid"),
])
def test_values_a_node_type_cannot_hold_are_refused(value: Any, vtype: str) -> None:
    with pytest.raises(ValueError):
        variant_for(value, getattr(ua.VariantType, vtype))


@pytest.mark.parametrize(("value", "vtype", "expected"), [
    (3, "Double", 3.0), (2.0, "UInt32", 2), (-128, "SByte", -128), (True, "Boolean", True),
    ("auto", "String", "auto"), (1.5, "Float", 1.5),
])
def test_values_become_variants_of_the_node_type(value: Any, vtype: str, expected: Any) -> None:
    variant = variant_for(value, getattr(ua.VariantType, vtype))
    assert variant.VariantType == getattr(ua.VariantType, vtype)
    assert variant.Value == expected and type(variant.Value) is type(expected)

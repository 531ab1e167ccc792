"""Modbus end to end: simulator -> driver -> runtime -> outbox -> uplink -> Mosquitto -> cloud.

Everything is real: the pymodbus server (simulators/modbus_server.py, its plant
running in real time), the Gateway, and a private Mosquitto as the cloud bus.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.runtime import Gateway
from simulators.cloud_listener import CloudListener
from simulators.modbus_server import ModbusSimulator, device_points, device_tables
from simulators.mosquitto import Mosquitto
from tests.support import configs

PREFIX = "millwright/lab/gw-test"


@pytest.fixture
async def sim() -> AsyncIterator[ModbusSimulator]:
    async with ModbusSimulator() as simulator:
        yield simulator


def gateway_config(tmp_path: Path, mosquitto: Mosquitto, sim: ModbusSimulator,
                   **device_options: Any) -> Any:
    devices = [{**table, "timeout_s": 0.5, **device_options}
               for table in device_tables(sim, poll_interval_s=0.2)]
    return configs.validate(configs.base(tmp_path, mosquitto.url, devices))


def points_seen(cloud: CloudListener, device: str) -> set[str]:
    return {r.point for r in cloud.readings(device)}


def telemetry_count(cloud: CloudListener, device: str) -> int:
    return sum(1 for e in cloud.of_type("telemetry") if e["data"]["device"] == device)


def statuses(cloud: CloudListener, device: str) -> list[str]:
    events = sorted((e for e in cloud.of_type("device_status") if e["data"]["device"] == device),
                    key=lambda e: e["seq"])
    return [e["data"]["status"] for e in events]


async def test_every_configured_point_reaches_the_cloud(tmp_path: Path, mosquitto: Mosquitto,
                                                        cloud: CloudListener,
                                                        sim: ModbusSimulator) -> None:
    expected = {p["name"] for p in device_points()}
    async with Gateway(gateway_config(tmp_path, mosquitto, sim)):
        await cloud.until(
            lambda c: all(points_seen(c, m) == expected for m in sim.unit_ids),
            timeout_s=20, what="every point of every machine",
        )
    for machine in sim.unit_ids:
        assert cloud.topics[f"{PREFIX}/telemetry/{machine}"] > 0
        assert statuses(cloud, machine)[0] == "online"
    for event in cloud.of_type("telemetry"):
        data = event["data"]
        assert "quality" not in data, data  # every point good
        assert 1300 < data["values"]["speed_rpm"] < 1600
        assert set(data["values"]) == expected  # one frame: every point of one poll
    for machine in sim.unit_ids:  # what the values are, once per device
        [birth] = [e for e in cloud.of_type("device_birth") if e["data"]["device"] == machine]
        units = {p["name"]: p["unit"] for p in birth["data"]["points"]}
        assert units["speed_rpm"] == "rpm" and set(units) == expected


async def test_a_server_that_goes_away_is_polled_again_when_it_returns(
        tmp_path: Path, mosquitto: Mosquitto, cloud: CloudListener,
        sim: ModbusSimulator) -> None:
    # Default reconnect settings (1 s doubling to 30 s, jittered): what a user gets.
    async with Gateway(gateway_config(tmp_path, mosquitto, sim)) as gw:
        await cloud.until(lambda c: all(statuses(c, m) == ["online"] for m in sim.unit_ids),
                          timeout_s=20, what="all machines online")
        await sim.stop_serving()
        await cloud.until(
            lambda c: all(statuses(c, m)[-1:] == ["offline"] for m in sim.unit_ids),
            timeout_s=10, what="every machine offline",
        )
        accepted = gw.accepted["press-1"]
        await sim.start_serving()
        await cloud.until(
            lambda c: all(statuses(c, m)[-1:] == ["online"] for m in sim.unit_ids),
            timeout_s=15, what="every machine online again",
        )
        await cloud.until(lambda c: gw.accepted["press-1"] > accepted, timeout_s=5,
                          what="press-1 polled again")
    assert statuses(cloud, "press-1")[:3] == ["online", "offline", "online"]


async def test_a_silent_unit_goes_offline_while_its_link_neighbours_keep_reporting(
        tmp_path: Path, mosquitto: Mosquitto, cloud: CloudListener,
        sim: ModbusSimulator) -> None:
    async with Gateway(gateway_config(tmp_path, mosquitto, sim)) as gw:
        await cloud.until(lambda c: all(statuses(c, m) == ["online"] for m in sim.unit_ids),
                          timeout_s=20, what="all machines online")
        sim.set_fault(sim.unit_ids["mill-2"], "silent")
        await cloud.until(lambda c: statuses(c, "mill-2") == ["online", "offline"],
                          timeout_s=10, what="mill-2 offline")
        # The other two units on the same connection go on being polled...
        before = {m: gw.accepted[m] for m in ("press-1", "pump-3")}
        per_poll = len(device_points())
        await cloud.until(
            lambda c: all(gw.accepted[m] >= before[m] + 5 * per_poll for m in before),
            timeout_s=10, what="five more polls of press-1 and pump-3",
        )
        # ...and never left the online state.
        assert statuses(cloud, "press-1") == statuses(cloud, "pump-3") == ["online"]
        sim.set_fault(sim.unit_ids["mill-2"], None)
        await cloud.until(lambda c: statuses(c, "mill-2") == ["online", "offline", "online"],
                          timeout_s=40, what="mill-2 back online")

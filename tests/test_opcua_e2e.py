"""OPC UA end to end: simulator -> driver -> runtime -> outbox -> uplink -> Mosquitto -> cloud.

Everything is real: the asyncua simulator (its plant running in real time), the
Gateway, and a private Mosquitto as the cloud bus.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.runtime import Gateway
from simulators.cloud_listener import CloudListener, CloudReading
from simulators.mosquitto import Mosquitto
from simulators.opcua_server import VARIABLE_NAMES, OpcUaSimulator
from tests.support import configs

PREFIX = "millwright/lab/gw-test"
MACHINES = ("press-1", "mill-2", "pump-3")
EXPECTED_TYPES = {"Speed": float, "Current": float, "Temperature": float,
                  "VibrationRms": float, "Pressure": float, "Running": bool,
                  "FailureCount": int, "State": str}
UNITS = {"Speed": "rpm", "Current": "A", "Temperature": "degC", "VibrationRms": "mm/s",
         "Pressure": "bar", "Running": None, "FailureCount": None, "State": None}


@pytest.fixture
async def sim() -> AsyncIterator[OpcUaSimulator]:
    async with OpcUaSimulator() as simulator:
        yield simulator


def devices(sim: OpcUaSimulator) -> list[dict[str, Any]]:
    """One device per machine; mill-2 names its nodes by browse path, the others by node id."""
    out = []
    for machine in MACHINES:
        points = []
        for variable in VARIABLE_NAMES:
            address = ({"browse_path": sim.browse_path(machine, variable)} if machine == "mill-2"
                       else {"node_id": sim.node_id(machine, variable)})
            points.append({"name": variable, **address})
        out.append({"name": machine, "protocol": "opcua", "endpoint": sim.endpoint,
                    "publishing_interval_ms": 100, "points": points})
    return out


def telemetry(cloud: CloudListener, device: str) -> list[CloudReading]:
    return cloud.readings(device)


def statuses(cloud: CloudListener, device: str) -> list[str]:
    events = sorted((e for e in cloud.of_type("device_status") if e["data"]["device"] == device),
                    key=lambda e: e["seq"])
    return [e["data"]["status"] for e in events]


def epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def test_every_node_reaches_the_cloud_with_its_type_and_source_time(
        tmp_path: Path, mosquitto: Mosquitto, cloud: CloudListener,
        sim: OpcUaSimulator) -> None:
    config = configs.validate(configs.base(tmp_path, mosquitto.url, devices(sim)))
    async with Gateway(config):
        await cloud.until(
            lambda c: all({r.point for r in telemetry(c, m)} == set(VARIABLE_NAMES)
                          for m in MACHINES),
            timeout_s=20, what="every node of every machine")
    for machine in MACHINES:
        assert cloud.topics[f"{PREFIX}/telemetry/{machine}"] > 0
        assert statuses(cloud, machine)[0] == "online"
        for r in telemetry(cloud, machine):
            assert type(r.value) is EXPECTED_TYPES[r.point], r
            assert r.quality == "good", r
        # Units (the server's EngineeringUnits) travel once, in the device's birth.
        [birth] = [e["data"] for e in cloud.of_type("device_birth")
                   if e["data"]["device"] == machine]
        assert {p["name"]: p["unit"] for p in birth["points"]} == UNITS
    for event in cloud.of_type("telemetry"):
        # A frame's time is the server's SourceTimestamp, taken before the cloud got it;
        # so is the own time of any point of the frame whose time differs.
        data, arrived = event["data"], cloud.receive_times[event["id"]]
        for point in data["values"]:
            sampled = epoch(data.get("times", {}).get(point, data["time"]))
            assert arrived - 10 < sampled <= arrived + 0.001, event
        assert event["time"] == data["time"]


async def test_a_restarted_server_resumes_within_ten_seconds_without_piling_up(
        tmp_path: Path, mosquitto: Mosquitto, cloud: CloudListener,
        sim: OpcUaSimulator) -> None:
    # Default reconnect settings (1 s doubling, jittered): what a user gets.
    config = configs.validate(configs.base(tmp_path, mosquitto.url, devices(sim)[:2]))
    async with Gateway(config):
        await cloud.until(lambda c: all(statuses(c, m) == ["online"] for m in MACHINES[:2]),
                          timeout_s=20, what="both devices online")
        assert sim.subscription_count() == 2
        await sim.restart()
        back = time.time()
        await cloud.until(
            lambda c: all(statuses(c, m)[-2:] == ["offline", "online"] for m in MACHINES[:2]),
            timeout_s=10, what="offline then online again")
        await cloud.until(
            lambda c: all(any(r.point == "Speed" and epoch(r.time) > back
                              for r in telemetry(c, m)) for m in MACHINES[:2]),
            timeout_s=10, what="values from the restarted server")
        # One new subscription per device, and only one, on the new server.
        assert sim.subscription_count() == 2
        assert sim.connection_count() == 2
    for machine in MACHINES[:2]:  # (then "offline" again: the gateway stopping)
        assert statuses(cloud, machine)[:3] == ["online", "offline", "online"]

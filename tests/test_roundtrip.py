"""What the cloud receives, decoded back into readings, is what the simulators served.

One gateway reads a running plant three ways: press-1 over Modbus, mill-2 over OPC UA
(a subscription) and pump-3 from the plant MQTT broker. Each simulator records what it
served (`served=`). Afterwards every reading the cloud holds is taken back out of its
frame (`CloudListener.readings`) and checked point by point and time by time:
- nothing changed or invented: each value is what the simulator served for that point
  at that time (MQTT and OPC UA carry the device's own timestamps, so the match is
  exact; a Modbus poll has no source time, so its value must be one the registers held
  during the poll);
- nothing lost: every MQTT message is a frame with every point, every Modbus poll is
  a frame, every value the OPC UA server changed arrived;
and with report by exception on (plus a heartbeat): every change still arrives,
unchanged values do not, and no point stays silent longer than its heartbeat.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from drivers.modbus.driver import ModbusDriver
from gateway.runtime import Gateway
from simulators.cloud_listener import CloudListener, CloudReading
from simulators.machine import SIGNALS
from simulators.modbus_map import FLOAT32_INPUT, INT16_INPUT, SCALES
from simulators.modbus_server import ModbusSimulator
from simulators.mosquitto import Mosquitto
from simulators.mqtt_publisher import MqttSimulator
from simulators.opcua_server import VARIABLE_NAMES, OpcUaSimulator
from simulators.opcua_space import VARIABLES
from simulators.plant import Plant
from simulators.wait import until
from tests.support import configs

POLL_S = 0.25
HEARTBEAT_S = 1.0
RUN_S = 6.0
FLOAT32_VARIABLES = {v.name for v in VARIABLES if v.variant.name == "Float"}


def epoch(text: str) -> float:
    return round(datetime.fromisoformat(text).timestamp(), 6)


def devices(modbus: ModbusSimulator, opcua: OpcUaSimulator, plant_url: str,
            reporting: dict[str, Any]) -> list[dict[str, Any]]:
    modbus_points = []
    for signal in SIGNALS:
        modbus_points.append({"name": signal, "table": "input",
                              "address": FLOAT32_INPUT[signal], "type": "float32"})
        modbus_points.append({"name": f"{signal}_int16", "table": "input",
                              "address": INT16_INPUT[signal], "type": "int16",
                              "scale": 1 / SCALES[signal]})
    return [
        {"name": "press-1", "protocol": "modbus", "host": modbus.host, "port": modbus.port,
         "unit_id": 1, "poll_interval_s": POLL_S, "timeout_s": 2.0, "points": modbus_points,
         **reporting},
        {"name": "mill-2", "protocol": "opcua", "endpoint": opcua.endpoint,
         "publishing_interval_ms": 100, "sampling_interval_ms": 0, "queue_size": 50,
         "points": [{"name": v, "node_id": opcua.node_id("mill-2", v)} for v in VARIABLE_NAMES],
         **reporting},
        {"name": "pump-3", "protocol": "mqtt", "url": plant_url,
         "topic": "plant/pump-3/telemetry", "timestamp_path": "ts",
         "points": [{"name": s, "path": f"signals.{s}", "type": "number"} for s in SIGNALS]
         + [{"name": "running", "path": "running", "type": "bool"}],
         **reporting},
    ]


class Run:
    """One gateway run over the plant: what was served, and what the cloud received."""

    def __init__(self) -> None:
        self.modbus: list[tuple[float, str, dict[str, float]]] = []
        self.opcua: list[tuple[str, str, float, Any]] = []
        self.mqtt: list[tuple[str, bytes]] = []
        self.readings: list[CloudReading] = []
        self.polls = 0
        self.modbus_frames = 0


async def run_plant(tmp_path: Path, cloud_broker: Mosquitto, plant_broker: Mosquitto,
                    reporting: dict[str, Any]) -> Run:
    run = Run()
    plant = Plant(speed=30.0)
    async with ModbusSimulator(plant, served=run.modbus) as modbus, \
            OpcUaSimulator(plant, served=run.opcua) as opcua:
        raw = configs.base(tmp_path, cloud_broker.url,
                           devices(modbus, opcua, plant_broker.url, reporting))
        with CloudListener(cloud_broker.url) as cloud:
            async with Gateway(configs.validate(raw)) as gw:
                await until(lambda: all(gw.online.values()), 20, "every device online")
                ticking = asyncio.create_task(plant.run(tick_s=0.2))
                try:
                    async with MqttSimulator(plant, url=plant_broker.url, interval_s=POLL_S,
                                             served=run.mqtt):
                        await asyncio.sleep(RUN_S)  # the run's length: data, not a sync
                finally:
                    ticking.cancel()
                served_ts = [orjson.loads(p)["ts"] for t, p in run.mqtt if "pump-3" in t]
                await cloud.until(lambda c: {round(ts, 6) for ts in served_ts} <= {
                    epoch(r.time) for r in c.readings("pump-3")}, 30, "every MQTT message")
                await until(lambda: gw.outbox.stats().depth == 0, 30, "the outbox delivered")
                driver = next(d for d in gw.drivers if isinstance(d, ModbusDriver))
                run.polls = driver.polls
            run.readings = cloud.readings()
            run.modbus_frames = sum(1 for e in cloud.of_type("telemetry")
                                    if e["data"]["device"] == "press-1")
    return run


def check_nothing_changed_or_invented(run: Run) -> None:
    # MQTT: the frame of a message has its timestamp and exactly its values.
    messages = {}
    for topic, payload in run.mqtt:
        body = orjson.loads(payload)
        if "pump-3" in topic:
            messages[round(body["ts"], 6)] = {**body["signals"], "running": body["running"]}
    # OPC UA: each variable's value at each source time.
    opcua = {(var, round(at, 6)): value for machine, var, at, value in run.opcua
             if machine == "mill-2"}
    modbus = sorted((at, signals) for at, machine, signals in run.modbus if machine == "press-1")
    checked = defaultdict(int)
    for r in run.readings:
        at = epoch(r.time)
        assert r.quality == "good", r
        if r.device == "pump-3":
            assert messages[at][r.point] == r.value, r
        elif r.device == "mill-2":
            served = opcua[(r.point, at)]
            if r.point in FLOAT32_VARIABLES:  # a Float travels as float32: same float32
                assert np.float32(served) == np.float32(r.value), (r, served)
            else:
                assert served == r.value, (r, served)
        else:
            assert r.device == "press-1", r
            # What the registers held while the poll ran (it ended at `at`, within 1 s): the
            # last refresh before it started, and any refresh during it.
            earlier = [signals for stamp, signals in modbus if stamp <= at - 1.0][-1:]
            held = earlier + [signals for stamp, signals in modbus if at - 1.0 < stamp <= at]
            assert any(_modbus_matches(r.point, r.value, signals) for signals in held), \
                (r, held[-3:])
        checked[r.device] += 1
    assert set(checked) == {"press-1", "mill-2", "pump-3"} and min(checked.values()) > 20


def _modbus_matches(point: str, value: float, signals: dict[str, float]) -> bool:
    """Whether `value` is what the register map held for `point` given those signals."""
    if point.endswith("_int16"):
        signal = point.removesuffix("_int16")
        raw = max(-32768, min(32767, round(signals[signal] * SCALES[signal])))
        return value == pytest.approx(raw / SCALES[signal], abs=1e-9)
    return bool(np.float32(value) == np.float32(signals[point]))  # a float32 register


def changes(series: list[tuple[float, Any]]) -> list[tuple[float, Any]]:
    """The (time, value) pairs of a series where the value differs from the one before."""
    out, last = [], object()
    for at, value in series:
        if value != last:
            out.append((at, value))
        last = value
    return out


def served_series(run: Run) -> dict[tuple[str, str], list[tuple[float, Any]]]:
    series: dict[tuple[str, str], list[tuple[float, Any]]] = defaultdict(list)
    for topic, payload in run.mqtt:
        if "pump-3" in topic:
            body = orjson.loads(payload)
            for point, value in {**body["signals"], "running": body["running"]}.items():
                series[("pump-3", point)].append((round(body["ts"], 6), value))
    for machine, var, at, value in run.opcua:
        if machine == "mill-2":
            series[("mill-2", var)].append((round(at, 6), value))
    return series


def received_series(run: Run) -> dict[tuple[str, str], list[tuple[float, Any]]]:
    series: dict[tuple[str, str], list[tuple[float, Any]]] = defaultdict(list)
    for r in run.readings:
        series[(r.device, r.point)].append((epoch(r.time), r.value))
    for values in series.values():
        values.sort()
    return series


def check_every_change_arrived(run: Run) -> None:
    received = received_series(run)
    for (device, point), served in served_series(run).items():
        got = {at for at, _ in received[(device, point)]}
        start = min(got)  # from when the gateway was reading that device
        missing = [(at, v) for at, v in changes(served) if at >= start and at not in got]
        assert not missing, (device, point, missing[:5])


async def test_every_reading_arrives_unchanged(tmp_path: Path, mosquitto: Mosquitto,
                                               plant_broker: Mosquitto) -> None:
    run = await run_plant(tmp_path, mosquitto, plant_broker, {})
    check_nothing_changed_or_invented(run)
    check_every_change_arrived(run)
    received = received_series(run)
    # Report by exception off: every MQTT message is a frame with every one of its points,
    served = {round(orjson.loads(p)["ts"], 6) for t, p in run.mqtt if "pump-3" in t}
    for point in [*SIGNALS, "running"]:
        assert {at for at, _ in received[("pump-3", point)]} >= served
    # and every Modbus poll is a frame holding every point.
    assert run.modbus_frames == run.polls
    assert all(len(received[("press-1", p)]) == run.polls
               for p in (*SIGNALS, *(f"{s}_int16" for s in SIGNALS)))


async def test_report_by_exception_sends_changes_and_heartbeats_only(
        tmp_path: Path, mosquitto: Mosquitto, plant_broker: Mosquitto) -> None:
    run = await run_plant(tmp_path, mosquitto, plant_broker,
                          {"report": "on_change", "heartbeat_s": HEARTBEAT_S})
    check_nothing_changed_or_invented(run)
    check_every_change_arrived(run)
    received = received_series(run)
    # Unchanged values are not sent: pump-3 keeps running, so `running` travels only with
    # its heartbeat, not in each of the many messages.
    messages = sum(1 for t, _ in run.mqtt if "pump-3" in t)
    running = received[("pump-3", "running")]
    assert messages > 15 and len(running) <= RUN_S / HEARTBEAT_S + 3 < messages
    # No point is silent for longer than its heartbeat (plus one sampling interval).
    for (device, point), series in received.items():
        times = [at for at, _ in series]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        assert max(gaps, default=0.0) <= HEARTBEAT_S + 2 * POLL_S, (device, point, gaps)

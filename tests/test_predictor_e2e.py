"""Failure prediction end to end: a machine wearing out behind the Modbus simulator is flagged
at a cloud subscriber before the simulator reports it failed.

Everything is real: the plant and its pymodbus server, the Modbus driver, the Gateway
(outbox, predictor with the bundled ONNX model, uplink) and a private Mosquitto. Time
runs SPEED times faster than the wall clock, and the gateway polls every
STEP_S / SPEED seconds, so each reading is one training step (60 simulated seconds)
and the device's windows mean what the model's training windows meant.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from gateway.runtime import Gateway
from models.onnx_model import load_model
from simulators.cloud_listener import CloudListener
from simulators.machine import SIGNALS, UNITS
from simulators.modbus_server import FLOAT32_INPUT, STATUS_FAILED, STATUS_INPUT, ModbusSimulator
from simulators.mosquitto import Mosquitto
from simulators.plant import MachineSpec, Plant
from tests.support import configs

log = logging.getLogger(__name__)

PREFIX = "millwright/lab/gw-test"
STEP_S = load_model("bundled").step_s or 60.0
SPEED = 1200.0
POLL_S = STEP_S / SPEED
LIFE_S = 4 * 3600.0


def device(sim: ModbusSimulator) -> dict:
    points = [{"name": s, "table": "input", "address": FLOAT32_INPUT[s], "type": "float32",
               "unit": UNITS[s]} for s in SIGNALS]
    points.append({"name": "status", "table": "input", "address": STATUS_INPUT,
                   "type": "uint16"})
    return {"name": "press-1", "protocol": "modbus", "host": sim.host, "port": sim.port,
            "unit_id": sim.unit_ids["press-1"], "poll_interval_s": POLL_S, "timeout_s": 1.0,
            "points": points}


def failed_status_seen(cloud: CloudListener) -> list[dict]:
    return [e for e in cloud.of_type("telemetry")
            if e["data"]["values"].get("status") == STATUS_FAILED]


async def test_wear_is_flagged_at_the_cloud_before_the_machine_fails(
        tmp_path: Path, mosquitto: Mosquitto, cloud: CloudListener) -> None:
    plant = Plant([MachineSpec("press-1", seed=21, life_s=LIFE_S, onset_fraction=0.5)],
                  speed=SPEED)
    async with ModbusSimulator(plant) as sim:
        raw = configs.base(tmp_path, mosquitto.url, [device(sim)])
        raw["assets"] = [{
            "name": "press-1", "model": "bundled",
            "inputs": {s: f"press-1/{s}" for s in SIGNALS},
            "alarm_after": 3, "cooldown_s": 3600.0,
            "evaluate_every_s": POLL_S, "stale_after_s": 2.0, "sample_every_s": POLL_S,
        }]
        # A fine plant tick, so that every poll sees a sample the previous poll did not.
        plant_task = asyncio.create_task(plant.run(tick_s=POLL_S / 5))
        try:
            async with Gateway(configs.validate(raw)):
                await cloud.until(lambda c: c.of_type("maintenance_needed"), timeout_s=60,
                                  what="a maintenance_needed event")
                failures_when_flagged = plant.failures["press-1"]
                remaining_s = plant.machines["press-1"].remaining_life_s
                await cloud.until(failed_status_seen, timeout_s=60,
                                  what="the simulator reporting the failure")
        finally:
            plant_task.cancel()
            await asyncio.gather(plant_task, return_exceptions=True)

    log.info("flagged %.0f simulated minutes (%.1f s) before the failure", remaining_s / 60,
             remaining_s / SPEED)
    assert failures_when_flagged == 0, "the machine had already failed when it was flagged"
    event = cloud.of_type("maintenance_needed")[0]
    failure = failed_status_seen(cloud)[0]
    assert cloud.receive_times[event["id"]] < cloud.receive_times[failure["id"]]
    assert cloud.topics[f"{PREFIX}/maintenance_needed/press-1"] >= 1
    data = event["data"]
    assert data["asset"] == "press-1" and data["probability"] >= data["threshold"]
    assert data["model"]["name"] == "millwright-bundled"
    assert data["inputs"]["vibration_mm_s"]["source"] == "press-1/vibration_mm_s"
    assert event["time"] < failure["time"]

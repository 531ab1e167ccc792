"""The chaos run's rig: brokers, simulators, a cloud subscriber, and the gateway as a child process.

`async with Rig(settings) as rig:` brings up, on loopback only:
- the cloud broker and the plant broker (private Mosquittos on free ports);
- one `Plant` (three machines, accelerated) served over Modbus TCP (press-1, unit 1),
  OPC UA (mill-2) and MQTT (pump-3, published to the plant broker);
- a persistent-session cloud subscriber feeding a `Ledger`;
- the gateway config (all three devices, the bundled predictor for every machine),
  and `rig.start_gateway()` runs `python -m gateway.cli run --config FILE` so it can
  be SIGKILLed. Leaving the block kills whatever is still running, even on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.chaos_ledger import Ledger
from simulators.cloud_listener import CloudListener
from simulators.machine import SIGNALS, UNITS
from simulators.modbus_map import DISCRETE_FAILED, FLOAT32_INPUT
from simulators.modbus_server import ModbusSimulator
from simulators.mosquitto import Mosquitto
from simulators.mqtt_publisher import MqttSimulator
from simulators.opcua_server import OpcUaSimulator
from simulators.plant import MachineSpec, Plant

ROOT = Path(__file__).resolve().parents[1]
SITE, GATEWAY = "chaos", "gw-chaos"
PREFIX = f"millwright/{SITE}/{GATEWAY}"
MODBUS_DEVICE, OPCUA_DEVICE, MQTT_DEVICE = "press-1", "mill-2", "pump-3"
DEVICES = (MODBUS_DEVICE, OPCUA_DEVICE, MQTT_DEVICE)
MODBUS_UNIT = 1
SHUTDOWN_TIMEOUT_S = 10.0
TRAINING_STEP_S = 60.0  # the bundled model's step_s (docs/model.md)
OPCUA_VARIABLES = {"speed_rpm": "Speed", "current_a": "Current", "temperature_c": "Temperature",
                   "vibration_mm_s": "VibrationRms", "pressure_bar": "Pressure"}


@dataclass(frozen=True)
class RigSettings:
    speed: float = 300.0  # simulated seconds per second: machines wear out within minutes
    poll_s: float = 0.1  # Modbus poll, OPC UA publishing interval, MQTT publish interval
    press_life_wall_s: float = 40.0  # press-1 wears out this soon (wall clock) the first time
    reconnect_min_s: float = 0.2
    reconnect_max_s: float = 2.0
    keep_dir: bool = False


class Rig:
    """Everything the chaos run drives; see the module docstring."""

    def __init__(self, settings: RigSettings) -> None:
        self.settings = settings
        self.dir = Path(tempfile.mkdtemp(prefix="millwright-chaos-"))
        self.config_path = self.dir / "gateway.toml"
        self.outbox_path = self.dir / "data" / "outbox.db"
        self.log_path = self.dir / "gateway.log"
        self.ledger = Ledger()
        self.cloud_broker = Mosquitto()
        self.plant_broker = Mosquitto()
        self.plant = Plant([
            MachineSpec(MODBUS_DEVICE, seed=11, life_s=settings.press_life_wall_s * settings.speed,
                        onset_fraction=0.4),
            MachineSpec(OPCUA_DEVICE, seed=12), MachineSpec(MQTT_DEVICE, seed=13),
        ], speed=settings.speed)
        self.modbus = ModbusSimulator(self.plant, unit_ids={MODBUS_DEVICE: MODBUS_UNIT})
        self.opcua = OpcUaSimulator(self.plant)
        self.mqtt: MqttSimulator | None = None
        self.listener: CloudListener | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.gateway_starts = 0
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Rig:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def _start(self) -> None:
        stack = self._stack
        stack.callback(self._remove_dir)
        for broker in (self.cloud_broker, self.plant_broker):
            stack.callback(broker.close)
            await asyncio.to_thread(broker.start)
        await stack.enter_async_context(self.modbus)
        await stack.enter_async_context(self.opcua)
        self.mqtt = await stack.enter_async_context(MqttSimulator(
            self.plant, url=self.plant_broker.url, interval_s=self.settings.poll_s))
        plant_task = asyncio.create_task(self.plant.run(tick_s=0.05), name="chaos-plant")
        stack.push_async_callback(_cancel, plant_task)
        self.listener = CloudListener(self.cloud_broker.url, f"{PREFIX}/+/+",
                                      on_event=self.ledger.on_event,
                                      client_id=f"chaos-cloud-{os.getpid()}")
        await asyncio.to_thread(self.listener.start)
        stack.callback(self.listener.stop)
        stack.callback(self.kill_gateway)
        self.config_path.write_text(to_toml(self.config()))

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    def _remove_dir(self) -> None:
        if not self.settings.keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- the gateway process -------------------------------------------------------------

    def start_gateway(self) -> float:
        """Start `millwright run`; returns the wall-clock time it was started."""
        assert self.gateway is None or self.gateway.poll() is not None, "gateway still running"
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.gateway_starts + 1} at {time.time():.3f}\n".encode())
            log.flush()
            started = time.time()
            self.gateway = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config_path)],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C on the harness must not kill it behind our back.
                start_new_session=True)
        self.gateway_starts += 1
        return started

    def kill_gateway(self) -> int | None:
        """SIGKILL the gateway (if running) and reap it; its exit status, None if not running."""
        process = self.gateway
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        return process.wait(10)

    def signal_gateway(self, signum: int) -> None:
        """Send a signal to the gateway if it is running (safe from any thread)."""
        process = self.gateway
        if process is not None and process.poll() is None:
            process.send_signal(signum)

    def gateway_running(self) -> bool:
        return self.gateway is not None and self.gateway.poll() is None

    async def stop_gateway(self, timeout_s: float) -> int | None:
        """SIGTERM and wait for the exit code; None (and SIGKILL) when it does not exit in time."""
        process = self.gateway
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(process.wait, timeout_s)
        except subprocess.TimeoutExpired:
            self.kill_gateway()
            return None

    def log_tail(self, chars: int = 3000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    # -- the config --------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        s = self.settings
        backoff = {"reconnect_min_s": s.reconnect_min_s, "reconnect_max_s": s.reconnect_max_s}
        modbus_points: list[dict[str, Any]] = [
            {"name": signal_name, "table": "input", "address": FLOAT32_INPUT[signal_name],
             "type": "float32", "unit": UNITS[signal_name]} for signal_name in SIGNALS]
        modbus_points.append({"name": "failed", "table": "discrete",
                              "address": DISCRETE_FAILED})
        opcua_points: list[dict[str, Any]] = [
            {"name": name, "node_id": self.opcua.node_id(OPCUA_DEVICE, variable)}
            for name, variable in OPCUA_VARIABLES.items()]
        opcua_points.append({"name": "state",
                             "node_id": self.opcua.node_id(OPCUA_DEVICE, "State")})
        sample_every_s = TRAINING_STEP_S / s.speed  # one training step of plant time
        return {
            "gateway": {"id": GATEWAY, "site": SITE, "data_dir": str(self.outbox_path.parent),
                        "allow_root": True, "shutdown_timeout_s": SHUTDOWN_TIMEOUT_S},
            "cloud": {"url": self.cloud_broker.url, **backoff},
            "health": {"enabled": False},
            "devices": [
                {"name": MODBUS_DEVICE, "protocol": "modbus", "host": self.modbus.host,
                 "port": self.modbus.port, "unit_id": MODBUS_UNIT, "poll_interval_s": s.poll_s,
                 "timeout_s": 1.0, **backoff, "points": modbus_points},
                {"name": OPCUA_DEVICE, "protocol": "opcua", "endpoint": self.opcua.endpoint,
                 "publishing_interval_ms": s.poll_s * 1000, **backoff, "points": opcua_points},
                {"name": MQTT_DEVICE, "protocol": "mqtt", "url": self.plant_broker.url,
                 "topic": self.mqtt.topic(MQTT_DEVICE) if self.mqtt else "",
                 "timestamp_path": "ts", **backoff,
                 "points": [{"name": name, "path": f"signals.{name}", "unit": UNITS[name]}
                            for name in SIGNALS]},
            ],
            "assets": [
                {"name": device, "model": "bundled",
                 "inputs": {name: f"{device}/{name}" for name in SIGNALS},
                 "sample_every_s": sample_every_s, "evaluate_every_s": sample_every_s,
                 "alarm_after": 3, "cooldown_s": 20.0}
                for device in DEVICES
            ],
        }


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def to_toml(table: dict[str, Any]) -> str:
    """TOML for the config: tables, arrays of tables, scalars, lists and inline tables."""
    lines: list[str] = []
    _emit(table, [], lines)
    return "\n".join(lines) + "\n"


def _emit(table: dict[str, Any], prefix: list[str], lines: list[str]) -> None:
    nested = []
    for key, value in table.items():
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            nested.append((key, value, True))
        elif isinstance(value, dict) and not prefix:
            nested.append((key, value, False))
        else:
            lines.append(f"{key} = {_value(value)}")
    for key, value, is_array in nested:
        name = ".".join([*prefix, key])
        for item in value if is_array else [value]:
            lines.append(f"\n[[{name}]]" if is_array else f"\n[{name}]")
            _emit(item, [*prefix, key], lines)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")

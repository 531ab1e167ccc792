"""MQTT commands: published to the device's command_topic on a real Mosquitto, at QoS 1."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from drivers.mqtt.config import MqttDeviceConfig
from drivers.mqtt.driver import MqttDriver
from gateway.config import validate
from gateway.errors import ConfigError, WriteFailed
from simulators.machine import NOMINAL_SPEED_RPM
from simulators.mosquitto import Mosquitto
from simulators.mqtt_publisher import MqttSimulator
from simulators.plant import Plant
from simulators.wait import until

COMMAND_TOPIC = "plant/press-1/command"


class Subscriber:
    """Another client on the plant broker: what the device would receive."""

    def __init__(self, url: str, topic: str) -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.messages: list[tuple[str, int, bool, Any]] = []  # topic, qos, retain, payload
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                   client_id=f"device-{uuid.uuid4().hex[:8]}")
        self._client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.on_message = lambda c, u, m: self.messages.append(
            (m.topic, m.qos, m.retain, json.loads(m.payload)))
        self._client.connect(host, int(port))
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError(f"no SUBACK for {topic}")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def device(url: str, **table: Any) -> MqttDeviceConfig:
    raw = {"name": "press-1", "protocol": "mqtt", "url": url, "topic": "plant/press-1/telemetry",
           "command_topic": COMMAND_TOPIC, "connect_timeout_s": 5.0, "points": [
               {"name": "speed_setpoint_rpm", "path": "speed_setpoint_rpm", "type": "number",
                "writable": True, "min": 0, "max": 1800},
               {"name": "mode", "path": "mode", "type": "string", "writable": True,
                "allowed": ["auto", "manual"]},
               {"name": "vibration_mm_s", "path": "vibration_mm_s", "type": "number"},
           ], **table}
    config = validate({"gateway": {"id": "g"}, "devices": [raw]}).devices[0]
    assert isinstance(config, MqttDeviceConfig)
    return config


@pytest.fixture
def listener(plant_broker: Mosquitto) -> Iterator[Subscriber]:
    subscriber = Subscriber(plant_broker.url, COMMAND_TOPIC)
    yield subscriber
    subscriber.close()


@pytest.mark.parametrize("version", ["5", "3.1.1"])
async def test_a_command_is_published_to_the_command_topic_at_qos_1(
        plant_broker: Mosquitto, listener: Subscriber, version: str) -> None:
    driver = MqttDriver(device(plant_broker.url, mqtt_version=version))
    await driver.connect()
    try:
        # Returns once the broker's PUBACK came; MQTT has no read-back.
        assert await driver.write({"speed_setpoint_rpm": 1100.5, "mode": "manual"}) == {}
    finally:
        await driver.close()
    await until(lambda: listener.messages, 10, "the command at the device")
    assert listener.messages == [
        (COMMAND_TOPIC, 1, False, {"values": {"speed_setpoint_rpm": 1100.5, "mode": "manual"}})]


async def test_a_command_the_broker_refuses_is_write_failed(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic read #\ntopic write plant/other/#\n")
    with Mosquitto(conf=f"acl_file {acl}\n") as broker:
        driver = MqttDriver(device(broker.url))
        await driver.connect()
        try:
            with pytest.raises(WriteFailed, match="refused the command on "
                                                  "'plant/press-1/command': Not authorized"):
                await driver.write({"speed_setpoint_rpm": 900})
        finally:
            await driver.close()


async def test_a_point_that_is_not_writable_is_not_published(
        plant_broker: Mosquitto, listener: Subscriber) -> None:
    driver = MqttDriver(device(plant_broker.url))
    await driver.connect()
    try:
        with pytest.raises(WriteFailed, match="not writable: vibration_mm_s"):
            await driver.write({"vibration_mm_s": 1.0})
        with pytest.raises(WriteFailed, match="not writable: vibration_mm_s"):
            await driver.write({"vibration_mm_s": 1.0, "mode": "manual"})
        # A sentinel on the same connection arrives after anything published before it
        # (MQTT keeps one session's order on a topic): when it is in, nothing else came.
        assert await driver.write({"mode": "auto"}) == {}
    finally:
        await driver.close()
    await until(lambda: listener.messages, 10, "the sentinel at the device")
    assert listener.messages == [(COMMAND_TOPIC, 1, False, {"values": {"mode": "auto"}})]


def test_births_say_which_points_are_writable(plant_broker: Mosquitto) -> None:
    specs = {s.name: s.writable for s in MqttDriver(device(plant_broker.url)).describe("press-1")}
    assert specs == {"speed_setpoint_rpm": True, "mode": True, "vibration_mm_s": False}


def test_a_writable_point_needs_a_command_topic() -> None:
    with pytest.raises(ConfigError) as caught:
        device("mqtt://127.0.0.1:1883", command_topic=None)
    assert any("'speed_setpoint_rpm', 'mode' are writable but the device has no "
               "command_topic" in line and "devices[0]" in line for line in caught.value.problems)


def test_a_command_topic_must_be_a_topic_name() -> None:
    with pytest.raises(ConfigError) as caught:
        device("mqtt://127.0.0.1:1883", command_topic="plant/+/command")
    assert any("command_topic" in line for line in caught.value.problems)


async def test_the_mqtt_simulator_applies_a_speed_setpoint_command(
        plant_broker: Mosquitto) -> None:
    plant = Plant()  # not run: only the command changes it
    async with MqttSimulator(plant, url=plant_broker.url, interval_s=None) as sim:
        driver = MqttDriver(device(plant_broker.url))
        await driver.connect()
        try:
            await driver.write({"mode": "manual"})  # not a setpoint: ignored by the press
            await driver.write({"speed_setpoint_rpm": 1150})
        finally:
            await driver.close()
        await until(lambda: sim.commands, 10, "the command at the simulator")
    assert sim.commands == [("press-1", {"speed_setpoint_rpm": 1150})]
    assert sim.commands_ignored == 1
    assert plant.machines["press-1"].speed_setpoint_rpm == 1150
    assert plant.machines["mill-2"].speed_setpoint_rpm == NOMINAL_SPEED_RPM

"""What the cloud sees of frames: a device's birth (retained), zstd payloads, queue figures."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway import cloudevents
from gateway.runtime import Gateway
from simulators.cloud_listener import CloudListener
from simulators.modbus_server import ModbusSimulator
from simulators.mosquitto import Mosquitto, free_port
from simulators.plant import Plant
from simulators.wait import until, wait_for
from tests.support import configs, counter_driver

PREFIX = "millwright/lab/gw-test"
COMMAND = "tests.support.run_gateway"  # `millwright`, with the test-only counter registered


def press(sim: ModbusSimulator, **options: Any) -> dict[str, Any]:
    return {"name": "press-1", "protocol": "modbus", "host": sim.host, "port": sim.port,
            "unit_id": 1, "poll_interval_s": 0.1, "timeout_s": 1.0,
            "points": [{"name": "speed_rpm", "table": "input", "address": 0,
                        "type": "float32", "unit": "rpm"},
                       {"name": "status", "table": "input", "address": 15, "type": "uint16"}],
            **options}


class Subscriber:
    """An MQTT 5 subscriber keeping each message's topic, payload, retain flag and properties."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, bytes, bool, dict[str, str]]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not subscribed.wait(10):
            self.close()
            raise TimeoutError(f"no subscription to {topic}")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        user = dict(getattr(msg.properties, "UserProperty", None) or [])
        with self._lock:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain), user))

    def received(self) -> list[tuple[str, bytes, bool, dict[str, str]]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


async def test_a_device_is_born_once_retained_before_its_first_frame(
        tmp_path: Path, mosquitto: Mosquitto, cloud: CloudListener) -> None:
    async with ModbusSimulator(Plant()) as sim:
        raw = configs.base(tmp_path, mosquitto.url, [press(sim)])
        async with Gateway(configs.validate(raw)) as gw:
            await cloud.until(lambda c: len(c.of_type("telemetry")) >= 5, what="frames")
            # A reconnect with the same points is not a new birth.
            await sim.stop_serving()
            await until(lambda: not gw.online["press-1"], 10, "offline")
            await sim.start_serving()
            before = len(cloud.of_type("telemetry"))
            await cloud.until(lambda c: len(c.of_type("telemetry")) > before + 3,
                              what="frames again")
    [birth] = cloud.of_type("device_birth")
    assert birth["data"] == {"device": "press-1", "points": [
        {"name": "speed_rpm", "type": "float32", "unit": "rpm", "writable": False},
        {"name": "status", "type": "uint16", "unit": None, "writable": False}]}
    assert birth["type"] == "io.millwright.device_birth" and birth["schemaversion"] == "2"
    # Born before its first frame: its seq comes first in the device's source.
    first_frame = min(e["seq"] for e in cloud.of_type("telemetry"))
    assert birth["source"].endswith("/press-1") and birth["seq"] < first_frame
    assert cloud.topics[f"{PREFIX}/birth/press-1"] == 1
    # Retained: a consumer that subscribes later still learns the device's points.
    late = Subscriber(mosquitto.port, f"{PREFIX}/birth/#")
    try:
        wait_for(lambda: late.received(), 10, "the retained birth")
        [(topic, payload, retained, _)] = late.received()
        assert topic == f"{PREFIX}/birth/press-1" and retained
        assert cloudevents.decode(payload) == [birth]
    finally:
        late.close()


async def test_a_frame_carries_values_only_once_described(
        tmp_path: Path, mosquitto: Mosquitto, cloud: CloudListener) -> None:
    async with ModbusSimulator(Plant()) as sim:
        raw = configs.base(tmp_path, mosquitto.url, [press(sim)])
        async with Gateway(configs.validate(raw)):
            await cloud.until(lambda c: len(c.of_type("telemetry")) >= 2, what="frames")
    event = cloud.of_type("telemetry")[0]
    assert set(event) == {"specversion", "id", "source", "type", "time", "subject",
                          "datacontenttype", "seq", "schemaversion", "data"}
    assert event["subject"] == "press-1" and event["time"] == event["data"]["time"]
    assert set(event["data"]) == {"device", "time", "values"}  # no quality, times or units
    assert set(event["data"]["values"]) == {"speed_rpm", "status"}


@pytest.fixture
def counter(counter_protocol: None) -> dict[str, Any]:
    return counter_driver.table(rate_hz=200, batch=10)


async def test_zstd_payloads_say_so_and_decode_in_one_call(
        tmp_path: Path, mosquitto: Mosquitto, counter: dict[str, Any]) -> None:
    raw = configs.base(tmp_path, mosquitto.url, [counter],
                       cloud={"mqtt_version": "5", "compression": "zstd"})
    wire = Subscriber(mosquitto.port, f"{PREFIX}/#")
    try:
        async with Gateway(configs.validate(raw)):
            await until(lambda: sum(1 for m in wire.received() if "/telemetry/" in m[0]) >= 5,
                        20, "compressed telemetry")
    finally:
        wire.close()
    payloads = [m for m in wire.received() if "/status" not in m[0]]
    assert payloads and all(p.startswith(cloudevents.ZSTD_MAGIC) for _, p, _, _ in payloads)
    assert all(user == {"content-encoding": "zstd"} for *_, user in payloads)
    values = []
    for topic, payload, _, user in payloads:
        events = cloudevents.decode(payload, content_encoding=user["content-encoding"])
        assert events == cloudevents.decode(payload)  # the magic number is enough, too
        if "/telemetry/" in topic:
            values += [v for e in events for v in e["data"]["values"].values()]
    assert values == list(range(len(values)))


def test_compression_needs_mqtt_5(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check", "--config",
         str(configs.write(tmp_path / "gw.toml", configs.base(
             tmp_path, "mqtt://127.0.0.1:1883", cloud={"compression": "zstd"})))],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert 'cloud (' not in proc.stderr and "cloud: compression = \"zstd\"" in proc.stderr
    assert 'set mqtt_version = "5"' in proc.stderr


def test_a_zstd_bomb_is_refused_without_inflating_it() -> None:
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(b"[" + b" " * 50_000_000 + b"]")
    with pytest.raises(cloudevents.CloudEventError, match="more than the 1048576-byte limit"):
        cloudevents.decode(bomb, max_bytes=1 << 20)
    with pytest.raises(cloudevents.CloudEventError, match="not valid zstd"):
        cloudevents.decode(cloudevents.ZSTD_MAGIC + b"garbage")
    with pytest.raises(cloudevents.CloudEventError, match="content-encoding 'gzip'"):
        cloudevents.decode(b"[]", content_encoding="gzip")


async def test_queue_stats_tell_readings_bytes_per_reading_and_hours(
        tmp_path: Path, counter: dict[str, Any]) -> None:
    raw = configs.base(tmp_path, f"mqtt://127.0.0.1:{free_port()}", [counter])
    path = configs.write(tmp_path / "gw.toml", raw)
    async with Gateway(configs.validate(raw)) as gw:
        # The ingest rate is measured once a second and written into the file.
        await until(lambda: gw.accepted["c"] > 300, 20, "readings")

        async def rate_saved() -> bool:
            stats = await asyncio.to_thread(_stats, path)
            return bool(stats["ingest"]["readings_per_s"] > 0)

        await until(rate_saved, 20, "rate saved")
    stats = await asyncio.to_thread(_stats, path)
    assert stats["readings"] == gw.accepted["c"] and stats["depth"] >= stats["readings"]
    assert 0 < stats["bytes_per_reading"] == pytest.approx(stats["bytes"] / stats["readings"],
                                                           abs=0.1)
    # 200 readings/s (give or take the start) of ~this many bytes fill max_bytes in hours:
    rate = stats["ingest"]["bytes_per_s"]
    assert stats["hours_at_current_rate"] == round(stats["max_bytes"] / rate / 3600, 1)
    assert 100 < stats["ingest"]["readings_per_s"] < 400
    shown = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", COMMAND, "queue", "stats", "--config", str(path)],
        capture_output=True, text=True, timeout=60)
    text = shown.stdout
    assert f"{stats['depth']} events, {stats['readings']} readings" in text
    assert "per reading)" in text and "h of outage at that rate" in text


def _stats(path: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", COMMAND, "queue", "stats", "--config",
                           str(path), "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_queue_stats_say_when_there_is_no_outbox(tmp_path: Path) -> None:
    path = configs.write(tmp_path / "gw.toml", configs.base(tmp_path, "mqtt://127.0.0.1:1"))
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "queue", "stats", "--config",
                           str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "no outbox at" in done.stderr and done.stdout == ""


async def test_linger_gathers_events_into_fewer_messages(
        tmp_path: Path, mosquitto: Mosquitto, cloud: CloudListener) -> None:
    from gateway import events
    from gateway.frames import Frame

    raw = configs.base(tmp_path, mosquitto.url, cloud={"linger_s": 5.0})
    async with Gateway(configs.validate(raw)) as gw:
        await until(lambda: gw.uplink.connected, 10, "connected")
        for n in range(5):  # five commits, well within the linger
            await gw.outbox.append([events.telemetry(Frame("press-1", 1e9 + n, {"n": n}, 1e9))])
        await cloud.until(lambda c: len(c.values("press-1")) == 5, timeout_s=20,
                          what="the lingering batch")
    assert cloud.values("press-1") == [0, 1, 2, 3, 4]
    assert cloud.topics[f"{PREFIX}/telemetry/press-1"] == 1  # one message for all five

"""MQTT ingest benchmark: plant messages per second into the outbox, acknowledged after persist.

Each figure drains the same kind of backlog from a private Mosquitto: N messages from
the MQTT simulator (one machine, a 6-value JSON payload of about 190 bytes) are
queued at QoS 1 in a persistent session first, then the subscriber connects and is
timed from its first message (or commit) to its last. Measured in the same run:
- raw: a bare paho subscriber (MQTT 5, same Receive Maximum, paho's automatic PUBACK,
  the callback only counts);
- driver only: `MqttDriver.read` decoding the payloads into readings, each batch
  acknowledged at once (no events, no outbox);
- gateway: the real `Gateway` with the MQTT device; readings are committed to the
  outbox and only then acknowledged. The cloud broker is unreachable, so nothing
  leaves the outbox and the uplink costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.mqtt.config import MqttDeviceConfig
from drivers.mqtt.driver import MqttDriver
from gateway.config import validate
from gateway.runtime import Gateway
from simulators.machine import SIGNALS
from simulators.mosquitto import Mosquitto, free_port
from simulators.mqtt_publisher import MqttSimulator
from simulators.wait import until

RECEIVE_MAXIMUM = 512  # the driver's default
POINTS = [{"name": "seq", "path": "seq", "type": "integer"}] + [
    {"name": name, "path": f"signals.{name}", "type": "number"} for name in SIGNALS]


def main(quick: bool) -> list[dict[str, Any]]:
    logging.getLogger("gateway").setLevel(logging.ERROR)  # the unreachable cloud is on purpose
    return asyncio.run(_run(5_000 if quick else 50_000))


async def _run(messages: int) -> list[dict[str, Any]]:
    with Mosquitto() as broker, tempfile.TemporaryDirectory(prefix="mw-bench-mqtt-") as tmp:
        raw = await _bare_paho(broker, messages)
        driver = await _driver_only(broker, messages)
        gateway = await _gateway(broker, Path(tmp), messages)
    return [
        _figure("mqtt_bare_paho_subscriber_qos1", raw, None),
        _figure("mqtt_driver_only_decode_and_ack", driver, raw),
        _figure("mqtt_ingest_to_outbox_ack_after_persist", gateway, raw),
    ]


def _figure(metric: str, value: float, raw: float | None) -> dict[str, Any]:
    return {"metric": metric, "value": round(value), "unit": "messages/s",
            "raw": None if raw is None else round(raw),
            "ratio": round(value / raw, 3) if raw else None}


def _device(url: str, topic: str, client_id: str) -> MqttDeviceConfig:
    table = {"name": "plant", "protocol": "mqtt", "url": url, "topic": topic,
             "device_from_topic": True, "timestamp_path": "ts", "client_id": client_id,
             "receive_maximum": RECEIVE_MAXIMUM, "points": POINTS}
    config = validate({"gateway": {"id": "bench"}, "devices": [table]}).devices[0]
    assert isinstance(config, MqttDeviceConfig)
    return config


async def _queue_backlog(broker: Mosquitto, prefix: str, messages: int) -> None:
    async with MqttSimulator(url=broker.url, interval_s=None,
                             topic_template=prefix + "/{machine}/telemetry") as sim:
        await sim.publish_numbered(messages, machine="press-1", timeout_s=300)


async def _bare_paho(broker: Mosquitto, messages: int) -> float:
    prefix, client_id = f"bench/{uuid.uuid4().hex[:8]}", f"bench-bare-{uuid.uuid4().hex[:8]}"
    times: list[float] = []
    done, subscribed = threading.Event(), threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        times.append(time.perf_counter())
        if len(times) >= messages:
            done.set()

    def session() -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
        client.on_connect = lambda c, *_: c.subscribe(prefix + "/+/telemetry", qos=1)
        client.on_subscribe = lambda *_: subscribed.set()
        client.on_message = on_message
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = 3600
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        client.connect("127.0.0.1", broker.port, clean_start=False, properties=properties)
        client.loop_start()
        return client

    client = session()  # create the session and its subscription, then leave
    await asyncio.to_thread(subscribed.wait, 10)
    client.disconnect()
    await asyncio.to_thread(client.loop_stop)
    await _queue_backlog(broker, prefix, messages)
    subscribed.clear()
    client = session()
    try:
        if not await asyncio.to_thread(done.wait, 300):
            raise TimeoutError(f"bare paho: {len(times)} of {messages} messages")
    finally:
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
    return (len(times) - 1) / (times[-1] - times[0])


async def _driver_only(broker: Mosquitto, messages: int) -> float:
    prefix = f"bench/{uuid.uuid4().hex[:8]}"
    driver = MqttDriver(_device(broker.url, prefix + "/+/telemetry",
                                f"bench-driver-{uuid.uuid4().hex[:8]}"))
    await driver.connect()
    await driver.close()
    await _queue_backlog(broker, prefix, messages)
    await driver.connect()
    got, first = 0, 0.0
    try:
        while got < messages:
            batch = await asyncio.wait_for(driver.read(), 60)
            if not first:
                first = time.perf_counter()
            got += sum(1 for f in batch.frames if "seq" in f.values)
            if batch.ack is not None:
                batch.ack()
        return got / (time.perf_counter() - first)
    finally:
        await driver.close()


async def _gateway(broker: Mosquitto, data_dir: Path, messages: int) -> float:
    prefix, client_id = f"bench/{uuid.uuid4().hex[:8]}", f"bench-gw-{uuid.uuid4().hex[:8]}"
    device = _device(broker.url, prefix + "/+/telemetry", client_id)
    warmup = MqttDriver(device)  # the gateway's session must exist before the backlog
    await warmup.connect()
    await warmup.close()
    await _queue_backlog(broker, prefix, messages)
    config = validate({
        "gateway": {"id": "bench", "data_dir": str(data_dir), "allow_root": True},
        "cloud": {"url": f"mqtt://127.0.0.1:{free_port()}"},  # nobody: nothing leaves
        "health": {"enabled": False},
        "devices": [device.model_dump(exclude_none=True)],
    })
    total = messages * len(POINTS)
    async with Gateway(config) as gw:
        def accepted() -> int:
            return sum(gw.accepted.values())

        # Checked every millisecond: the timing resolution of the figure.
        await until(lambda: accepted() > 0, 300, "the first commit", interval_s=0.001)
        first_count, first = accepted(), time.perf_counter()
        await until(lambda: accepted() >= total, 300, f"all {total} readings committed",
                    interval_s=0.001)
        elapsed = time.perf_counter() - first
    return (total - first_count) / len(POINTS) / elapsed



if __name__ == "__main__":
    import json
    import sys

    for result in main("--quick" in sys.argv):
        print(json.dumps(result))

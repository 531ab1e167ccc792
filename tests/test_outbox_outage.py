"""A full disk while the cloud is connected: devices stay online, refused readings are counted.

Before: a refused commit ended the device's session, so every retry was an offline and
an online event (18 in 25 s in the field). Now a device's online state is the
device's: the refusals are counted in millwright_device_readings_refused_total and
logged once per episode. A polled-style source (the counter, no acknowledgement) loses
what was refused; an MQTT QoS 1 source is held back and loses nothing.

The disk is a small tmpfs filled to ENOSPC (root only; skipped elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from gateway.runtime import Gateway
from simulators.cloud_listener import CloudListener
from simulators.mosquitto import Mosquitto
from simulators.mqtt_publisher import MqttSimulator
from simulators.wait import until
from tests.support import configs, counter_driver
from tests.test_resources import fill

pytestmark = pytest.mark.usefixtures("counter_protocol")


@contextlib.contextmanager
def small_disk(where: Path, size: str = "32m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where` (root only: skipped elsewhere), unmounted after."""
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def refused(device: str) -> float:
    return REGISTRY.get_sample_value("millwright_device_readings_refused_total",
                                     {"device": device}) or 0.0


def device_errors(device: str) -> float:
    return REGISTRY.get_sample_value("millwright_device_errors_total", {"device": device}) or 0.0


def mqtt_device(url: str) -> dict[str, Any]:
    return {"name": "plant-mqtt", "protocol": "mqtt", "url": url, "topic": "plant/+/telemetry",
            "device_from_topic": True, "timestamp_path": "ts", "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.5, "batch_max_messages": 16,
            "points": [{"name": "seq", "path": "seq", "type": "integer"}]}


def seqs_at_cloud(cloud: CloudListener) -> set[Any]:
    return set(cloud.values("press-1", "seq"))


async def test_a_full_disk_with_the_cloud_connected_does_not_flap_devices(
        tmp_path: Path, mosquitto: Mosquitto, plant_broker: Mosquitto, cloud: CloudListener,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with small_disk(tmp_path / "disk") as disk:
        raw = configs.base(tmp_path, mosquitto.url, [
            counter_driver.table("c", rate_hz=2000, batch=20), mqtt_device(plant_broker.url)])
        raw["gateway"]["data_dir"] = str(disk / "data")
        before = {d: (refused(d), device_errors(d)) for d in ("c", "press-1", "plant-mqtt")}
        async with Gateway(configs.validate(raw)) as gw, \
                MqttSimulator(url=plant_broker.url, interval_s=None) as sim:
            async def subscribed() -> bool:  # messages sent before the SUBACK are not kept
                await sim.publish("press-1")
                return bool(seqs_at_cloud(cloud))

            await until(subscribed, 30, "a first MQTT message at the cloud", interval_s=0.1)
            await cloud.until(lambda c: len(c.values("c")) > 200, what="the counter at the cloud")
            published: set[Any] = set()
            seen: set[tuple[bool, ...]] = set()

            def refusing() -> bool:
                seen.add(tuple(gw.online.values()))
                return (refused("c") > before["c"][0] + 1000
                        and refused("press-1") > before["press-1"][0]
                        and gw.outbox.commit_failures >= 4)

            filler = await asyncio.to_thread(fill, disk)
            # Published while the disk is full: the MQTT driver's batches are held.
            published |= set(await sim.publish_numbered(100, machine="press-1"))
            await until(refusing, 60, "refusals counted over several failed commits",
                        interval_s=0.01, detail=lambda: f"online states {seen}")
            assert seen == {(True, True)}, seen  # never offline, not for a moment
            assert gw.online == {"c": True, "plant-mqtt": True}
            accepted = gw.accepted["c"]
            filler.unlink()
            await until(lambda: gw.accepted["c"] > accepted + 200, 30, "readings accepted again")
            # Held, not lost: every message published during the outage reaches the cloud.
            await cloud.until(lambda c: published <= seqs_at_cloud(c), timeout_s=60,
                              what="every MQTT message at the cloud")
    for device in ("c", "plant-mqtt"):
        assert device_errors(device) == before[device][1], device
    lines = [r.getMessage() for r in caplog.records]
    for device in ("c", "plant-mqtt"):
        episodes = [m for m in lines if m.startswith(f"device {device}: the outbox refuses")]
        assert len(episodes) == 1, episodes
        assert "the device stays online" in episodes[0]
        assert len([m for m in lines
                    if m.startswith(f"device {device}: the outbox takes its readings again")]) == 1
    assert "they are lost" in next(m for m in lines if m.startswith("device c: the outbox"))
    assert "held and retried" in next(m for m in lines
                                      if m.startswith("device plant-mqtt: the outbox"))
    assert not [m for m in lines if " offline: " in m and "gateway stopping" not in m], lines
    offline = [e["data"] for e in cloud.of_type("device_status")
               if e["data"]["status"] == "offline" and e["data"]["reason"] != "gateway stopping"]
    assert not offline, offline

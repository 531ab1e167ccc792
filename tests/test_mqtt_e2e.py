"""End to end through two real brokers: plant sensors -> `millwright run` -> cloud subscriber.

5,000 numbered messages are published at QoS 1 on the plant broker, faster than the
gateway (a child process) takes them, while it is killed with SIGKILL eight times and
the cloud broker is stopped once. Because the driver acknowledges a plant message only
after its readings are in the outbox, every value arrives; redelivered copies carry the
same event id. (A driver that acknowledged on receipt lost messages in such runs: each
kill that lands between a batch's receipt and its commit drops it.)
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from simulators.cloud_listener import CloudListener
from simulators.machine import SIGNALS, UNITS
from simulators.mosquitto import Mosquitto, free_port
from simulators.mqtt_publisher import MqttSimulator
from simulators.wait import until
from tests.support import configs
from tests.support.outbox_file import row_count

ROOT = Path(__file__).resolve().parents[1]
MESSAGES = 5_000
# Values at the cloud after which the gateway is killed; the cloud is away at the third.
KILLS_AT = (300, 900, 1500, 2100, 2700, 3300, 3900, 4500)
OUTAGE_AT = 1500


def plant_device(url: str) -> dict[str, Any]:
    return {
        "name": "plant-floor", "protocol": "mqtt", "url": url, "topic": "plant/+/telemetry",
        "device_from_topic": True, "timestamp_path": "ts", "client_id": "millwright-e2e-plant",
        "reconnect_min_s": 0.05, "reconnect_max_s": 0.5,
        "points": [{"name": "seq", "path": "seq", "type": "integer"}] + [
            {"name": signal_name, "path": f"signals.{signal_name}", "type": "number",
             "unit": UNITS[signal_name]} for signal_name in SIGNALS],
    }


def start_gateway(config_path: Path) -> subprocess.Popen[bytes]:
    with open(config_path.with_name("gateway.log"), "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(config_path)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def log_of(config_path: Path) -> str:
    return config_path.with_name("gateway.log").read_text(errors="replace")[-4000:]


async def until_or_explain(condition: Callable[[], object], timeout_s: float, what: str,
                           cloud: CloudListener, config_path: Path) -> None:
    """`until`, but a timeout says what is missing at that moment and shows the gateway's log."""
    try:
        await until(condition, timeout_s, what)
    except TimeoutError:
        missing = sorted(set(range(MESSAGES)) - arrived(cloud))
        raise AssertionError(f"{what}: not within {timeout_s}s; {len(missing)} values missing "
                             f"(first {missing[:20]})\n{log_of(config_path)}") from None


def seq_copies(cloud: CloudListener) -> list[dict[str, Any]]:
    """Every telemetry frame with the `seq` point that reached the cloud, duplicates included."""
    return [e for e in list(cloud.events)
            if e.get("type", "").endswith("telemetry") and "seq" in e["data"]["values"]]


def arrived(cloud: CloudListener) -> set[int]:
    return values_of(cloud, "press-1")


def values_of(cloud: CloudListener, device: str) -> set[int]:
    return {e["data"]["values"]["seq"] for e in seq_copies(cloud)
            if e["data"]["device"] == device}


def rejected(health_port: int) -> dict[str, float]:
    """millwright_device_rejected_total by reason, from the running gateway's /metrics."""
    url = f"http://127.0.0.1:{health_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {sample.labels["reason"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "millwright_device_rejected"
            for sample in family.samples
            if sample.name.endswith("_total") and sample.labels["device"] == "plant-floor"}


def online_since(cloud: CloudListener, device: str, since: float) -> bool:
    """True once the cloud has heard `device` come online at or after `since` (epoch s)."""
    return any(e.get("type", "").endswith("device_status") and e["data"]["device"] == device
               and e["data"]["status"] == "online"
               and datetime.fromisoformat(e["time"]).timestamp() >= since
               for e in list(cloud.events))


async def test_5000_messages_survive_sigkills_and_a_cloud_outage(
        tmp_path: Path, plant_broker: Mosquitto, mosquitto: Mosquitto,
        cloud: CloudListener) -> None:
    health_port = free_port()
    path = configs.write(tmp_path / "gw.toml", configs.base(
        tmp_path, mosquitto.url, [plant_device(plant_broker.url)],
        health={"enabled": True, "port": health_port}))
    started_at = time.time()
    proc = start_gateway(path)
    starts = 1
    try:
        # The persistent session must exist before the first message, or nothing queues it.
        await until(lambda: online_since(cloud, "plant-floor", started_at), 30, "device online")
        async with MqttSimulator(url=plant_broker.url, interval_s=None) as sim:
            publishing = asyncio.create_task(
                sim.publish_numbered(MESSAGES, machine="press-1", timeout_s=120))
            for threshold in KILLS_AT:
                await until_or_explain(lambda t=threshold: len(arrived(cloud)) >= t, 60,
                                       f"{threshold} values at the cloud", cloud, path)
                if threshold == OUTAGE_AT:
                    # The cloud goes away; the gateway keeps taking plant data into its
                    # outbox, and is killed with that backlog in it.
                    mosquitto.stop()
                    await until(lambda: row_count(tmp_path / "data" / "outbox.db") >= 500,
                                60, "a backlog in the outbox during the cloud outage")
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                if threshold == OUTAGE_AT:
                    mosquitto.start()
                started_at = time.time()
                proc = start_gateway(path)
                starts += 1
            assert await publishing == range(MESSAGES)
            await until_or_explain(lambda: len(arrived(cloud)) == MESSAGES, 90,
                                   f"all {MESSAGES} values at the cloud", cloud, path)
            # The last gateway must be up (signal handlers in place) before it is stopped.
            await until(lambda: online_since(cloud, "plant-floor", started_at), 30,
                        "the last gateway online")

            # Bad payloads beside good ones: rejected, counted in the gateway's metrics,
            # and the good messages behind them still flow.
            sim.malformed(3)
            sim.oversized(2, size_bytes=100_000)  # over the default 64 KiB
            sim.wrong_types(2)  # seq is still a good integer, the 5 signals are not
            await sim.publish_numbered(10, machine="mill-2")
            await until(lambda: values_of(cloud, "mill-2") == {5, 6, 7, 8, 9}, 30,
                        "the good mill-2 values")
            await until(lambda: rejected(health_port) == {"malformed": 3, "oversized": 2,
                                                          "wrong_type": 10}, 30,
                        f"rejections counted in /metrics (now {rejected(health_port)})")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_of(path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

    copies = [e for e in seq_copies(cloud) if e["data"]["device"] == "press-1"]
    assert arrived(cloud) == set(range(MESSAGES))
    ids_by_value: dict[int, set[str]] = defaultdict(set)
    for event in copies:
        ids_by_value[event["data"]["values"]["seq"]].add(event["id"])
    assert all(len(ids) == 1 for ids in ids_by_value.values()), "a duplicate had a new id"
    print(f"\nmqtt e2e: {MESSAGES} values through {starts} gateway starts "
          f"({len(KILLS_AT)} SIGKILLs, 1 cloud outage): {len(copies)} copies, "
          f"{len(copies) - MESSAGES} duplicates, same ids")

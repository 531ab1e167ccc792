"""Commands end to end, against a real Mosquitto: a Gateway with [commands] enabled, the
counter driver as the device, `send_command` (what `millwright command` runs) as the operator.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from gateway.command_cli import publish_command, send_command
from gateway.runtime import Gateway
from simulators.cloud_listener import CloudListener
from simulators.mosquitto import Mosquitto
from simulators.wait import until
from tests.support import configs, counter_driver

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "millwright/lab/gw-test"

pytestmark = pytest.mark.usefixtures("counter_protocol")

POINTS = [{"name": "speed", "type": "float32", "writable": True, "min": 0, "max": 100},
          {"name": "mode", "type": "string", "writable": True, "allowed": ["auto", "manual"]},
          {"name": "temp", "type": "float32"}]


def raw_config(tmp_path: Path, url: str, **commands: Any) -> dict[str, Any]:
    devices = [
        counter_driver.table("press", rate_hz=5, batch=1, points=POINTS),
        counter_driver.table("down", offline=True, points=POINTS[:1]),
        counter_driver.table("stubborn", rate_hz=5, batch=1, refuse_writes=True,
                             points=POINTS[:1]),
    ]
    return configs.base(tmp_path, url, devices, commands={"enabled": True, **commands})


async def command(url: str, device: str, values: dict[str, Any], **options: Any) -> dict[str, Any]:
    return await asyncio.to_thread(send_command, url, PREFIX, device, values,
                                   timeout_s=20, **options)


def counted(device: str, status: str) -> float:
    return REGISTRY.get_sample_value("millwright_commands_total",
                                     {"device": device, "status": status}) or 0.0


async def online(gw: Gateway, *devices: str) -> None:
    await until(lambda: all(gw.online[d] for d in devices), 20, f"{devices} online")


async def test_done_with_read_back_and_each_refusal(tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with Gateway(configs.validate(raw_config(tmp_path, mosquitto.url))) as gw:
        await online(gw, "press", "stubborn")
        driver = gw.command_target("press")[0]
        assert isinstance(driver, counter_driver.CounterDriver)
        done_before = counted("press", "done")

        result = await command(mosquitto.url, "press", {"speed": 40, "mode": "auto"},
                               command_id="ok-1")
        assert result["status"] == "done", result
        assert result["written"] == {"speed": 40, "mode": "auto"}
        assert result["read_back"] == {"speed": 40, "mode": "auto"}
        assert result["command_id"] == "ok-1" and result["device"] == "press"
        assert driver.values == {"speed": 40, "mode": "auto"}
        assert counted("press", "done") == done_before + 1

        cases = [
            ("press", {"nope": 1}, "rejected", "unknown point"),
            ("press", {"temp": 1}, "rejected", "not writable"),
            ("press", {"speed": 101}, "rejected", "out of range"),
            ("press", {"speed": "fast"}, "rejected", "wrong type"),
            ("press", {"mode": "turbo"}, "rejected", "not allowed"),
            ("ghost", {"speed": 1}, "rejected", "unknown device"),
            ("down", {"speed": 1}, "rejected", "offline"),
            ("stubborn", {"speed": 1}, "failed", "illegal data address"),
        ]
        for index, (device, values, status, reason) in enumerate(cases):
            result = await command(mosquitto.url, device, values, command_id=f"case-{index}")
            assert (result["status"], result["device"]) == (status, device), result
            assert reason in result["reason"], result
            assert result["written"] == {} or status == "failed"
        stale = await command(mosquitto.url, "press", {"speed": 1}, command_id="stale-1",
                              at=time.time() - 60)
        assert stale["status"] == "expired" and "max_age_s" in stale["reason"]
        malformed = await command(mosquitto.url, "press", {}, command_id=None,
                                  payload=b'{"not": "a command"}')
        assert malformed["status"] == "rejected" and "malformed" in malformed["reason"]
        gw.commands.clock = lambda: 1_000.0  # the gateway's clock as a Pi without RTC boots
        unsynchronised = await command(mosquitto.url, "press", {"speed": 1},
                                       command_id="clock-1")
        assert unsynchronised["status"] == "rejected"
        assert "clock is not synchronised" in unsynchronised["reason"]
        assert driver.writes == [{"speed": 40, "mode": "auto"}]  # nothing refused was written
        assert counted("_unknown", "rejected") >= 1


async def test_a_duplicate_id_writes_once_and_gets_the_earlier_result(
        tmp_path: Path, mosquitto: Mosquitto, cloud: CloudListener) -> None:
    async with Gateway(configs.validate(raw_config(tmp_path, mosquitto.url))) as gw:
        await online(gw, "press")
        driver = gw.command_target("press")[0]
        assert isinstance(driver, counter_driver.CounterDriver)
        first = await command(mosquitto.url, "press", {"speed": 40}, command_id="dup-1")
        assert first["status"] == "done"
        await until(lambda: gw.outbox.stats().depth == 0, 20, "the result delivered")
        driver.values["speed"] = 7  # another client changes the value meanwhile
        again = await command(mosquitto.url, "press", {"speed": 40}, command_id="dup-1")
        assert again == first
        assert driver.writes == [{"speed": 40}] and driver.values["speed"] == 7
        await cloud.until(lambda c: len(results_for(c, "dup-1")) == 2,
                          what="the result sent twice")
        results = results_for(cloud, "dup-1")
        assert results[0]["id"] == results[1]["id"]  # the same event: consumers keep one


def start_gateway(config_path: Path, **env: str) -> subprocess.Popen[bytes]:
    with open(config_path.with_name("gateway.log"), "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.run_gateway", "run", "--config",
             str(config_path)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, **env})


def results_for(cloud: CloudListener, command_id: str) -> list[dict[str, Any]]:
    return [e for e in cloud.events if e["type"].endswith("command_result")
            and e["data"]["command_id"] == command_id]


def test_kill_9_between_intent_and_result_gives_one_uncertain_result_and_no_second_write(
        tmp_path: Path, mosquitto: Mosquitto, cloud: CloudListener) -> None:
    raw = raw_config(tmp_path, mosquitto.url)
    raw["devices"] = raw["devices"][:1]
    config_path = configs.write(tmp_path / "gateway.toml", raw)
    write_log = tmp_path / "writes.jsonl"
    hooks = {counter_driver.WRITE_LOG: str(write_log)}
    proc = start_gateway(config_path, **hooks, **{counter_driver.WRITE_KILL: "1"})
    try:
        cloud.wait_for(lambda c: any(e["data"].get("status") == "online"
                                     for e in c.of_type("device_status")
                                     if e["data"].get("device") == "press"),
                       what="press online")
        publish_command(mosquitto.url, PREFIX, "press", {"speed": 55}, command_id="kill-1")
        assert proc.wait(timeout=20) == -signal.SIGKILL  # it killed itself inside the write
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert write_log.read_text().splitlines() == ['{"speed": 55}']
    assert results_for(cloud, "kill-1") == []
    proc = start_gateway(config_path, **hooks)
    try:
        cloud.wait_for(lambda c: results_for(c, "kill-1"), what="the result after restart")
        # The broker redelivers the unacknowledged command: it is answered, not run again.
        again = send_command(mosquitto.url, PREFIX, "press", {"speed": 55},
                             command_id="kill-1", timeout_s=20)
        assert again["status"] == "uncertain"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    results = results_for(cloud, "kill-1")
    assert {e["id"] for e in results} == {results[0]["id"]}  # one result (maybe sent again)
    assert results[0]["data"]["status"] == "uncertain"
    assert results[0]["data"]["written"] == {"speed": 55}
    assert results[0]["data"]["read_back"] == {"speed": 55}  # the device's value after restart
    assert write_log.read_text().splitlines() == ['{"speed": 55}']  # not written again


async def test_millwright_command_exits_0_on_done_and_1_otherwise(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    async with Gateway(configs.validate(raw_config(tmp_path, mosquitto.url))) as gw:
        await online(gw, "press")

        async def cli(*values: str) -> tuple[int, dict[str, Any]]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.cli", "command", "--url", mosquitto.url,
                "--prefix", PREFIX, "--timeout", "20", "press", *values, cwd=ROOT,
                stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            return proc.returncode or 0, json.loads(out)

        code, result = await cli("speed=40", "mode=auto")
        assert (code, result["status"]) == (0, "done")
        code, result = await cli("speed=400")
        assert (code, result["status"]) == (1, "rejected")


@pytest.mark.parametrize("version", ["3.1.1", "5"])
async def test_commands_arrive_again_after_the_broker_restarts(
        tmp_path: Path, version: str) -> None:
    with Mosquitto(conf="persistence false") as mosquitto:  # a restart forgets every session
        await _commands_across_a_broker_restart(tmp_path, mosquitto, version)


async def _commands_across_a_broker_restart(tmp_path: Path, mosquitto: Mosquitto,
                                            version: str) -> None:
    raw = raw_config(tmp_path, mosquitto.url)
    raw["cloud"]["mqtt_version"] = version
    async with Gateway(configs.validate(raw)) as gw:
        await online(gw, "press")
        first = await command(mosquitto.url, "press", {"speed": 10}, command_id="before")
        assert first["status"] == "done"
        mosquitto.stop()
        await until(lambda: not gw.uplink.connected, 20, "the uplink sees the outage")
        mosquitto.start()
        await until(lambda: gw.uplink.connected, 20, "the uplink back")
        # The broker kept no session across its restart: the gateway subscribed again.
        again = await command(mosquitto.url, "press", {"speed": 20}, command_id="after")
        assert again["status"] == "done" and again["read_back"] == {"speed": 20}


def test_check_warns_when_commands_are_on_and_nothing_is_writable(tmp_path: Path) -> None:
    raw = configs.base(tmp_path, "mqtt://127.0.0.1:1883", [counter_driver.table("press")],
                       commands={"enabled": True})
    path = configs.write(tmp_path / "gateway.toml", raw)
    done = subprocess.run([sys.executable, "-m", "tests.support.run_gateway", "check",
                           "--config", str(path)], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert "warning: commands.enabled: no point is writable" in done.stderr
    raw["devices"][0]["points"] = POINTS[:1]
    configs.write(path, raw)
    done = subprocess.run([sys.executable, "-m", "tests.support.run_gateway", "check",
                           "--config", str(path)], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr


@pytest.mark.parametrize("version", ["3.1.1", "5"])
async def test_a_command_sent_while_the_gateway_is_away_waits_in_its_session(
        tmp_path: Path, mosquitto: Mosquitto, cloud: CloudListener, version: str) -> None:
    raw = raw_config(tmp_path, mosquitto.url)
    raw["cloud"]["mqtt_version"] = version
    config = configs.validate(raw)
    async with Gateway(config) as gw:  # the first run makes the session and subscribes
        await online(gw, "press")
    await asyncio.to_thread(publish_command, mosquitto.url, PREFIX, "press", {"speed": 33},
                            command_id="queued")
    async with Gateway(config) as gw:
        await cloud.until(lambda c: results_for(c, "queued"), what="the queued command's result")
        driver = gw.command_target("press")[0]
        assert isinstance(driver, counter_driver.CounterDriver)
    result = results_for(cloud, "queued")[0]["data"]
    # Delivered the moment the gateway reconnects, before the device is online: the runner
    # waits for the device's first connection attempt rather than refusing it as offline.
    assert result["status"] == "done", result
    assert driver.writes == [{"speed": 33}]


async def test_commands_are_acknowledged_so_more_than_the_brokers_window_flow(
        tmp_path: Path) -> None:
    # With max_inflight_messages 20, Mosquitto keeps at most 20 unacknowledged QoS 1
    # messages in flight to a client: 60 commands on one connection all get results only
    # if each is acknowledged (by hand, after its result is in the outbox).
    with Mosquitto(conf="max_inflight_messages 20") as mosquitto, \
            CloudListener(mosquitto.url) as cloud:
        await _many_commands(tmp_path, mosquitto, cloud)


async def _many_commands(tmp_path: Path, mosquitto: Mosquitto, cloud: CloudListener) -> None:
    async with Gateway(configs.validate(raw_config(tmp_path, mosquitto.url))) as gw:
        await online(gw, "press")
        for index in range(60):
            await asyncio.to_thread(publish_command, mosquitto.url, PREFIX, "press",
                                    {"speed": index}, command_id=f"many-{index}")
        await cloud.until(lambda c: len({e["data"]["command_id"] for e in c.of_type(
            "command_result")}) == 60, what="60 results")
        driver = gw.command_target("press")[0]
        assert isinstance(driver, counter_driver.CounterDriver)
        assert [w["speed"] for w in driver.writes] == list(range(60))  # in order, each once

"""Wall-clock faults: readings from an unset clock are flagged, a step back stalls nothing.

A Pi without a real-time clock boots in 1970 until NTP answers. The source below is
the counter driver with its readings stamped by such a clock (a real driver on the
registry, like the counter itself); a second, ordinary counter runs beside it. The
flag's rule itself is unit-tested in tests/test_events.py
(test_readings_from_an_unset_clock_are_flagged).

A wall clock stepped back (an NTP step, `date -s`) is played by libfaketime on a real
`millwright run` process: only CLOCK_REALTIME moves, as in the field. The predictor's
schedule runs on the monotonic clock and keeps ticking; event times stay wall-clock.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pytest

import drivers
from gateway.driver import Batch
from gateway.events import CLOCK_SANE_AFTER
from gateway.runtime import Gateway
from simulators.cloud_listener import CloudListener
from simulators.machine import SIGNALS
from simulators.mosquitto import Mosquitto, free_port
from simulators.wait import wait_for
from tests.support import configs, counter_driver

BOOT_1970 = 86_400.0 + 0.25  # a day after the epoch: the clock has not been set


class UnsetClockConfig(counter_driver.CounterConfig):
    protocol: Literal["unset_clock_counter"]  # type: ignore[assignment]


class UnsetClockCounter(counter_driver.CounterDriver):
    """The counter, as it reads on a device whose clock still says 1970."""

    config_model = UnsetClockConfig

    async def read(self) -> Batch:
        batch = await super().read()
        return Batch([dataclasses.replace(f, time=BOOT_1970 + i * 0.001,
                                          received=BOOT_1970 + i * 0.001)
                      for i, f in enumerate(batch.frames)])


@pytest.fixture(autouse=True)
def protocols(monkeypatch: pytest.MonkeyPatch, counter_protocol: None) -> None:
    monkeypatch.setitem(drivers.REGISTRY, "unset_clock_counter",
                        f"{__name__}:UnsetClockCounter")


async def test_readings_from_an_unset_clock_reach_the_cloud_flagged(
        tmp_path, mosquitto: Mosquitto, cloud: CloudListener) -> None:
    raw = configs.base(tmp_path, mosquitto.url, [
        {"name": "early", "protocol": "unset_clock_counter", "rate_hz": 100, "batch": 10,
         "limit": 50},
        {"name": "synced", "protocol": "counter", "rate_hz": 100, "batch": 10, "limit": 50},
    ])
    config = configs.validate(raw)

    def arrived(c: CloudListener, device: str) -> list[dict[str, Any]]:
        return [e for e in c.of_type("telemetry") if e["data"]["device"] == device]

    async with Gateway(config):
        await cloud.until(lambda c: len(arrived(c, "early")) == 50
                          and len(arrived(c, "synced")) == 50, what="both devices' readings")
    for event in arrived(cloud, "early"):
        assert event["data"]["clock_unsynchronised"] is True
        assert event["time"].startswith("1970-01-02T00:00:00.")
        assert event["data"]["time"] == event["time"]
    for event in arrived(cloud, "synced"):
        assert "clock_unsynchronised" not in event["data"]
        assert event["time"] >= "2023-11-14T22:13:20"  # CLOCK_SANE_AFTER
    assert CLOCK_SANE_AFTER > BOOT_1970


# -- the wall clock stepped back: schedules run on the monotonic clock ----------------------

ROOT = Path(__file__).resolve().parents[1]
LIBFAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))


def predictor_ticks(port: int, asset: str) -> float:
    """Evaluations run plus evaluations skipped for `asset`: one per tick that found it due."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return 0.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith(("millwright_predictor_evaluations_total{",
                            "millwright_predictor_skipped_total{")) and f'asset="{asset}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def stepped_back(cloud: CloudListener, by_s: float) -> bool:
    """A reading stamped at least `by_s` before now has reached the cloud."""
    latest = [datetime.fromisoformat(e["time"]).timestamp()
              for e in cloud.of_type("telemetry")[-50:]]
    return any(t < time.time() - by_s for t in latest)


def test_a_wall_clock_stepped_back_an_hour_does_not_freeze_the_predictor(
        tmp_path: Path, mosquitto: Mosquitto, cloud: CloudListener) -> None:
    if not LIBFAKETIME:
        if os.environ.get("CI"):
            pytest.fail("libfaketime is missing on CI: scripts/test installs the Debian "
                        "package faketime")
        pytest.skip("needs libfaketime (Debian package faketime)")
    port = free_port()
    raw = configs.base(tmp_path, mosquitto.url,
                       [counter_driver.table("c", rate_hz=50, batch=5)],
                       health={"enabled": True, "port": port})
    raw["assets"] = [{"name": "a", "inputs": {s: "c/n" for s in SIGNALS},
                      "evaluate_every_s": 0.05, "sample_every_s": 0.0, "alarm_after": 1,
                      "cooldown_s": 3600.0}]
    config = configs.write(tmp_path / "gw.toml", raw)
    offset = tmp_path / "faketime.rc"
    offset.write_text("+0\n")
    env = {**os.environ, "LD_PRELOAD": LIBFAKETIME[0], "FAKETIME_TIMESTAMP_FILE": str(offset),
           "FAKETIME_CACHE_DURATION": "1",
           # What an NTP step or `date -s` does: only the wall clock jumps.
           "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.run_gateway", "run", "--config", str(config)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: predictor_ticks(port, "a") >= 5 or proc.poll() is not None, 60,
                 "the predictor's first ticks", detail=lambda: log.read_text()[-2000:])
        assert proc.poll() is None, log.read_text()
        offset.write_text("-1h\n")  # the wall clock goes back an hour
        cloud.wait_for(lambda c: stepped_back(c, 3000), 30, "readings stamped an hour back")
        ticks = predictor_ticks(port, "a")
        # The predictor keeps evaluating, on its schedule, after the step.
        wait_for(lambda: predictor_ticks(port, "a") >= ticks + 20, 30,
                 "twenty more predictor ticks after the clock stepped back",
                 detail=lambda: f"{predictor_ticks(port, 'a')} ticks, were {ticks}")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, log.read_text()[-2000:]

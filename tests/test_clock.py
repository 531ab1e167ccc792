"""Frames sampled before the clock was set reach the cloud flagged `clock_unsynchronised`.

A Pi without a real-time clock boots in 1970 until NTP answers. The source below is
the counter driver with its readings stamped by such a clock (a real driver on the
registry, like the counter itself); a second, ordinary counter runs beside it. The
flag's rule itself is unit-tested in tests/test_events.py
(test_readings_from_an_unset_clock_are_flagged).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import pytest

import drivers
from gateway.driver import Batch
from gateway.events import CLOCK_SANE_AFTER
from gateway.runtime import Gateway
from simulators.cloud_listener import CloudListener
from simulators.mosquitto import Mosquitto
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

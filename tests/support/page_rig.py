"""A gateway with the page on, the Modbus simulator behind it, and headless Chromium in front.

Used by tests/test_page_browser.py, and to take the screenshot in docs/operations.md:

    python -m tests.support.page_rig docs/page.png

Chromium is Debian's (`chromium`, `chromium-driver`), driven by Selenium through the
chromedriver of the same package, so the two always match and nothing is downloaded.
Selenium blocks: tests call it through `asyncio.to_thread` while the gateway serves
from the test's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from gateway.runtime import Gateway
from models.onnx_model import load_model
from simulators.machine import SIGNALS, UNITS
from simulators.modbus_server import (
    FLOAT32_CDAB_HOLDING,
    FLOAT32_INPUT,
    MACHINE_TIME_INPUT,
    STATUS_INPUT,
    ModbusSimulator,
)
from simulators.mosquitto import Mosquitto
from simulators.plant import MachineSpec, Plant
from tests.support import configs

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
STEP_S = load_model("bundled").step_s or 60.0
SPEED = 1200.0  # simulated seconds per second: press-1 wears out within seconds
POLL_S = STEP_S / SPEED
LIFE_S = 4 * 3600.0
MILL_POLL_S = 0.2
MILL_TIMEOUT_S = 0.5


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if shutil.which(path) is None:
            return (f"{path} not found: install Debian's {package} (scripts/test installs "
                    "chromium and chromium-driver when they are missing)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: pip install -e '.[dev]'"
    return None


def start_browser(width: int = 1280, height: int = 1000) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--no-first-run", "--disable-extensions", f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def _signal_points(table: str, addresses: dict[str, int], suffix: str = "",
                   byte_order: str = "ABCD") -> list[dict[str, Any]]:
    return [{"name": s + suffix, "table": table, "address": addresses[s], "type": "float32",
             "byte_order": byte_order, "unit": UNITS[s]} for s in SIGNALS]


def devices(sim: ModbusSimulator) -> list[dict[str, Any]]:
    """press-1, polled once a training step (its windows feed the model), and mill-2."""
    press = _signal_points("input", FLOAT32_INPUT) + [
        {"name": "speed_rpm_cdab", "table": "holding",
         "address": FLOAT32_CDAB_HOLDING["speed_rpm"], "type": "float32", "byte_order": "CDAB",
         "unit": "rpm"},
        {"name": "status", "table": "input", "address": STATUS_INPUT, "type": "uint16"},
        {"name": "machine_time_s", "table": "input", "address": MACHINE_TIME_INPUT,
         "type": "uint32", "unit": "s"}]
    mill = _signal_points("input", FLOAT32_INPUT)[:3]
    common = {"protocol": "modbus", "host": sim.host, "port": sim.port,
              "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}
    return [
        {**common, "name": "press-1", "unit_id": sim.unit_ids["press-1"],
         "poll_interval_s": POLL_S, "timeout_s": 1.0, "points": press},
        {**common, "name": "mill-2", "unit_id": sim.unit_ids["mill-2"],
         "poll_interval_s": MILL_POLL_S, "timeout_s": MILL_TIMEOUT_S, "points": mill},
    ]


@contextlib.asynccontextmanager
async def running(tmp_path: Path, cloud_url: str) -> AsyncIterator[tuple[Gateway, ModbusSimulator]]:
    """The plant (press-1 wearing out fast, mill-2 healthy), its simulator, the gateway."""
    plant = Plant([MachineSpec("press-1", seed=21, life_s=LIFE_S, onset_fraction=0.5),
                   MachineSpec("mill-2", seed=2)], speed=SPEED)
    async with ModbusSimulator(plant) as sim:
        raw = configs.base(tmp_path, cloud_url, devices(sim), health={"enabled": True, "port": 0})
        raw["assets"] = [{
            "name": "press-1", "model": "bundled", "inputs": {s: f"press-1/{s}" for s in SIGNALS},
            "alarm_after": 3, "cooldown_s": 3600.0, "evaluate_every_s": POLL_S,
            "stale_after_s": 2.0, "sample_every_s": POLL_S}]
        plant_task = asyncio.create_task(plant.run(tick_s=POLL_S / 5))
        try:
            async with Gateway(configs.validate(raw)) as gateway:
                yield gateway, sim
        finally:
            plant_task.cancel()
            await asyncio.gather(plant_task, return_exceptions=True)


def wait_page(browser: Any, condition: Callable[[Any], object], timeout_s: float,
              what: str) -> Any:
    """Selenium's own polling wait (blocking), failing with `what` and the page's text."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, timeout_s, poll_frequency=0.05).until(condition)
    except TimeoutException:
        body = browser.find_element("css selector", "body").text
        raise TimeoutError(f"{what}: not seen within {timeout_s:g} s; the page shows:\n"
                           f"{body[:3000]}") from None


def alarm_shown(browser: Any) -> bool:
    return bool(browser.find_elements("css selector", 'tr[data-asset="press-1"] ul.alarms li'))


async def screenshot(path: Path) -> None:
    """Run the rig until press-1's alarm is on the page, then save a screenshot of it."""
    with tempfile.TemporaryDirectory() as tmp, Mosquitto() as broker:
        async with running(Path(tmp), broker.url) as (gateway, _sim):
            browser = await asyncio.to_thread(start_browser, 1280, 1300)
            try:
                await asyncio.to_thread(browser.get, gateway.health.url + "/")
                await asyncio.to_thread(wait_page, browser, alarm_shown, 60, "an alarm")
                button = browser.find_element(
                    "css selector", 'tr[data-point="speed_rpm_cdab"] button.registers')
                await asyncio.to_thread(button.click)
                await asyncio.to_thread(
                    wait_page, browser,
                    lambda b: b.find_elements("css selector", "table.decodings"), 10,
                    "the mapping help")
                await asyncio.to_thread(browser.save_screenshot, str(path))
            finally:
                await asyncio.to_thread(browser.quit)


if __name__ == "__main__":
    asyncio.run(screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/page.png")))

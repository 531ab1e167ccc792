"""The commissioning page in a real headless Chromium, against a running gateway and simulators.

Debian's chromium and chromium-driver (scripts/test installs them); skipped, saying so,
only where they are not installed. The rig (tests/support/page_rig.py): press-1 wears
out fast behind the Modbus simulator and the bundled model flags it; mill-2 is healthy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulators.mosquitto import Mosquitto
from tests.support import page_rig
from tests.support.page_rig import alarm_shown, running, wait_page

pytestmark = pytest.mark.skipif(page_rig.missing_browser() is not None,
                                reason=str(page_rig.missing_browser()))

TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    chrome = page_rig.start_browser()
    try:
        yield chrome
    finally:
        chrome.quit()


def text(browser: Any, css: str) -> str:
    found = browser.find_elements("css selector", css)
    return found[0].text if found else ""


def point_value(browser: Any, device: str, point: str) -> str:
    return text(browser, f'article[data-device="{device}"] tr[data-point="{point}"] td.value')


def status(browser: Any, device: str) -> str:
    return text(browser, f'article[data-device="{device}"] .status')


async def in_browser(call: Any, *args: Any) -> Any:
    """Selenium blocks: off the loop, so the gateway keeps serving the page meanwhile."""
    return await asyncio.to_thread(call, *args)


async def test_page_shows_live_values_and_a_stopped_device_going_offline(
        tmp_path: Path, mosquitto: Mosquitto, browser: Any) -> None:
    async with running(tmp_path, mosquitto.url) as (gateway, sim):
        await in_browser(browser.get, gateway.health.url + "/")
        await in_browser(wait_page, browser, lambda b: status(b, "press-1") == "online"
                         and status(b, "mill-2") == "online"
                         and point_value(b, "press-1", "machine_time_s").isdigit(),
                         TIMEOUT_S, "both devices online with values")
        assert text(browser, 'tr[data-point="temperature_c"] td.unit') == "degC"
        assert text(browser, 'tr[data-point="temperature_c"] td.quality') == "good"
        assert text(browser, 'tr[data-point="temperature_c"] td.age').endswith(("ms", " s"))
        # Live: the simulated clock moves on the page with no reload (the marker survives).
        await in_browser(browser.execute_script, "window.notReloaded = true")
        first = int(point_value(browser, "press-1", "machine_time_s"))
        await in_browser(wait_page, browser, lambda b: int(
            point_value(b, "press-1", "machine_time_s") or 0) > first, TIMEOUT_S,
            "machine_time_s moving on")
        assert await in_browser(browser.execute_script, "return window.notReloaded") is True
        # The sparkline: a line once two samples (SPARK_STEP_S apart) are in.
        await in_browser(wait_page, browser, lambda b: b.find_elements(
            "css selector", 'tr[data-point="speed_rpm"] svg polyline'), TIMEOUT_S,
            "the speed's sparkline")

        # Mapping help: the word-swapped copy of the speed decodes right only as CDAB.
        button = browser.find_element(
            "css selector", 'tr[data-point="speed_rpm_cdab"] button.registers')
        await in_browser(button.click)
        await in_browser(wait_page, browser, lambda b: b.find_elements(
            "css selector", 'table.decodings tr[data-type="float32"]'), TIMEOUT_S,
            "the mapping help table")
        row = 'table.decodings tr[data-type="float32"]'
        configured = float(text(browser, f'{row} td.match[data-order="CDAB"]'))
        assert 500 < configured < 3000  # an rpm
        assert not 500 < abs(float(text(browser, f'{row} td[data-order="ABCD"]'))) < 3000

        # mill-2 stops answering: offline on the page, within its timeout and backoff.
        sim.set_fault(sim.unit_ids["mill-2"], "silent")
        await in_browser(wait_page, browser, lambda b: status(b, "mill-2") == "offline",
                         page_rig.MILL_TIMEOUT_S + 10, "mill-2 offline")
        assert "no answer" in text(browser, 'article[data-device="mill-2"] .since')
        assert status(browser, "press-1") == "online"


async def test_an_alarm_appears_on_the_page(
        tmp_path: Path, mosquitto: Mosquitto, browser: Any) -> None:
    async with running(tmp_path, mosquitto.url) as (gateway, _sim):
        await in_browser(browser.get, gateway.health.url + "/")
        await in_browser(wait_page, browser, alarm_shown, 60, "press-1's alarm")
        row = 'tr[data-asset="press-1"]'
        assert "millwright-bundled" in text(browser, row)
        assert float(text(browser, f"{row} td.probability").split()[0]) > 0
        assert "p=" in text(browser, f"{row} ul.alarms li")

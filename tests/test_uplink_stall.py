"""A cloud broker that stops acknowledging: the PUBACK deadline (cloud.ack_timeout_s).

The misbehaving party is simulators/silent_broker.py (CONNACK, then never a PUBACK) or
a relay in front of a real Mosquitto holding its PUBACKs back (tests/test_uplink.Link).
The gateway must say so once, reconnect, report not ready, and recover by itself.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from gateway.errors import ConfigError
from gateway.runtime import Gateway
from simulators.mosquitto import Mosquitto
from simulators.silent_broker import SilentBroker
from simulators.wait import until
from tests.support import configs, counter_driver
from tests.test_health import readyz, scrape
from tests.test_uplink import Link, ids, readings, running

pytestmark = pytest.mark.usefixtures("counter_protocol")

STALLED = "acknowledged no publish"


def ack_timeouts() -> float:
    return REGISTRY.get_sample_value("millwright_uplink_ack_timeouts_total") or 0.0


def stall_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if STALLED in r.getMessage()]


async def test_a_broker_that_never_acknowledges_is_logged_once_reconnected_and_not_ready(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    before = ack_timeouts()
    async with SilentBroker() as broker:
        raw = configs.base(tmp_path, broker.url,
                           [counter_driver.table("lathe-7", rate_hz=200, batch=10)],
                           cloud={"ack_timeout_s": 0.3}, health={"enabled": True, "port": 0})
        async with Gateway(configs.validate(raw)) as gw:
            port = gw.health.port
            # Three deadlines missed, each on its own connection.
            await until(lambda: ack_timeouts() - before >= 3 and broker.connections >= 3, 30,
                        "three missed PUBACK deadlines and reconnections",
                        detail=lambda: f"{ack_timeouts() - before} timeouts, "
                                       f"{broker.connections} connections")
            assert broker.publishes > 0
            body: dict[str, Any] = await readyz(port)
            assert not body["ready"]
            assert any(STALLED in p for p in body["problems"]), body["problems"]
            assert STALLED in body["uplink_problem"]
            metrics = await scrape(port)
            assert "millwright_uplink_ack_timeouts_total" in metrics
            assert gw.outbox.stats().depth > 0  # nothing was taken for delivered
    [line] = stall_lines(caplog)  # once, however many reconnections
    assert line.levelno == logging.ERROR and line.name == "gateway.uplink"
    assert line.__dict__["event"] == "uplink_ack_timeout"  # structured: fields, not only text
    assert line.__dict__["broker"] == f"127.0.0.1:{broker.port}"
    assert "cloud.ack_timeout_s = 0.3" in line.getMessage()


async def test_when_pubacks_flow_again_the_backlog_goes_and_the_uplink_is_ready(
        tmp_path: Path, mosquitto: Mosquitto, cloud: Any,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gateway.uplink")
    before = ack_timeouts()
    async with Link(mosquitto.port) as link, running(
            tmp_path, url=link.url, ack_timeout_s=0.3) as (uplink, outbox):
        await until(lambda: uplink.connected and uplink.problem is None, 10, "connected, ready")
        link.hold_acks()  # the broker takes every publish; its answers never come back
        sent = readings("press-1", 200)
        await outbox.append(sent)
        await until(lambda: ack_timeouts() > before, 10, "the PUBACK deadline missed")
        assert STALLED in (uplink.problem or "")
        assert outbox.stats().depth == 200
        link.release_acks()
        await until(lambda: outbox.stats().depth == 0, 30, "the backlog acknowledged")
        await until(lambda: uplink.connected and uplink.problem is None, 10, "ready again")
        await cloud.until(lambda c: ids(sent) <= c.ids(), what="every event at the cloud")
    assert len(stall_lines(caplog)) == 1
    assert any("acknowledges publishes again" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("value", [0, -1, "soon"])
def test_a_bad_ack_timeout_is_refused_naming_the_key(tmp_path: Path, value: object) -> None:
    raw = configs.base(tmp_path, "mqtt://127.0.0.1:1883", cloud={"ack_timeout_s": value})
    with pytest.raises(ConfigError) as refused:
        configs.validate(raw)
    assert refused.value.problems[0].startswith("cloud.ack_timeout_s: ")
    assert configs.validate(configs.base(tmp_path, "mqtt://x:1")).cloud.ack_timeout_s == 30.0

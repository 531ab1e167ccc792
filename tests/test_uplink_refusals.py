"""An MQTT 5 cloud broker that refuses topics (PUBACK 0x87 Not authorized), against a real
Mosquitto with an acl_file.

One topic refused while others pass: its rows are dropped as `refused`, counted and
announced, and the other topics flow. Every publish refused (the credentials or the ACL
are wrong): nothing is dropped, the uplink says why it is not ready and retries slowly.
Mosquitto 2.0.11 closes the connection after each refusal, so the decision must
survive reconnections.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from simulators.cloud_listener import CloudListener
from simulators.mosquitto import Mosquitto
from simulators.wait import until
from tests.test_uplink import PREFIX, ids, readings, running


def refused_drops() -> float:
    return REGISTRY.get_sample_value("millwright_outbox_dropped_total",
                                     {"reason": "refused"}) or 0.0


def acl_broker(tmp_path: Path, *writable: str) -> Mosquitto:
    acl = tmp_path / "acl"
    acl.write_text("topic read #\n" + "".join(f"topic write {t}\n" for t in writable))
    return Mosquitto(conf=f"acl_file {acl}\n")


@pytest.fixture
def one_topic_refused(tmp_path: Path) -> Iterator[Mosquitto]:
    """The gateway may write its status, births, drop notices and press-1's telemetry:
    not the telemetry of `secret`."""
    with acl_broker(tmp_path, f"{PREFIX}/status", f"{PREFIX}/birth/#",
                    f"{PREFIX}/data_dropped/#", f"{PREFIX}/telemetry/press-1") as broker:
        yield broker


@pytest.fixture
def everything_refused(tmp_path: Path) -> Iterator[Mosquitto]:
    """An ACL that gives the gateway nothing to write (say, written for another prefix)."""
    with acl_broker(tmp_path, "elsewhere/#") as broker:
        yield broker


async def test_a_refused_topic_is_dropped_and_announced_while_the_others_flow(
        tmp_path: Path, one_topic_refused: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    before = refused_drops()
    with CloudListener(one_topic_refused.url) as cloud:
        async with running(tmp_path, url=one_topic_refused.url, mqtt_version="5",
                           batch_max_events=20, reconnect_max_s=0.2) as (uplink, outbox):
            allowed, refused = [], []
            for start in range(0, 200, 50):  # interleaved, over several commits
                chunk_ok = readings("press-1", 50, start)
                chunk_no = readings("secret", 50, start)
                allowed += chunk_ok
                refused += chunk_no
                await outbox.append(chunk_no + chunk_ok)
            await cloud.until(lambda c: ids(allowed) <= c.ids(), 30, "press-1's events")
            assert await uplink.flush(20)
            assert outbox.stats().dropped.get("refused") == len(refused)
            assert refused_drops() - before == len(refused)
            await cloud.until(lambda c: sum(e["data"]["by_reason"].get("refused", 0)
                                            for e in c.of_type("data_dropped")) == len(refused),
                              20, "the drops announced")
            assert {d for e in cloud.of_type("data_dropped") for d in e["data"]["devices"]} \
                == {"secret"}
            assert not ids(refused) & cloud.ids()
            assert uplink.connected and uplink.problem is None  # ready: the link works
            # Later events to the refused topic are dropped too; the others keep flowing.
            more_no, more_ok = readings("secret", 10, 500), readings("press-1", 10, 500)
            await outbox.append(more_no + more_ok)
            await cloud.until(lambda c: ids(more_ok) <= c.ids(), 20, "later press-1 events")
            assert await uplink.flush(20)
            assert outbox.stats().dropped.get("refused") == len(refused) + 10
    warnings = [r for r in caplog.records if "refuses publishes to" in r.getMessage()]
    assert len(warnings) == 1 and f"{PREFIX}/telemetry/secret" in warnings[0].getMessage()
    assert warnings[0].__dict__["topic"] == f"{PREFIX}/telemetry/secret"


async def test_when_every_publish_is_refused_nothing_is_dropped_and_it_says_why(
        tmp_path: Path, everything_refused: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    before = refused_drops()
    # Quick cycles, told apart by their delays: a slow retry is 0.5-1 s, a fast one <= 0.1 s.
    async with running(tmp_path, url=everything_refused.url, mqtt_version="5",
                       reconnect_max_s=0.1, refused_retry_s=1.0) as (uplink, outbox):
        sent = readings("press-1", 30) + readings("lathe", 30)
        await outbox.append(sent)
        slow: list[float] = []

        def three_slow_retries() -> bool:
            delay = uplink.retry_delay_s
            if delay is not None and delay >= 0.5 and (not slow or delay != slow[-1]):
                slow.append(delay)
            return len(slow) >= 3

        await until(three_slow_retries, 30, "three verdicts, each followed by a slow retry",
                    interval_s=0.01, detail=lambda: f"problem: {uplink.problem}")
        assert "refuses every publish" in (uplink.problem or "")
        assert "cloud.username" in uplink.problem and "ACL" in uplink.problem
        assert outbox.stats().depth == len(sent) and not outbox.stats().dropped
        assert refused_drops() == before
    verdicts = [r for r in caplog.records if "refuses every publish" in r.getMessage()]
    assert len(verdicts) == 1 and verdicts[0].levelno == logging.ERROR

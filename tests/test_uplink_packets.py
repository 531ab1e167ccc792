"""A cloud broker whose maximum packet size is below the batch size, against a real Mosquitto
(`max_packet_size` in its conf), on MQTT 5 (the CONNACK announces the limit) and 3.1.1
(configured with cloud.max_packet_bytes, or learned from the broker's disconnects).

Every event that fits arrives; one that can never fit is dropped as too_large, counted
and announced, instead of the same batch being resent forever.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from gateway import events
from gateway.config import CloudSection
from gateway.errors import ConfigError
from gateway.frames import Frame
from gateway.store import OutboxRow
from gateway.uplink_limits import PacketLimits
from gateway.uplink_pack import Packer
from gateway.uplink_session import Message
from simulators.cloud_listener import CloudListener
from simulators.mosquitto import Mosquitto
from tests.support import configs
from tests.test_uplink import PREFIX, T0, RawSubscriber, ids, readings, running

MAX_PACKET = 2048


def too_large_drops() -> float:
    return REGISTRY.get_sample_value("millwright_outbox_dropped_total",
                                     {"reason": "too_large"}) or 0.0


def huge(device: str) -> events.Event:
    """One frame of 400 values: some 6 KB of JSON, more than the broker takes in a packet."""
    return events.telemetry(Frame(device, T0, {f"p{i}": float(i) for i in range(400)}, T0))


@pytest.fixture
def small_packets() -> Any:
    with Mosquitto(conf=f"max_packet_size {MAX_PACKET}\n") as broker:
        yield broker


@pytest.mark.parametrize(("version", "settings", "learns"), [
    ("5", {}, False),  # Mosquitto announces Maximum Packet Size in its CONNACK
    ("3.1.1", {"max_packet_bytes": MAX_PACKET}, False),  # configured for a 3.1.1 broker
    ("3.1.1", {}, True),  # neither: halved after each disconnect, then dropped
], ids=["mqtt5-announced", "mqtt311-configured", "mqtt311-learned"])
async def test_batches_fit_the_brokers_packet_limit_and_an_event_too_large_is_dropped(
        tmp_path: Path, small_packets: Mosquitto, version: str, settings: dict[str, Any],
        learns: bool, caplog: pytest.LogCaptureFixture) -> None:
    drops_before = too_large_drops()
    raw = RawSubscriber(small_packets.port, f"{PREFIX}/telemetry/#")
    try:
        with CloudListener(small_packets.url) as cloud:
            async with running(tmp_path, url=small_packets.url, mqtt_version=version,
                               reconnect_max_s=0.2, **settings) as (uplink, outbox):
                first, later = readings("press-1", 300), readings("press-1", 300, start=300)
                too_big = huge("big")
                await outbox.append(first)
                await outbox.append([too_big])
                await outbox.append(later)
                await cloud.until(lambda c: ids(first + later) <= c.ids(), 60,
                                  "every event that fits")
                await cloud.until(lambda c: any(
                    e["data"]["by_reason"].get("too_large") for e in c.of_type("data_dropped")),
                    30, "the drop announced")
                assert await uplink.flush(10)
                assert too_big.id not in cloud.ids()
                assert outbox.stats().dropped.get("too_large") == 1
                assert too_large_drops() - drops_before == 1
                if not learns:  # sized right from the start: no disconnect, no halving
                    assert uplink.limits.max_events == CloudSection().batch_max_events
                    assert not [r for r in caplog.records if "lost" in r.getMessage()]
                else:
                    assert uplink.limits.max_events < CloudSection().batch_max_events
        [announced] = [e for e in cloud.of_type("data_dropped")
                       if e["data"]["by_reason"].get("too_large")]
        assert announced["data"]["devices"] == ["big"]
        batched = [m for m in raw.messages if m.topic.endswith("/press-1")]
        assert batched and all(len(m.payload) < MAX_PACKET for m in batched)
        assert max(len(json.loads(m.payload)) for m in batched) > 1  # still batches
    finally:
        raw.close()


def rows(sizes: list[int]) -> list[OutboxRow]:
    return [OutboxRow(pos, "a", "telemetry", json.dumps({"n": pos, "pad": "x" * size}), 0.0)
            for pos, size in enumerate(sizes, start=1)]


@pytest.mark.parametrize("version", ["3.1.1", "5"])
def test_packed_messages_stay_under_the_limit_counting_topic_and_properties(version: str) -> None:
    packer = Packer(CloudSection(mqtt_version=version, batch_max_events=50), PREFIX)
    messages, too_large = packer.pack_within(rows([100] * 40 + [3000] + [100] * 5),
                                             max_packet=1024)
    assert too_large == [41]
    assert all(m.size <= 1024 for m in messages)
    assert sorted(p for m in messages for p in m.positions) == [*range(1, 41), *range(42, 47)]
    # The size is what goes on the wire: payload, topic, packet id, properties, headers.
    overhead = {m.size - len(m.payload) for m in messages}
    # type byte, 2-byte remaining length, topic length and topic, packet id
    base = 1 + 2 + 2 + len(f"{PREFIX}/telemetry/a") + 2
    # MQTT 5: property length, ContentType id, string length, the content type
    properties = 1 + 1 + 2 + len("application/cloudevents-batch+json")
    assert overhead == ({base} if version == "3.1.1" else {base + properties})


def message(positions: list[int], size: int) -> Message:
    return Message("t", b"", positions, size=size)


def test_losses_after_oversized_publishes_halve_the_batch_then_convict_one_event() -> None:
    limits = PacketLimits(max_events=100)
    limits.on_acked(message([1], 500))
    assert limits.on_lost([message([2], 400)]) == []  # no bigger than proven: not the size
    assert limits.max_events == 100
    assert limits.on_lost([message(list(range(10, 110)), 30_000)]) == []
    assert limits.max_events == 50
    assert limits.on_lost([message(list(range(10, 60)), 15_000)]) == []
    assert limits.max_events == 25
    # A single event: once may be a broker restart; twice in a row convicts it.
    assert limits.on_lost([message([7], 400), message([8], 9_000)]) == []
    assert limits.on_lost([message([8], 9_000)]) == [8]
    assert limits.max_bytes == 8_999


@pytest.mark.parametrize("value", [10, 511, 268_435_456, "big"])
def test_a_bad_max_packet_bytes_is_refused_naming_the_key(tmp_path: Path, value: object) -> None:
    raw = configs.base(tmp_path, "mqtt://127.0.0.1:1883", cloud={"max_packet_bytes": value})
    with pytest.raises(ConfigError) as refused:
        configs.validate(raw)
    assert refused.value.problems[0].startswith("cloud.max_packet_bytes: ")
    assert configs.validate(configs.base(tmp_path, "mqtt://x:1")).cloud.max_packet_bytes is None

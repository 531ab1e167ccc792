"""Outbox rows as the uplink's MQTT messages: topics, batches, births, compression, properties.

Pure (no I/O): `pack` turns rows into messages, one topic each
(`{prefix}/{kind}/{device}`, the device name one percent-encoded level), each device's
order kept, within `batch_max_events` and `batch_max_bytes`. A device's birth goes
alone, retained, to `{prefix}/birth/{device}`. With `compression = "zstd"` each payload
is compressed and its MQTT 5 properties say content-encoding = zstd.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import zstandard
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config import CloudSection
from gateway.events import DEVICE_BIRTH
from gateway.topics import sanitise_level
from gateway.uplink_session import Message

if TYPE_CHECKING:
    from gateway.store import OutboxRow

CONTENT_TYPE_ONE = "application/cloudevents+json"
CONTENT_TYPE_BATCH = "application/cloudevents-batch+json"
TOPIC_KINDS = {DEVICE_BIRTH: "birth"}  # the topic level of a kind, where it is not the kind


class Packer:
    """How one uplink's rows become messages (the cloud section's batching and encoding)."""

    def __init__(self, cloud: CloudSection, prefix: str) -> None:
        self.cloud = cloud
        self.prefix = prefix
        self._topics: dict[tuple[str, str], str] = {}
        self._compressor = zstandard.ZstdCompressor() if cloud.compression == "zstd" else None
        self.batch_properties = self._properties(
            CONTENT_TYPE_ONE if cloud.batch_max_events == 1 else CONTENT_TYPE_BATCH)
        self.single_properties = self._properties(CONTENT_TYPE_ONE)

    def topic(self, kind: str, device: str) -> str:
        topic = self._topics.get((kind, device))
        if topic is None:
            if len(self._topics) >= 10_000:  # bounded, though device names are few
                self._topics.clear()
            level = TOPIC_KINDS.get(kind, kind)
            topic = self._topics[(kind, device)] = f"{self.prefix}/{level}/{sanitise_level(device)}"
        return topic

    def pack(self, rows: Sequence[OutboxRow]) -> list[Message]:
        """Rows as messages: one topic each, each device's order kept, within the batch limits."""
        by_topic: dict[tuple[str, str], list[OutboxRow]] = {}
        for row in rows:
            by_topic.setdefault((row.kind, row.device), []).append(row)
        max_events, max_bytes = self.cloud.batch_max_events, self.cloud.batch_max_bytes
        messages: list[Message] = []
        for (kind, device), group in by_topic.items():
            topic = self.topic(kind, device)
            if kind == DEVICE_BIRTH:  # one event per message: the retained one is the latest
                messages.extend(Message(topic, self._encode(row.body.encode()), [row.pos],
                                        retain=True) for row in group)
                continue
            if max_events == 1:
                messages.extend(Message(topic, self._encode(row.body.encode()), [row.pos])
                                for row in group)
                continue
            start = 0
            while start < len(group):
                end, size, stop = start, 1, min(len(group), start + max_events)
                while end < stop:
                    body = group[end].body
                    grown = size + 1 + (len(body) if body.isascii() else len(body.encode()))
                    if grown > max_bytes and end > start:  # one oversized event still goes alone
                        break
                    end, size = end + 1, grown
                chunk = group[start:end]
                payload = "[" + ",".join([row.body for row in chunk]) + "]"
                messages.append(Message(topic, self._encode(payload.encode()),
                                        [row.pos for row in chunk]))
                start = end
        return messages

    def _encode(self, payload: bytes) -> bytes:
        return payload if self._compressor is None else self._compressor.compress(payload)

    def _properties(self, content_type: str) -> Properties | None:
        if self.cloud.mqtt_version != "5":
            return None
        properties = Properties(PacketTypes.PUBLISH)
        properties.ContentType = content_type
        if self._compressor is not None:
            properties.UserProperty = [("content-encoding", "zstd")]
        return properties

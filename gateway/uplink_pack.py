"""Outbox rows as the uplink's MQTT messages: topics, batches, births, compression, properties.

Pure (no I/O): `pack` turns rows into messages, one topic each
(`{prefix}/{kind}/{device}`, the device name one percent-encoded level), each device's
order kept, within `batch_max_events` and `batch_max_bytes`, and under the broker's
packet limit when one is known (`pack_within`: an event too large to fit alone is
returned apart, to be dropped). A device's birth goes alone, retained, to
`{prefix}/birth/{device}`. With `compression = "zstd"` each payload is compressed and
its MQTT 5 properties say content-encoding = zstd.
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
from gateway.uplink_limits import property_bytes, publish_overhead, publish_size
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
        self.v5 = cloud.mqtt_version == "5"
        self._topics: dict[tuple[str, str], str] = {}
        self._compressor = zstandard.ZstdCompressor() if cloud.compression == "zstd" else None
        self.batch_properties = self._properties(
            CONTENT_TYPE_ONE if cloud.batch_max_events == 1 else CONTENT_TYPE_BATCH)
        self.single_properties = self._properties(CONTENT_TYPE_ONE)
        self._property_bytes = {  # by identity: the two property sets above
            id(props): property_bytes(props, v5=self.v5)
            for props in (self.batch_properties, self.single_properties)}

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
        return self.pack_within(rows)[0]

    def pack_within(self, rows: Sequence[OutboxRow], *, max_events: int | None = None,
                    max_packet: int | None = None) -> tuple[list[Message], list[int]]:
        """(messages, positions of events too large for `max_packet` even alone).

        Batches hold at most `max_events` (and `batch_max_events`) events, and their
        packets are at most `max_packet` bytes (sized on the uncompressed payload, so
        compression only makes them smaller)."""
        by_topic: dict[tuple[str, str], list[OutboxRow]] = {}
        for row in rows:
            by_topic.setdefault((row.kind, row.device), []).append(row)
        limit_events = min(self.cloud.batch_max_events, max_events or self.cloud.batch_max_events)
        messages: list[Message] = []
        too_large: list[int] = []
        for (kind, device), group in by_topic.items():
            topic = self.topic(kind, device)
            # Plain objects (not one-event arrays) only as configured: a batch size
            # halved to one by the packet limit keeps the batch content type.
            single = kind == DEVICE_BIRTH or self.cloud.batch_max_events == 1
            max_bytes = self.cloud.batch_max_bytes
            if max_packet is not None:
                properties = self.single_properties if single else self.batch_properties
                max_bytes = min(max_bytes, max_packet - publish_overhead(
                    topic, self._property_bytes[id(properties)]))
            for message in self._split(topic, group, kind, single, limit_events, max_bytes):
                if max_packet is not None and message.size > max_packet:
                    too_large.extend(message.positions)
                else:
                    messages.append(message)
        return messages, too_large

    def _split(self, topic: str, group: list[OutboxRow], kind: str, single: bool,
               max_events: int, max_bytes: int) -> list[Message]:
        if single:  # a birth: one event per message, the retained one is the latest
            retain = kind == DEVICE_BIRTH
            properties = self.single_properties if retain else self.batch_properties
            return [self._message(topic, row.body.encode(), [row.pos], properties,
                                  retain=retain) for row in group]
        messages, start = [], 0
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
            messages.append(self._message(topic, payload.encode(), [row.pos for row in chunk],
                                          self.batch_properties))
            start = end
        return messages

    def _message(self, topic: str, payload: bytes, positions: list[int],
                 properties: Properties | None, *, retain: bool = False) -> Message:
        encoded = self._encode(payload)
        return Message(topic, encoded, positions, retain=retain, properties=properties,
                       size=publish_size(topic, len(encoded),
                                         self._property_bytes[id(properties)]))

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

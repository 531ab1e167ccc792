"""The broker's packet size limit as the uplink knows it: announced, configured, or learned.

An MQTT 5 broker announces its Maximum Packet Size in CONNACK; `cloud.max_packet_bytes`
stands in for a 3.1.1 broker that cannot. The smaller of the two is the limit the
packer sizes batches under (gateway/uplink_pack.py); an event that does not fit on its
own is dropped as `too_large` instead of blocking the queue.

A 3.1.1 broker with an unannounced limit just closes the connection on an oversized
PUBLISH. So when a connection is lost while a message larger than any packet the
broker has acknowledged was unanswered (it "looks oversized"), the batch size is
halved (`max_events`), down to one event; a single event that is the suspect at two
losses in a row is then dropped as `too_large`, and its size becomes the learned
limit. What is learned lasts until the process restarts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from paho.mqtt.properties import Properties

if TYPE_CHECKING:
    from gateway.config import CloudSection
    from gateway.uplink_session import Message

log = logging.getLogger(__name__)

STRIKES_TO_DROP = 2  # losses in a row with the same single event oldest in flight


def property_bytes(properties: Properties | None, *, v5: bool) -> int:
    """The bytes a PUBLISH's properties take (their length field included; none in 3.1.1)."""
    if not v5:
        return 0
    return len(properties.pack()) if properties is not None else 1


def publish_size(topic: str, payload_bytes: int, properties_bytes: int) -> int:
    """The bytes of a QoS 1 PUBLISH packet on the wire (fixed header included)."""
    remaining = 2 + len(topic.encode()) + 2 + properties_bytes + payload_bytes
    return 1 + _varint_size(remaining) + remaining


def publish_overhead(topic: str, properties_bytes: int) -> int:
    """An upper bound of a PUBLISH's bytes besides its payload (the largest length field)."""
    return publish_size(topic, 0, properties_bytes) + 3


def _varint_size(value: int) -> int:
    size = 1
    while value >= 128:
        value //= 128
        size += 1
    return size


@dataclass
class PacketLimits:
    """What the uplink knows of the broker's packet limit; kept across connections."""

    configured: int | None = None
    announced: int | None = None  # by the current connection's CONNACK (MQTT 5)
    learned: int | None = None  # from a single event that cut the connection twice
    max_events: int = 100  # the batch size, halved by losses that look oversized
    proven: int = 0  # the largest packet the broker has acknowledged
    _strikes: tuple[int, int] = (0, 0)  # (position of a single-event suspect, losses)

    @classmethod
    def for_cloud(cls, cloud: CloudSection) -> PacketLimits:
        return cls(configured=cloud.max_packet_bytes, max_events=cloud.batch_max_events)

    @property
    def max_bytes(self) -> int | None:
        """The largest PUBLISH to send, or None when no limit is known."""
        known = [v for v in (self.configured, self.announced, self.learned) if v]
        return min(known) if known else None

    def on_connack(self, properties: Any) -> None:
        """Read an MQTT 5 CONNACK's Maximum Packet Size (None or absent: no limit)."""
        announced = getattr(properties, "MaximumPacketSize", None)
        if announced and announced != self.announced:
            log.info("the cloud broker takes packets of at most %d bytes; batches are sized "
                     "under it", announced)
        self.announced = int(announced) if announced else None

    def on_acked(self, message: Message) -> None:
        self.proven = max(self.proven, message.size)
        if self._strikes[0] in message.positions:
            self._strikes = (0, 0)

    def on_lost(self, unacked: list[Message]) -> list[int]:
        """A connection the broker closed, with `unacked` (oldest first) in flight.

        Halves the batch size when the oldest looks oversized; returns the positions
        to drop as `too_large` (a single event convicted twice), else nothing."""
        # The broker answers in order: the first message larger than any it acknowledged is
        # the suspect (smaller ones before it were most likely taken, their PUBACKs lost).
        suspect = next((m for m in unacked if m.size > self.proven), None)
        if suspect is None or not suspect.positions:  # (a Sparkplug birth carries no rows)
            self._strikes = (0, 0)
            return []
        if len(suspect.positions) > 1:
            self.max_events = max(1, min(self.max_events, len(suspect.positions)) // 2)
            log.warning("the cloud broker closed the connection after a %d-byte publish of "
                        "%d events (the largest it acknowledged: %d bytes); sending batches "
                        "of at most %d events", suspect.size, len(suspect.positions),
                        self.proven, self.max_events)
            return []
        position = suspect.positions[0]
        strikes = self._strikes[1] + 1 if self._strikes[0] == position else 1
        if strikes < STRIKES_TO_DROP:
            self._strikes = (position, strikes)
            return []
        self._strikes = (0, 0)
        self.learned = max(self.proven, suspect.size - 1)
        log.error("the cloud broker closed the connection %d times after a %d-byte publish "
                  "of one event (the largest it acknowledged: %d bytes): dropped as too_large; "
                  "set cloud.max_packet_bytes to the broker's limit", STRIKES_TO_DROP,
                  suspect.size, self.proven)
        return list(suspect.positions)

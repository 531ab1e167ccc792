"""The Sparkplug uplink's drain: outbox rows translated into Sparkplug messages as they are sent.

One stored event becomes its messages (gateway/sparkplug/translate.py: a DDATA, preceded
by a DBIRTH when its device is not born in this session; a DDEATH; an NDATA...), all
published at once, with nothing awaited between translating and publishing: `seq` is
given at translation, and a host's rebirth request (answered between two rows) must not
come between a message and its seq. The row's position rides on the last of its
messages, so it leaves the outbox only on that message's PUBACK; births carry none.

Rows at or before `historical_to` (the last position committed when this session's
births went out, set only when a primary host is followed) are the stored data of store
and forward: every metric of their messages is flagged `is_historical`.

What the CloudEvents drain does about the broker is kept (gateway/uplink_drain.py): the
in-flight window, the probe after an unexplained loss, the packet limit (a message too
large even alone is dropped as `too_large`), topics refused while others pass. A message
dropped unsent leaves a gap in `seq`; a host asks for a rebirth, which is answered.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gateway import metrics
from gateway.sparkplug.compression import wrap
from gateway.sparkplug.payloads import Message as SparkplugMessage
from gateway.sparkplug.payloads import ms
from gateway.uplink_drain import FETCH_MAX_ROWS, Drain
from gateway.uplink_limits import property_bytes, publish_size
from gateway.uplink_session import Message

if TYPE_CHECKING:
    from gateway.sparkplug.translate import Translator
    from gateway.store import OutboxRow

log = logging.getLogger(__name__)

COMPRESSED_VERBS = ("DDATA", "NDATA")  # births and deaths are never compressed


@dataclass
class SparkplugPacker:
    """Sparkplug messages as the uplink's messages (sized for the packet limit, compressed
    when configured). Pure: the translator holds the session's state."""

    translator: Translator
    compression: str = "none"
    v5: bool = False

    def message(self, out: SparkplugMessage, positions: list[int]) -> Message:
        payload = out.payload
        if self.compression == "deflate" and out.verb in COMPRESSED_VERBS:
            payload = wrap(payload, out.seq, ms(time.time()))
        return Message(out.topic, payload, positions,
                       size=publish_size(out.topic, len(payload),
                                         property_bytes(None, v5=self.v5)))

    def births(self) -> list[Message]:
        """NBIRTH and every DBIRTH, seq from 0 (after the CONNECT, or a host's rebirth)."""
        return [self.message(out, []) for out in self.translator.births()]

    def translate(self, row: OutboxRow, historical: bool) -> list[Message]:
        """The messages of one row, its position on the last (none: nothing to send)."""
        event: dict[str, Any] = orjson.loads(row.body)
        out = self.translator.translate(event, historical=historical)
        return [self.message(m, [row.pos] if i == len(out) - 1 else [])
                for i, m in enumerate(out)]


class SparkplugDrain(Drain):
    """Publishes every unacknowledged row on one connection, then each new one, translated."""

    packer: SparkplugPacker  # type: ignore[assignment]

    def __init__(self, *args: Any, historical_to: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.historical_to = historical_to
        self._untranslatable_logged = False

    async def run(self) -> None:
        session = self.session
        last = 0
        while True:
            rows = await self.outbox.fetch(last, FETCH_MAX_ROWS)
            if not rows:
                self.caught_up = True
                self._check_all_refused()
                await self.outbox.wait_new(last)
                continue
            self.caught_up = False
            for row in rows:
                # Room first, then translate and publish with no await between them.
                await session.wait_window(1 if self.probing else None)
                self._send(row)
                last = row.pos

    def _send(self, row: OutboxRow) -> None:
        try:
            messages = self.packer.translate(row, row.pos <= self.historical_to)
        except (KeyError, TypeError, ValueError) as exc:  # a stored event it cannot express
            if not self._untranslatable_logged:
                self._untranslatable_logged = True
                log.error("sparkplug: a stored %s event cannot be translated (%s: %s): "
                          "dropped as untranslatable (announced as data_dropped)", row.kind,
                          type(exc).__name__, exc)
            self.outbox.drop([row.pos], "untranslatable")
            return
        if not messages:  # e.g. the status of a device never born: nothing to say
            self.outbox.ack([row.pos])
            return
        limit = self.limits.max_bytes
        published = 0
        for message in messages:
            if limit is not None and message.size > limit:
                log.warning("a %d-byte Sparkplug message to %s exceeds the cloud broker's "
                            "%d-byte packet limit: dropped as too_large (announced as "
                            "data_dropped)", message.size, message.topic, limit)
                self.outbox.drop(message.positions, "too_large")
            elif self.refusals.admit(message):
                self.session.publish(message)
                published += len(message.positions)
        metrics.UPLINK_PUBLISHED.inc(published)

"""One cloud connection: a paho client on the event loop (gateway/paho_loop.py) and its window.

The session owns the in-flight window: `publish` sends a message and records which
outbox positions it carries, `wait_window` waits for room, and the PUBACKs read in
one wake-up acknowledge their rows in the outbox in one go. The uplink
(gateway/uplink.py) decides what to send and when to reconnect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties

from gateway import metrics
from gateway.errors import UplinkError
from gateway.paho_loop import PahoLoop

if TYPE_CHECKING:
    from gateway.store import Outbox


@dataclass(slots=True)
class Message:
    """One MQTT message of the uplink and the outbox positions of the rows it carries."""

    topic: str
    payload: bytes
    positions: list[int]
    retain: bool = False
    sent: float = 0.0


class Rejected(UplinkError):
    """The broker (or TLS) refused us in a way that retrying soon will not fix."""


class Unreachable(Exception):
    """The broker could not be reached or did not answer: retry with backoff."""


class CloudSession:
    """One connection to the cloud broker; a reconnect makes a new one (and a new client)."""

    def __init__(self, client: mqtt.Client, outbox: Outbox, window: int) -> None:
        self.client = client
        self.outbox = outbox
        self.window = window
        self._answers = 0  # PUBACKs and CONNACKs read from the socket
        self.bridge = PahoLoop(client, after_read=self._acknowledge_read,
                               progress=lambda: self._answers)
        loop = self.bridge.loop
        self.connack: asyncio.Future[tuple[Any, Any]] = loop.create_future()
        self.lost: asyncio.Future[str] = loop.create_future()
        self._inflight: dict[int, Message] = {}
        self._acked: list[int] = []
        self._room = asyncio.Event()
        self._status_acks: dict[int, asyncio.Future[None]] = {}
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish

    @property
    def in_flight(self) -> int:
        """Messages published and not yet acknowledged."""
        return len(self._inflight)

    async def open(self, connect: Callable[[], object]) -> None:
        """Run the blocking connect off the loop; the socket is the loop's from then on."""
        await self.bridge.open(connect)

    async def close(self, timeout_s: float = 1.0) -> None:
        """Disconnect cleanly; when the socket will not drain in time, cut it."""
        await self.bridge.close(timeout_s)

    def publish(self, message: Message, properties: Properties | None) -> None:
        """Send one QoS 1 message; its rows are acknowledged when its PUBACK is read."""
        info = self.client.publish(message.topic, message.payload, qos=1, retain=message.retain,
                                   properties=properties)
        # Recorded before the caller's next await: PUBACKs are read only while it waits.
        message.sent = time.perf_counter()
        self._inflight[info.mid] = message

    async def wait_window(self) -> None:
        """Return when the window has room for another message."""
        while len(self._inflight) >= self.window:
            self._room.clear()
            await self._room.wait()

    def publish_status(self, topic: str, payload: bytes) -> asyncio.Future[None]:
        """A retained QoS 1 status message outside the window; the future settles on PUBACK."""
        info = self.client.publish(topic, payload, qos=1, retain=True)
        ack = self.bridge.loop.create_future()
        self._status_acks[info.mid] = ack
        return ack

    def _acknowledge_read(self) -> None:
        if self._acked:  # every PUBACK read in this wake-up acks in one go
            positions, self._acked = self._acked, []
            self.outbox.ack(positions)
            metrics.UPLINK_ACKED.inc(len(positions))
            self._room.set()

    # paho callbacks, all run on the event loop inside loop_read/loop_write/loop_misc:
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        self._answers += 1
        _settle(self.connack, (reason, properties))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        # paho says "Unspecified error" for a connection the broker simply closed.
        text = str(reason)
        self.bridge.on_loop(_settle, self.lost, "the broker closed the connection"
                            if text == "Unspecified error" else text)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        self._answers += 1
        message = self._inflight.pop(mid, None)
        if message is None:
            _settle(self._status_acks.pop(mid, None), None)
        elif reason.is_failure:
            # An MQTT 5 broker refused it (quota, not authorised): keep the rows and
            # start over on a new connection rather than skip them.
            _settle(self.lost, f"the broker refused a publish to {message.topic}: {reason}")
        else:
            self._acked.extend(message.positions)
            metrics.UPLINK_LATENCY.observe(time.perf_counter() - message.sent)


def _settle(future: asyncio.Future[Any] | None, value: Any) -> None:
    if future is not None and not future.done():
        future.set_result(value)

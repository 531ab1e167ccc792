"""One cloud connection: a paho client on the event loop (gateway/paho_loop.py) and its window.

The session owns the in-flight window: `publish` sends a message and records which
outbox positions it carries, `wait_window` waits for room, and the PUBACKs read in
one wake-up acknowledge their rows in the outbox in one go. It also watches the
PUBACK deadline (`stalled`), and hands the messages an MQTT 5 broker refused (PUBACK
reason code >= 0x80) to `on_answers` instead of acknowledging them. The uplink
(gateway/uplink.py, gateway/uplink_drain.py) decides what to send and when to reconnect.
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
    sent: float = 0.0  # time.monotonic() when published
    properties: Properties | None = None
    size: int = 0  # of the PUBLISH packet, bytes


# PUBACK reason codes that say "not now" rather than "never": quota exceeded, and a
# packet identifier in use.
TRANSIENT_REFUSALS = (0x97, 0x91)


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
        self.last_ack_at: float | None = None  # wall time of the last PUBACK for data
        self._answered: list[Message] = []  # accepted, since the last after-read
        self._refused: list[tuple[Message, str]] = []
        self.refusals_seen = 0  # PUBACKs with a failure reason (Mosquitto then disconnects)
        self._room = asyncio.Event()
        self._status_acks: dict[int, tuple[asyncio.Future[str | None], float]] = {}
        # The first PUBACK that is not a refusal (acknowledgements flow).
        self.first_ack: asyncio.Future[None] = loop.create_future()
        # (accepted, refused with their reason): what the PUBACKs of one wake-up said.
        self.on_answers: Callable[[list[Message], list[tuple[Message, str]]], None] | None = None
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

    def unacked(self) -> list[Message]:
        """The messages in flight, oldest first."""
        return list(self._inflight.values())

    def publish(self, message: Message) -> None:
        """Send one QoS 1 message; its rows are acknowledged when its PUBACK is read."""
        info = self.client.publish(message.topic, message.payload, qos=1, retain=message.retain,
                                   properties=message.properties)
        # Recorded before the caller's next await: PUBACKs are read only while it waits.
        message.sent = time.monotonic()
        self._inflight[info.mid] = message

    async def stalled(self, timeout_s: float) -> float:
        """Return (the seconds waited) once a message has gone `timeout_s` without its PUBACK."""
        while True:
            now = time.monotonic()
            oldest = min((sent for _ack, sent in self._status_acks.values()), default=now)
            if self._inflight:  # oldest first: a dict keeps the order of publishing
                oldest = min(oldest, next(iter(self._inflight.values())).sent)
            if now - oldest >= timeout_s:
                return now - oldest
            # A deadline timer, not a synchronisation: an answer in time changes `oldest`.
            await asyncio.sleep(oldest + timeout_s - now)

    async def wait_window(self, window: int | None = None) -> None:
        """Return when the window (or a smaller `window`) has room for another message."""
        while len(self._inflight) >= (window or self.window):
            self._room.clear()
            await self._room.wait()

    def publish_status(self, topic: str, payload: bytes,
                       retain: bool = True) -> asyncio.Future[str | None]:
        """A QoS 1 status message (retained unless told) outside the window; the future
        settles on PUBACK: None, or the reason the broker refused it."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        ack = self.bridge.loop.create_future()
        self._status_acks[info.mid] = (ack, time.monotonic())
        return ack

    def _acknowledge_read(self) -> None:
        if self._acked:  # every PUBACK read in this wake-up acks in one go
            positions, self._acked = self._acked, []
            self.outbox.ack(positions)
            metrics.UPLINK_ACKED.inc(len(positions))
            self.last_ack_at = time.time()
            self._room.set()
        if self._answered or self._refused:
            accepted, self._answered = self._answered, []
            refused, self._refused = self._refused, []
            if refused:
                self._room.set()
            if self.on_answers is not None:
                self.on_answers(accepted, refused)

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
        if reason.is_failure:
            self.refusals_seen += 1
        else:
            _settle(self.first_ack, None)
        if message is None:
            status = self._status_acks.pop(mid, None)
            _settle(status[0] if status else None, str(reason) if reason.is_failure else None)
        elif reason.is_failure and getattr(reason, "value", 0) in TRANSIENT_REFUSALS:
            # Busy, not refused: keep the rows and start over on a new connection.
            _settle(self.lost, f"the broker refused a publish to {message.topic}: {reason}")
        elif reason.is_failure:  # refused (not authorised, topic invalid): the drain decides
            self._refused.append((message, str(reason)))
        else:
            self._acked.extend(message.positions)
            self._answered.append(message)
            metrics.UPLINK_LATENCY.observe(time.monotonic() - message.sent)


def _settle(future: asyncio.Future[Any] | None, value: Any) -> None:
    if future is not None and not future.done():
        future.set_result(value)

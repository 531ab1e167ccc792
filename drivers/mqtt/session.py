"""One plant-broker connection: paho on the event loop, a bounded inbox, in-order PUBACKs.

paho is driven by the event loop through the gateway's bridge (gateway/paho_loop.py):
no network thread, every paho callback on the loop.

Back-pressure, in two layers:
1. MQTT 5 flow control: the CONNECT carries Receive Maximum = the inbox size, so a
   conforming broker never has more unacknowledged QoS 1 messages out to us than
   the inbox holds, and stops sending when we stop acknowledging.
2. Brokers differ (MQTT 3.1.1 has no Receive Maximum, and Mosquitto 2.0.11 was
   measured to let each PUBACK release a whole new window), so when the inbox is
   full the session stops reading the socket; TCP flow control then holds the
   broker back. Reading resumes as soon as `take` makes room.

The inbox is full at `capacity` messages, or when the next message of the largest
size allowed (`max_payload_bytes`) might not fit in `max_bytes` of payloads. A
bigger message is refused as it arrives: only a placeholder (its size, no payload)
is queued, so its acknowledgement keeps its place in the order and the driver
counts the rejection.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from gateway.paho_loop import PahoLoop


class AckWindow:
    """PUBACKs sent in the order the PUBLISHes arrived, each once its message is settled.

    MQTT 3.1.1 and 5 (section 4.6) have a client acknowledge QoS 1 messages in the
    order it received them: a settled message (persisted, or rejected) waits for
    the unsettled ones before it. After `close()` (the connection is gone) settling
    sends nothing: the broker redelivers those messages on the next connection and
    their deterministic event ids drop the duplicates.
    """

    def __init__(self, send: Callable[[int], object]) -> None:
        self._send = send
        self._queue: deque[AckEntry] = deque()
        self.closed = False
        self.sent = 0

    def add(self, mid: int) -> AckEntry:
        entry = AckEntry(mid)
        if not self.closed:
            self._queue.append(entry)
        return entry

    def settle(self, entries: Iterable[AckEntry]) -> None:
        if self.closed:
            return
        for entry in entries:
            entry.settled = True
        while self._queue and self._queue[0].settled:
            self._send(self._queue.popleft().mid)
            self.sent += 1

    def close(self) -> None:
        self.closed = True
        self._queue.clear()

    def __len__(self) -> int:
        return len(self._queue)


@dataclass(slots=True)
class AckEntry:
    mid: int
    settled: bool = False


@dataclass(slots=True)
class Incoming:
    """A message as paho handed it over; `entry` is None for QoS 0 (nothing to acknowledge)."""

    topic: str | None
    payload: bytes
    mid: int
    qos: int
    receive_time: float
    entry: AckEntry | None = None
    oversize: int = 0  # the size of a payload refused on arrival (then `payload` is empty)


@dataclass(frozen=True, slots=True)
class Connack:
    failed: bool
    reason: str
    session_present: bool


@dataclass(frozen=True, slots=True)
class Suback:
    failed: bool
    reason: str
    granted_qos: int


class Session:
    """The state of one connection of `client`; a reconnect makes a new one."""

    def __init__(self, client: mqtt.Client, capacity: int, *, max_bytes: int,
                 max_payload_bytes: int, gauge: Any = None) -> None:
        self.received = 0  # messages read from the socket
        self.bridge = PahoLoop(client, progress=lambda: self.received)
        self.loop = loop = self.bridge.loop
        self.client = client
        self.capacity = capacity
        self.max_payload_bytes = max_payload_bytes
        # Full once the next message of the largest size allowed might not fit.
        self._bytes_full_at = max(1, max_bytes - max_payload_bytes + 1)
        self.inbox_bytes = 0  # payload bytes in the inbox
        self.bytes_high_water = 0  # the most payload bytes the inbox has held at once
        self._gauge = gauge  # millwright_device_inbox_bytes{device}, when given
        self.inbox: deque[Incoming] = deque()
        self.window = AckWindow(lambda mid: client.ack(mid, 1))
        self.ready = asyncio.Event()
        self.connack: asyncio.Future[Connack | None] = loop.create_future()
        self.suback: asyncio.Future[list[Suback] | None] = loop.create_future()
        self.unsuback: asyncio.Future[bool | None] = loop.create_future()
        self.lost: str | None = None
        self.error: Exception | None = None  # raised by `read` instead of NotConnected
        self.suback_timer: asyncio.TimerHandle | None = None
        self.high_water = 0  # the most messages the inbox has held at once
        # Our own QoS 1 publishes (commands) waiting for their PUBACK, by message id:
        # None when the broker took it, the reason when it refused it.
        self.pubacks: dict[int, asyncio.Future[str | None]] = {}
        self._stopping = False
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish

    # -- paho callbacks, on the loop ---------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        self._resolve(self.connack,
                      Connack(reason.is_failure, str(reason), bool(flags.session_present)))

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any,
                      properties: Any) -> None:
        # For a success the reason code's value is the granted QoS (0, 1 or 2).
        self._resolve(self.suback, [Suback(rc.is_failure, str(rc), rc.value)
                                    for rc in reason_codes])

    def _on_unsubscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any,
                        properties: Any) -> None:
        self._resolve(self.unsuback, True)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self.received += 1
        if self._stopping:
            return  # never acknowledged: the broker sends it again next time
        try:
            topic: str | None = message.topic
        except UnicodeDecodeError:
            topic = None
        payload = message.payload
        size = len(payload)
        if size > self.max_payload_bytes:  # refused before it is buffered
            self.inbox.append(Incoming(topic, b"", message.mid, message.qos, time.time(),
                                       oversize=size))
        else:
            self.inbox.append(Incoming(topic, payload, message.mid, message.qos, time.time()))
            if size:
                self._add_bytes(size)
        if len(self.inbox) > self.high_water:
            self.high_water = len(self.inbox)
        if self.full:
            self.bridge.pause_reading()
        self.ready.set()

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        # A v5 "no matching subscribers" is a success: is_failure tells refusals apart.
        future = self.pubacks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(str(reason) if reason.is_failure else None)

    def _add_bytes(self, size: int) -> None:
        self.inbox_bytes += size
        if self.inbox_bytes > self.bytes_high_water:
            self.bytes_high_water = self.inbox_bytes
        if self._gauge is not None:
            self._gauge.set(self.inbox_bytes)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self.bridge.on_loop(self.lose, f"connection to the plant broker lost: {reason}")

    # -- the driver's side ---------------------------------------------------------------

    def take(self, limit: int) -> list[Incoming]:
        """Up to `limit` messages from the inbox, in arrival order, each with its ack entry."""
        taken: list[Incoming] = []
        size = 0
        while self.inbox and len(taken) < limit:
            message = self.inbox.popleft()
            size += len(message.payload)
            if message.qos > 0:
                message.entry = self.window.add(message.mid)
            taken.append(message)
        if size:
            self._add_bytes(-size)
        if not self.full and not self._stopping:
            self.bridge.resume_reading()
        return taken

    @property
    def full(self) -> bool:
        """No room for one more message (by count, or by bytes at the largest size)."""
        return len(self.inbox) >= self.capacity or self.inbox_bytes >= self._bytes_full_at

    def expect_puback(self, mid: int) -> asyncio.Future[str | None]:
        """The future of a publish's PUBACK; register it before the next await."""
        future: asyncio.Future[str | None] = self.loop.create_future()
        if self.lost is not None:
            future.set_exception(ConnectionError(self.lost))
        else:
            self.pubacks[mid] = future
        return future

    def lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
        pubacks, self.pubacks = self.pubacks, {}
        for puback in pubacks.values():
            if not puback.done():
                puback.set_exception(ConnectionError(why))
        self.window.close()
        self.ready.set()
        for future in (self.connack, self.suback, self.unsuback):
            self._resolve(future, None)
        if self.suback_timer is not None:
            self.suback_timer.cancel()

    def fail(self, error: Exception) -> None:
        """End the session with `error` (raised by the next `read`)."""
        if self.lost is None:
            self.error = error
        self.lose(str(error))

    def release(self) -> None:
        """Closing: take no more messages, but keep reading (the UNSUBACK must get through)."""
        self._stopping = True
        self.bridge.resume_reading()

    def stop(self) -> None:
        self._stopping = True
        self.lose("the driver was closed")

    @staticmethod
    def _resolve(future: asyncio.Future[Any], value: Any) -> None:
        if not future.done():
            future.set_result(value)

"""One plant-broker connection: paho driven by the event loop, a bounded inbox, in-order PUBACKs.

No network thread: paho's socket is watched by the event loop (`add_reader` /
`add_writer` calling paho's `loop_read` / `loop_write`, and `loop_misc` once a
second for keepalive), the way paho documents for external event loops. Every paho
callback therefore runs on the loop. Only the blocking connect (TCP and TLS
handshake) runs in a worker thread; the socket callbacks it triggers are handed
to the loop with `call_soon_threadsafe`.

Why not paho's own thread: handing each message to the loop and each PUBACK back
(a wake-up of the other thread per packet, and the two threads taking turns on the
GIL) cost more than decoding the payloads. Measured here on a 6-value payload, the
driver alone drained a backlog at ~6k messages/s that way, ~20k/s loop-driven.

Back-pressure, in two layers:
1. MQTT 5 flow control: the CONNECT carries Receive Maximum = the inbox size, so a
   conforming broker never has more unacknowledged QoS 1 messages out to us than
   the inbox holds, and stops sending when we stop acknowledging.
2. Brokers differ (MQTT 3.1.1 has no Receive Maximum, and Mosquitto 2.0.11 was
   measured to let each PUBACK release a whole new window), so when the inbox is
   full the session stops reading the socket; TCP flow control then holds the
   broker back. Reading resumes as soon as `take` makes room.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

READ_BURST = 64  # packets read per readiness callback before yielding to other tasks
MISC_INTERVAL_S = 1.0


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

    def __init__(self, loop: asyncio.AbstractEventLoop, client: mqtt.Client,
                 capacity: int) -> None:
        self.loop = loop
        self.client = client
        self.capacity = capacity
        self.inbox: deque[Incoming] = deque()
        self.window = AckWindow(lambda mid: client.ack(mid, 1))
        self.ready = asyncio.Event()
        self.connack: asyncio.Future[Connack | None] = loop.create_future()
        self.suback: asyncio.Future[list[Suback] | None] = loop.create_future()
        self.unsuback: asyncio.Future[bool | None] = loop.create_future()
        self.socket_closed = asyncio.Event()
        self.lost: str | None = None
        self.error: Exception | None = None  # raised by `read` instead of NotConnected
        self.suback_timer: asyncio.TimerHandle | None = None
        self.high_water = 0  # the most messages the inbox has held at once
        self._loop_thread = threading.get_ident()
        self._fd: int | None = None
        self._sock: Any = None
        self._reading = False
        self._stopping = False
        self._received = 0
        self._misc: asyncio.Task[None] | None = None
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_unsubscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write

    # -- paho callbacks: on the loop, except socket ones during connect() in its worker ------

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
        self._received += 1
        if self._stopping:
            return  # never acknowledged: the broker sends it again next time
        try:
            topic: str | None = message.topic
        except UnicodeDecodeError:
            topic = None
        self.inbox.append(Incoming(topic, message.payload, message.mid, message.qos,
                                   time.time()))
        self.high_water = max(self.high_water, len(self.inbox))
        if len(self.inbox) >= self.capacity:
            self._pause()
        self.ready.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        self._soon(self.lose, f"connection to the plant broker lost: {reason}")

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        self._soon(self._opened, sock)

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self._soon(self._closed)

    def _on_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self._soon(self._watch_writes, True)

    def _on_unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self._soon(self._watch_writes, False)

    def _soon(self, callback: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            callback(*args)
        else:
            self.loop.call_soon_threadsafe(callback, *args)

    # -- the socket, on the loop -------------------------------------------------------

    def _opened(self, sock: Any) -> None:
        self._sock, self._fd = sock, sock.fileno()
        self._resume()
        self._misc = self.loop.create_task(self._keepalive(), name="mqtt-keepalive")

    def _closed(self) -> None:
        if self._fd is not None:
            self._watch_writes(False)
            if self._reading:
                self.loop.remove_reader(self._fd)
            self._reading = False
            self._fd = self._sock = None
        if self._misc is not None:
            self._misc.cancel()
        self.socket_closed.set()

    def _watch_writes(self, on: bool) -> None:
        if self._fd is None:
            return
        if on:
            self.loop.add_writer(self._fd, self.client.loop_write)
        else:
            self.loop.remove_writer(self._fd)

    def _readable(self) -> None:
        # paho reads one packet per loop_read; keep reading while messages come.
        for _ in range(READ_BURST):
            before = self._received
            self.client.loop_read()
            if not self._reading or self._received == before:
                break
        pending = getattr(self._sock, "pending", None)
        if self._reading and pending is not None and pending():
            self.loop.call_soon(self._readable)  # decrypted TLS data the fd will not signal

    def _pause(self) -> None:
        if self._reading and self._fd is not None:
            self.loop.remove_reader(self._fd)
            self._reading = False

    def _resume(self) -> None:
        if not self._reading and self._fd is not None:
            self.loop.add_reader(self._fd, self._readable)
            self._reading = True

    async def _keepalive(self) -> None:
        """paho's periodic duty: PINGREQ when idle, noticing a dead link (a timer)."""
        while True:
            if self.client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            await asyncio.sleep(MISC_INTERVAL_S)

    # -- the driver's side ---------------------------------------------------------------

    def take(self, limit: int) -> list[Incoming]:
        """Up to `limit` messages from the inbox, in arrival order, each with its ack entry."""
        taken = []
        while self.inbox and len(taken) < limit:
            message = self.inbox.popleft()
            if message.qos > 0:
                message.entry = self.window.add(message.mid)
            taken.append(message)
        if len(self.inbox) < self.capacity and not self._stopping:
            self._resume()
        return taken

    @property
    def full(self) -> bool:
        return len(self.inbox) >= self.capacity

    def lose(self, why: str) -> None:
        if self.lost is None:
            self.lost = why
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
        self._resume()

    def stop(self) -> None:
        self._stopping = True
        self.lose("the driver was closed")

    def force_close(self) -> None:
        """The socket did not close by itself after DISCONNECT: stop watching it and close it."""
        sock = self._sock
        self._closed()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    @staticmethod
    def _resolve(future: asyncio.Future[Any], value: Any) -> None:
        if not future.done():
            future.set_result(value)

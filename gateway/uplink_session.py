"""One cloud connection: a paho client driven by the event loop, and its in-flight window.

Used by gateway/uplink.py; paho's socket callbacks register its socket with the
loop, so no network thread and no cross-thread hand-over per acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from gateway import metrics
from gateway.errors import UplinkError

if TYPE_CHECKING:
    from gateway.store import Outbox


@dataclass(slots=True)
class _Message:
    topic: str
    payload: bytes
    rowids: list[int]
    sent: float = 0.0


class _Rejected(UplinkError):
    """The broker (or TLS) refused us in a way that retrying soon will not fix."""


class _Unreachable(Exception):
    """The broker could not be reached or did not answer: retry with backoff."""


@dataclass(eq=False)
class _Session:
    """One connection: its paho client driven by the event loop, and the in-flight window."""

    client: mqtt.Client
    outbox: Outbox
    window: int
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    connack: asyncio.Future[Any] = field(init=False)
    lost: asyncio.Future[str] = field(init=False)
    closed: asyncio.Future[None] = field(init=False)
    inflight: dict[int, _Message] = field(default_factory=dict)
    acked: list[int] = field(default_factory=list)
    window_free: asyncio.Event = field(default_factory=asyncio.Event)
    status_acks: dict[int, asyncio.Future[None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.connack, self.lost, self.closed = (self.loop.create_future() for _ in range(3))
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish

    def attach(self) -> None:
        """Hand the connected socket to the event loop (paho's socket callbacks keep it so)."""
        sock = self.client.socket()
        if sock is None:
            raise _Unreachable("the cloud broker closed the connection at once")
        self.client.on_socket_close = self._on_socket_close
        self.client.on_socket_register_write = self._on_register_write
        self.client.on_socket_unregister_write = self._on_unregister_write
        self.loop.add_reader(sock, self._readable)
        if self.client.want_write():
            self.loop.add_writer(sock, self.client.loop_write)

    async def close(self, timeout_s: float = 1.0) -> None:
        """Disconnect cleanly; when the socket will not drain in time, cut it."""
        self.client.disconnect()
        if self.client.socket() is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self.closed), timeout_s)
        except TimeoutError:
            sock = self.client.socket()
            if sock is not None:  # reading the cut makes paho close and unregister the socket
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.closed), timeout_s)

    async def keepalive(self) -> None:
        """paho's pings and ping timeouts, which its own thread would otherwise run."""
        while True:
            await asyncio.sleep(1.0)
            self.client.loop_misc()

    def _readable(self) -> None:
        self.client.loop_read()
        if self.acked:  # every PUBACK read in this wake-up acks in one go
            rowids, self.acked = self.acked, []
            self.outbox.ack(rowids)
            metrics.UPLINK_ACKED.inc(len(rowids))
            self.window_free.set()

    # paho callbacks, all run on the event loop inside loop_read/loop_write/loop_misc:
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        _settle(self.connack, (reason, properties))

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any,
                       properties: Any) -> None:
        # paho says "Unspecified error" for a connection the broker simply closed.
        text = str(reason)
        _settle(self.lost, "the broker closed the connection" if text == "Unspecified error"
                else text)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        message = self.inflight.pop(mid, None)
        if message is None:
            _settle(self.status_acks.pop(mid, None), None)
        elif reason.is_failure:
            # An MQTT 5 broker refused it (quota, not authorised): keep the rows and
            # start over on a new connection rather than skip them.
            _settle(self.lost, f"the broker refused a publish to {message.topic}: {reason}")
        else:
            self.acked.extend(message.rowids)
            metrics.UPLINK_LATENCY.observe(time.perf_counter() - message.sent)

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        self.loop.remove_reader(sock)
        self.loop.remove_writer(sock)
        _settle(self.closed, None)

    def _on_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self.loop.add_writer(sock, self.client.loop_write)

    def _on_unregister_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self.loop.remove_writer(sock)


def _settle(future: asyncio.Future[Any] | None, value: Any) -> None:
    if future is not None and not future.done():
        future.set_result(value)

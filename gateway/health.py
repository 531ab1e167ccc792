"""Health and metrics over HTTP: /healthz (liveness), /readyz (readiness), /metrics (Prometheus).

A deliberately tiny HTTP/1.1 server on the gateway's own event loop
(asyncio.start_server): GET only, one request per connection, a bounded
request head, timeouts on reading and writing, a cap on concurrent clients.
Bound to 127.0.0.1 unless the config says otherwise.

- /healthz answers 200 whenever the event loop is running: a stuck loop
  cannot answer at all, which is what a liveness probe needs to see.
- /readyz answers 200 when the outbox is writable, the uplink is connected
  and every device is online, 503 otherwise; the JSON body carries the
  details from the runtime's status (gateway/status.py) plus a `problems` list.
- /metrics is the Prometheus text format (`generate_latest()`, or OpenMetrics
  when the scraper's Accept header asks for it) of the series declared in
  gateway.metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from gateway.status import GatewayStatus, readiness

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 8 * 1024
REQUEST_TIMEOUT_S = 5.0
MAX_CLIENTS = 16

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}

Status = Callable[[], GatewayStatus]


class HealthServer:
    """The HTTP endpoint; construct (no I/O), `await start()`, read `port`, `await stop()`."""

    def __init__(self, host: str, port: int, status: Status, *,
                 registry: CollectorRegistry = REGISTRY,
                 request_timeout_s: float = REQUEST_TIMEOUT_S,
                 max_clients: int = MAX_CLIENTS) -> None:
        self.host = host
        self._requested_port = port
        self._status = status
        self._registry = registry
        self._timeout_s = request_timeout_s
        self._max_clients = max_clients
        self._server: asyncio.Server | None = None
        self._clients: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._status_failing = False
        self._started_at = time.monotonic()

    @property
    def port(self) -> int:
        """The real port (the one picked by the OS when configured as 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the health server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def active_clients(self) -> int:
        """Connections being served right now (at most `max_clients` get an answer)."""
        return len(self._clients)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._serve_client, self.host, self._requested_port, limit=MAX_REQUEST_BYTES)
        except OSError as exc:
            raise OSError(exc.errno, f"health endpoint cannot listen on {self.host}:"
                          f"{self._requested_port}: {exc.strerror}; change [health] port or "
                          "set [health] enabled = false") from exc
        self._started_at = time.monotonic()
        log.info("health endpoint on %s (/healthz /readyz /metrics)", self.url)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        # Closing a client's transport ends its pending read; cancelling the
        # task instead makes Python 3.11's streams log a spurious error.
        for writer in self._clients.values():
            writer.close()
        pending = list(self._clients)
        if pending:
            _done, stuck = await asyncio.wait(pending, timeout=self._timeout_s)
            for task in stuck:
                task.cancel()
        await self._server.wait_closed()
        self._server = None

    # -- one connection, one request -------------------------------------------

    async def _serve_client(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        busy = len(self._clients) > self._max_clients
        try:
            response = await self._answer(reader, busy)
            if response:
                writer.write(response)
                await asyncio.wait_for(writer.drain(), self._timeout_s)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stalled; nothing to tell it
        finally:
            self._clients.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), self._timeout_s)

    async def _answer(self, reader: asyncio.StreamReader, busy: bool) -> bytes:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self._timeout_s)
        except asyncio.LimitOverrunError:
            return _response(431, {"error": f"request head over {MAX_REQUEST_BYTES} bytes"})
        except asyncio.IncompleteReadError:
            return b""  # closed before sending a whole request
        except TimeoutError:
            return _response(408, {"error": "request not received in time"})
        if busy:
            # Answered only after reading the request: closing a socket with
            # unread data resets it, and the client would never see the 503.
            return _response(503, {"error": f"more than {self._max_clients} clients at once"})
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _response(400, {"error": "malformed request line"})
        method, target, _version = parts
        if method != "GET":
            return _response(405, {"error": "only GET is supported"},
                             extra_headers={"Allow": "GET"})
        path = target.split("?", 1)[0]
        if path == "/healthz":
            return _response(200, {"alive": True,
                                   "uptime_s": round(time.monotonic() - self._started_at, 3)})
        if path == "/readyz":
            return self._readyz()
        if path == "/metrics":
            return self._metrics(_header(header_lines, "accept"))
        if path == "/":
            return _response(200, {"endpoints": ["/healthz", "/readyz", "/metrics"]})
        return _response(404, {"error": f"no such endpoint {path}",
                               "endpoints": ["/healthz", "/readyz", "/metrics"]})

    def _metrics(self, accept: str) -> bytes:
        # Negotiated like prometheus_client's own server: the classic text
        # format by default, OpenMetrics when the scraper asks for it.
        encode, content_type = choose_encoder(accept)
        return _response(200, encode(self._registry), content_type=content_type)

    def _readyz(self) -> bytes:
        try:
            status = self._status()
        except Exception as exc:  # noqa: BLE001 - the probe must answer whatever the runtime does
            if not self._status_failing:
                log.exception("health status() failed; /readyz answers 503 until it works")
            self._status_failing = True
            return _response(503, {"ready": False,
                                   "problems": [f"status unavailable: {type(exc).__name__}"]})
        self._status_failing = False
        ready, problems = readiness(status)
        return _response(200 if ready else 503,
                         {"ready": ready, "problems": problems, **status.as_json()})


def _header(lines: list[str], name: str) -> str:
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name:
            return value.strip()
    return ""


def _response(code: int, body: dict[str, Any] | bytes, *, content_type: str = "application/json",
              extra_headers: dict[str, str] | None = None) -> bytes:
    if isinstance(body, dict):
        payload = (json.dumps(body, default=str, sort_keys=True) + "\n").encode()
    else:
        payload = body
    headers = {"Content-Type": content_type, "Content-Length": str(len(payload)),
               "Cache-Control": "no-store", "Connection": "close", **(extra_headers or {})}
    head = f"HTTP/1.1 {code} {_REASONS.get(code, 'Unknown')}\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
    return head.encode("latin-1") + payload

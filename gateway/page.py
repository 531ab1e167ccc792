"""The commissioning page: `/`, its two static files, its JSON and its live server-sent events.

Read-only. `GET /api/state` is everything the page shows plus each numeric
point's sparkline history; `GET /api/events` streams the same figures (without
history) once a tick as server-sent events; `GET /api/mapping?device=D&point=P`
is a driver's mapping help for one point (Modbus: its registers decoded in every
type and byte order). The page's files ship in the package (gateway/static/).

One snapshot is encoded per tick and handed to every stream. Each stream has a
queue of QUEUE_SIZE snapshots; a browser that falls that far behind (or does not
take a write within the write timeout) is disconnected, and its EventSource
reconnects to a fresh state: a slow browser never grows the gateway's memory.
At most `max_streams` streams are open at once, so probes always find room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from gateway.page_access import Access
from gateway.page_state import SPARK_SAMPLES, SPARK_STEP_S, PageState

log = logging.getLogger(__name__)

TICK_S = 1.0
QUEUE_SIZE = 4
MAX_STREAMS = 8
WRITE_TIMEOUT_S = 5.0
FILES = {"/": ("index.html", "text/html"), "/page.js": ("page.js", "text/javascript"),
         "/page.css": ("page.css", "text/css")}
HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
           "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
           "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'"}

Figures = Callable[[], dict[str, Any]]
Mapping = Callable[[str, str], dict[str, Any] | None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Stream:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_SIZE)
        self.lagging = False


class Page:
    """The page's routes; `add_routes` onto the health server's application."""

    def __init__(self, state: PageState, figures: Figures, mapping: Mapping, access: Access,
                 *, tick_s: float = TICK_S, max_streams: int = MAX_STREAMS,
                 write_timeout_s: float = WRITE_TIMEOUT_S) -> None:
        self.state = state
        self._figures = figures
        self._mapping = mapping
        self._access = access
        self._tick_s = tick_s
        self._max_streams = max_streams
        self._write_timeout_s = write_timeout_s
        self._streams: set[_Stream] = set()
        self._files: dict[str, bytes] = {}
        self._ticker: asyncio.Task[None] | None = None

    @property
    def streams(self) -> int:
        """Event streams open now."""
        return len(self._streams)

    def add_routes(self, app: web.Application) -> None:
        for path in FILES:
            app.router.add_get(path, self._guard(self._file), allow_head=False)
        app.router.add_get("/api/state", self._guard(self._state), allow_head=False)
        app.router.add_get("/api/events", self._guard(self._events), allow_head=False)
        app.router.add_get("/api/mapping", self._guard(self._mapping_help), allow_head=False)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)

    def close(self) -> None:
        """End every event stream (the server is stopping)."""
        for stream in self._streams:
            stream.lagging = True
            with contextlib.suppress(asyncio.QueueFull):
                stream.queue.put_nowait(b"")

    async def _start(self, app: web.Application) -> None:
        self._files = await asyncio.to_thread(_read_files)
        self._ticker = asyncio.create_task(self._tick(), name="page ticker")

    async def _stop(self, app: web.Application) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            self._access.check(request)  # raises 401 or 403
            return await handler(request)
        return guarded

    # -- the routes --------------------------------------------------------------------

    async def _file(self, request: web.Request) -> web.Response:
        name, content_type = FILES[request.path]
        return web.Response(body=self._files[name], content_type=content_type,
                            charset="utf-8", headers=HEADERS)

    async def _state(self, request: web.Request) -> web.Response:
        body = {**self._snapshot(), "history": self.state.history(),
                "spark": {"step_s": SPARK_STEP_S, "samples": SPARK_SAMPLES}}
        return _json(200, body)

    async def _mapping_help(self, request: web.Request) -> web.Response:
        device, point = request.query.get("device", ""), request.query.get("point", "")
        found = self._mapping(device, point)
        if found is None:
            return _json(404, {"error": f"no raw data for {device}/{point}: only polled "
                                        "Modbus points have registers to show, once read"})
        return _json(200, found)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if len(self._streams) >= self._max_streams:
            return _json(503, {"error": f"more than {self._max_streams} pages open at once"})
        response = web.StreamResponse(headers={**HEADERS, "Content-Type": "text/event-stream"})
        stream = _Stream()
        self._streams.add(stream)
        try:
            async with asyncio.timeout(self._write_timeout_s):
                await response.prepare(request)
                await response.write(_event(self._snapshot()))
            while not stream.lagging:
                data = await stream.queue.get()
                if not data:
                    break
                async with asyncio.timeout(self._write_timeout_s):
                    await response.write(data)
        except (TimeoutError, ConnectionError):
            pass  # gone, or too slow to take its events: it reconnects to a fresh state
        finally:
            self._streams.discard(stream)
        if request.transport is not None:
            request.transport.close()
        return response

    # -- the tick ----------------------------------------------------------------------

    def _snapshot(self) -> dict[str, Any]:
        return {"now": self.state.now(), "devices": self.state.devices(), **self._figures()}

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)  # the page's refresh period, not a sync
            if not self._streams:
                continue
            try:
                data = _event(self._snapshot())
            except Exception:  # noqa: BLE001 - the page must never take the gateway down
                log.exception("page: snapshot failed")
                continue
            for stream in self._streams:
                try:
                    stream.queue.put_nowait(data)
                except asyncio.QueueFull:
                    stream.lagging = True


def _event(body: dict[str, Any]) -> bytes:
    return b"event: state\ndata: " + orjson.dumps(body, default=str) + b"\n\n"


def _json(code: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=code, body=orjson.dumps(body, default=str),
                        content_type="application/json", headers=HEADERS)


def _read_files() -> dict[str, bytes]:
    folder = resources.files("gateway") / "static"
    return {name: (folder / name).read_bytes() for name, _ in FILES.values()}

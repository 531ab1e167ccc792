"""Health, metrics and the commissioning page over HTTP: aiohttp on the gateway's own loop.

- /healthz answers 200 whenever the event loop is running: a stuck loop
  cannot answer at all, which is what a liveness probe needs to see.
- /readyz answers 200 when the outbox is writable, the uplink is connected
  and every device is online, 503 otherwise; the JSON body carries the
  details from the runtime's status (gateway/status.py) plus a `problems` list.
- /metrics is the Prometheus text format (`generate_latest()`, or OpenMetrics
  when the scraper's Accept header asks for it) of the series declared in
  gateway.metrics.
- / is the read-only commissioning page (gateway/page.py), when the runtime gives one.

Bounds, each with a test in tests/test_health.py: a request head of at most
MAX_REQUEST_BYTES per line and MAX_HEADERS lines (400 beyond); a connection that
sends no complete request within `request_timeout_s` is closed, and so is one that
does not take its answer within that time; more than `max_clients` connections at
once are answered 503. Bound to 127.0.0.1 unless the config says otherwise; every
answer but the page's event stream closes its connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from gateway.errors import ConfigError
from gateway.status import GatewayStatus, readiness

if TYPE_CHECKING:
    from gateway.page import Page

log = logging.getLogger(__name__)
# aiohttp logs every malformed request (a port scan, a TLS hello on a plain port) as an
# error with a traceback; here they are debug lines.
_requests_log = logging.getLogger(f"{__name__}.requests")

MAX_REQUEST_BYTES = 8 * 1024
MAX_HEADERS = 32
REQUEST_TIMEOUT_S = 5.0
MAX_CLIENTS = 16
ENDPOINTS = ["/healthz", "/readyz", "/metrics"]

Status = Callable[[], GatewayStatus]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HealthServer:
    """The HTTP endpoint; construct (no I/O), `await start()`, read `port`, `await stop()`."""

    def __init__(self, host: str, port: int, status: Status, *,
                 registry: CollectorRegistry = REGISTRY,
                 request_timeout_s: float = REQUEST_TIMEOUT_S,
                 max_clients: int = MAX_CLIENTS, page: Page | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self._requested_port = port
        self._status = status
        self._registry = registry
        self._timeout_s = request_timeout_s
        self._max_clients = max_clients
        self._page = page
        self._tls = tls
        self._runner: web.AppRunner | None = None
        self._status_failing = False
        self._started_at = time.monotonic()

    @property
    def port(self) -> int:
        """The real port (the one picked by the OS when configured as 0)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the health server is not started")
        return int(self._runner.addresses[0][1])

    @property
    def active_clients(self) -> int:
        """Connections open right now (at most `max_clients` get an answer)."""
        server = None if self._runner is None else self._runner.server
        return 0 if server is None else len(server.connections)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self._tls else 'http'}://{host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._bounds], client_max_size=MAX_REQUEST_BYTES)
        app.on_response_prepare.append(_server_header)
        app.router.add_get("/healthz", self._healthz, allow_head=False)
        app.router.add_get("/readyz", self._readyz, allow_head=False)
        app.router.add_get("/metrics", self._metrics, allow_head=False)
        if self._page is not None:
            self._page.add_routes(app)
        else:
            app.router.add_get("/", self._index, allow_head=False)
        # keepalive_timeout also closes a connection that sends no whole request head.
        runner = web.AppRunner(app, handle_signals=False, access_log=None,
                               keepalive_timeout=self._timeout_s,
                               shutdown_timeout=self._timeout_s,
                               max_line_size=MAX_REQUEST_BYTES, max_field_size=MAX_REQUEST_BYTES,
                               max_headers=MAX_HEADERS, logger=_requests_log)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port, ssl_context=self._tls)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(exc.errno, f"health endpoint cannot listen on {self.host}:"
                          f"{self._requested_port}: {exc.strerror}; change [health] port or "
                          "set [health] enabled = false") from exc
        self._runner = runner
        self._started_at = time.monotonic()
        log.info("health endpoint on %s (/ /healthz /readyz /metrics)", self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._page is not None:
            self._page.close()  # event streams end, so shutdown need not wait them out
        # Open connections, idle ones included, are closed; a handler still running after
        # shutdown_timeout is cancelled.
        await runner.cleanup()

    # -- bounds, and errors as JSON ------------------------------------------------

    @web.middleware
    async def _bounds(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.active_clients > self._max_clients:
            response: web.StreamResponse = _json(
                503, {"error": f"more than {self._max_clients} clients at once"})
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = _error(request, exc)
        if response.prepared:  # a stream the page wrote itself
            return response
        response.force_close()
        try:
            # Sent here, bounded: a client that does not read its answer is cut off.
            async with asyncio.timeout(self._timeout_s):
                await response.prepare(request)
                await response.write_eof()
        except TimeoutError:
            if request.transport is not None:
                request.transport.abort()
        return response

    # -- the endpoints ---------------------------------------------------------------

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json(200, {"alive": True,
                           "uptime_s": round(time.monotonic() - self._started_at, 3)})

    async def _index(self, request: web.Request) -> web.Response:
        return _json(200, {"endpoints": ENDPOINTS})

    async def _metrics(self, request: web.Request) -> web.Response:
        # Negotiated like prometheus_client's own server: the classic text
        # format by default, OpenMetrics when the scraper asks for it.
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        response = web.Response(status=200, body=encode(self._registry),
                                headers={"Cache-Control": "no-store"})
        response.headers["Content-Type"] = content_type
        return response

    async def _readyz(self, request: web.Request) -> web.Response:
        try:
            status = self._status()
        except Exception as exc:  # noqa: BLE001 - the probe must answer whatever the runtime does
            if not self._status_failing:
                log.exception("health status() failed; /readyz answers 503 until it works")
            self._status_failing = True
            return _json(503, {"ready": False,
                               "problems": [f"status unavailable: {type(exc).__name__}"]})
        self._status_failing = False
        ready, problems = readiness(status)
        return _json(200 if ready else 503,
                     {"ready": ready, "problems": problems, **status.as_json()})


async def _server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = "millwright"  # not the Python and aiohttp versions


def _as_debug(record: logging.LogRecord) -> bool:
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    return _requests_log.isEnabledFor(logging.DEBUG)


_requests_log.addFilter(_as_debug)


def _error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """An HTTP error from routing as JSON, like every other answer."""
    headers = {}
    if isinstance(exc, web.HTTPMethodNotAllowed):
        headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return _json(exc.status, {"error": "only GET is supported"}, headers)
    if isinstance(exc, web.HTTPNotFound):
        return _json(404, {"error": f"no such endpoint {request.path}", "endpoints": ENDPOINTS})
    if "WWW-Authenticate" in exc.headers:
        headers["WWW-Authenticate"] = exc.headers["WWW-Authenticate"]
    return _json(exc.status, {"error": exc.text or exc.reason}, headers)


def _json(code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    payload = (json.dumps(body, default=str, sort_keys=True) + "\n").encode()
    return web.Response(status=code, body=payload, headers={
        "Content-Type": "application/json", "Cache-Control": "no-store", **(headers or {})})


async def for_gateway(gateway: Any) -> HealthServer:
    """The endpoint of a runtime `Gateway` as its [health] table says: page, login, TLS.

    The password file and the certificate are read off the loop."""
    from gateway import secrets
    from gateway.page import Page
    from gateway.page_access import Access, is_loopback, tls_context
    from gateway.page_state import gateway_figures

    health = gateway.config.health
    password = None
    if health.password_file is not None:
        try:
            password = await asyncio.to_thread(secrets.read_secret, health.password_file,
                                               "health.password_file")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError([f"health.password_file: cannot read {health.password_file}: "
                               f"{exc}"]) from None
    try:
        tls = await asyncio.to_thread(tls_context, health)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise ConfigError([f"health.cert_file, health.key_file: cannot serve TLS with "
                           f"{health.cert_file} and {health.key_file}: {exc}; they must be a "
                           "PEM certificate and its private key"]) from None
    access = Access(required=not is_loopback(health.host), username=health.username,
                    password=password)
    state = gateway.page_state
    drivers = {driver.name: driver for driver in gateway.drivers}

    def mapping(device: str, point: str) -> dict[str, Any] | None:
        found = drivers.get(device)
        return None if found is None else found.mapping_help(point)

    page = Page(state, lambda: gateway_figures(gateway, state), mapping, access)
    return HealthServer(health.host, health.port, gateway.status, page=page, tls=tls)

"""One connection to a NATS server of the cloud cluster: the only module that touches nats-py.

`NatsLink.open` tries the configured servers in turn, starting where it is told (so a
reconnect after a lost node goes to the next one), each once, with nats-py's own
reconnection off: a lost connection is the uplink's to handle, with a fresh link, as the
MQTT uplink does with a fresh client (the outbox, not the library, holds what is
unacknowledged). Credentials are read off the loop through gateway/secrets.py, so a
password or seed is registered with the log redactor before nats-py sees it.

Publishing is JetStream's asynchronous publish done by hand: each message carries
`Nats-Msg-Id` and a reply subject `{inbox}.{token}` under one wildcard subscription, and
each PubAck (or error) is handed to `on_answer(token, answer)`. Doing it here rather than
with nats-py's `publish_async` keeps the window, the deadline and the acknowledgement
batching ours, and costs a third less CPU per message (docs/benchmarks.md).

nats-py's exceptions become `NatsUnreachable` (retry soon), `NatsRejected` (credentials,
a certificate, permissions: retrying soon will not help), `LinkLost` and `TooLarge`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client, RawCredentials
from nats.js.api import StreamConfig

from gateway import mqtt_tls, secrets
from gateway.errors import UplinkError
from gateway.nats_config import NatsServer

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10
API_TIMEOUT_S = 5.0
FAILED_CLOSE_S = 0.5
MAX_OUTSTANDING_PINGS = 2
ERR_STREAM_NOT_FOUND = 10059
# Words of the -ERR lines of a CONNECT that retrying soon will not fix.
_REFUSALS = ("authorization violation", "authentication", "permissions violation")
ERR_MESSAGE_TOO_LARGE = 10054  # the stream's max_msg_size


class NatsUnreachable(Exception):
    """No server answered, or the cluster cannot serve JetStream now: retry with backoff."""


class NatsRejected(UplinkError):
    """Refused in a way retrying soon will not fix (credentials, certificate, permissions)."""


class LinkLost(Exception):
    """The connection closed under a publish."""


class TooLarge(Exception):
    """A message over the server's max_payload: it can never be published."""


@dataclass(frozen=True, slots=True)
class Answer:
    """What JetStream answered to one publish."""

    duplicate: bool = False  # stored already, within the stream's duplicate window
    refused: str | None = None  # the stream's error, e.g. it is full (discard new)
    too_large: bool = False  # over the stream's max_msg_size
    no_stream: bool = False  # no responders: no stream (or no leader) takes the subject


STORED, DUPLICATE, NO_STREAM = Answer(), Answer(duplicate=True), Answer(no_stream=True)


@dataclass(frozen=True, slots=True)
class StreamFacts:
    """What the uplink checks of a stream before publishing into it."""

    subjects: list[str]
    duplicate_window_s: float


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """How to connect, read from the config once (see `NatsUplink.settings`)."""

    servers: Sequence[NatsServer]
    name: str
    tls: Any  # a TlsClient (the cloud section) when the servers are tls://, else None
    ping_interval_s: int
    creds_file: Path | None = None
    nkey_seed_file: Path | None = None
    user: str | None = None
    password_file: Path | None = None


class NatsLink:
    """One open connection; `lost` settles (with why) when it closes."""

    def __init__(self, client: Client, server: NatsServer,
                 on_answer: Callable[[int, Answer], None]) -> None:
        self.client = client
        self.server = server
        self.on_answer = on_answer
        self.lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._inbox = ""

    @classmethod
    async def open(cls, settings: LinkSettings, first: int,
                   on_answer: Callable[[int, Answer], None]) -> NatsLink:
        """Connect to the first server that answers, trying each once from `first`."""
        options, tls = await asyncio.to_thread(_prepare, settings)
        failures = []
        count = len(settings.servers)
        for offset in range(count):
            server = settings.servers[(first + offset) % count]
            try:
                return await cls._open_one(settings, server, options, tls, on_answer)
            except NatsUnreachable as exc:
                failures.append(str(exc))
        if count == 1:
            raise NatsUnreachable(failures[0])
        raise NatsUnreachable(f"no NATS server of cloud.url answered: {'; '.join(failures)}")

    @classmethod
    async def _open_one(cls, settings: LinkSettings, server: NatsServer,
                        options: dict[str, Any], tls_context: ssl.SSLContext | None,
                        on_answer: Callable[[int, Answer], None]) -> NatsLink:
        where = f"{server.host}:{server.port}"
        client = Client()
        link = cls(client, server, on_answer)
        errors: list[BaseException] = []

        async def on_error(exc: Exception) -> None:  # nats-py's default logs a traceback
            errors.append(exc)

        async def on_closed() -> None:
            if not link.lost.done():
                last = errors[-1] if errors else None
                link.lost.set_result(f"the connection to {where} closed"
                                     + (f" ({_describe(last)})" if last else ""))

        tls = tls_context if server.scheme == "tls" else None
        try:
            # nats-py retries even the first connection: max_reconnect_attempts=1 with no
            # wait makes that two quick tries (0 would mean without end, every 2 s).
            await client.connect(
                servers=[server.url], name=settings.name, allow_reconnect=False,
                max_reconnect_attempts=1, reconnect_time_wait=0,
                connect_timeout=CONNECT_TIMEOUT_S, ping_interval=settings.ping_interval_s,
                max_outstanding_pings=MAX_OUTSTANDING_PINGS, error_cb=on_error,
                disconnected_cb=on_closed, closed_cb=on_closed, tls=tls,
                tls_hostname=server.host if tls else None, **options)
        except ssl.SSLCertVerificationError as exc:
            # After a failed TLS upgrade, waiting for the socket to close never ends.
            await _close_quietly(client, FAILED_CLOSE_S)
            explained = await asyncio.to_thread(
                mqtt_tls.explain_refusal, exc, server.host, server.port, "the NATS server",
                "cloud.")
            raise NatsRejected(explained) from exc
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            await _close_quietly(client, FAILED_CLOSE_S)
            if not _is_refusal(exc):
                raise NatsUnreachable(f"the NATS server at {where} is unreachable: "
                                      f"{_describe(exc)}") from exc
            raise NatsRejected(f"the NATS server at {where} refused our credentials "
                               f"({_describe(exc)}); check cloud.nats.creds_file, "
                               "nkey_seed_file, or user and password_file") from exc
        link._inbox = client.new_inbox()
        try:
            await client.subscribe(f"{link._inbox}.*", cb=link._on_reply)
        except (OSError, nats.errors.Error) as exc:
            await _close_quietly(client, FAILED_CLOSE_S)
            raise NatsUnreachable(f"the NATS server at {where} closed before we could "
                                  f"subscribe for PubAcks: {_describe(exc)}") from exc
        return link

    async def close(self) -> None:
        await _close_quietly(self.client)

    # -- publishing -------------------------------------------------------------------

    async def publish(self, subject: str, payload: bytes, token: int,
                      msg_id: str | None = None) -> None:
        """Send one JetStream publish; its answer comes to `on_answer(token, ...)`."""
        headers = {"Nats-Msg-Id": msg_id} if msg_id is not None else None
        try:
            await self.client.publish(subject, payload, reply=f"{self._inbox}.{token}",
                                      headers=headers)
        except nats.errors.MaxPayloadError as exc:
            raise TooLarge(f"{len(payload)} bytes, over the server's max_payload of "
                           f"{self.client.max_payload}") from exc
        except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError,
                nats.errors.ConnectionDrainingError, OSError) as exc:
            raise LinkLost(f"the connection to {self.server.host}:{self.server.port} "
                           f"closed ({_describe(exc)})") from exc

    async def _on_reply(self, msg: Any) -> None:
        token = int(msg.subject.rpartition(".")[2])
        data = msg.data
        if not data:  # a status message without a body: 503 no responders
            status = (msg.headers or {}).get("Status")
            self.on_answer(token, NO_STREAM if status == "503" else
                           Answer(refused=f"status {status}"))
            return
        try:
            reply = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.on_answer(token, Answer(refused=f"not a PubAck: {data[:80]!r}"))
            return
        error = reply.get("error")
        if error is None:
            self.on_answer(token, DUPLICATE if reply.get("duplicate") else STORED)
        elif error.get("err_code") == ERR_MESSAGE_TOO_LARGE:
            self.on_answer(token, Answer(too_large=True, refused=error.get("description")))
        else:
            self.on_answer(token, Answer(refused=f"{error.get('description', error)} "
                                                 f"(code {error.get('code')}, err_code "
                                                 f"{error.get('err_code')})"))

    # -- the stream -------------------------------------------------------------------

    async def stream(self, name: str) -> StreamFacts | None:
        """The stream's subjects and duplicate window; None when it does not exist."""
        try:
            info = await self.client.jetstream(timeout=API_TIMEOUT_S).stream_info(name)
        except nats.js.errors.NotFoundError:
            return None
        except nats.js.errors.APIError as exc:
            if exc.err_code == ERR_STREAM_NOT_FOUND:
                return None
            raise self._api_failure(f"reading the stream {name!r}", exc) from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise self._api_failure(f"reading the stream {name!r}", exc) from exc
        config = info.config
        return StreamFacts(list(config.subjects or []), float(config.duplicate_window or 0))

    async def create_stream(self, name: str, subjects: list[str], duplicate_window_s: float,
                            replicas: int) -> None:
        config = StreamConfig(name=name, subjects=subjects, num_replicas=replicas,
                              duplicate_window=duplicate_window_s)
        try:
            await self.client.jetstream(timeout=API_TIMEOUT_S).add_stream(config)
        except (nats.errors.Error, TimeoutError) as exc:
            raise self._api_failure(f"creating the stream {name!r}", exc) from exc

    def _api_failure(self, doing: str, exc: BaseException) -> Exception:
        where = f"{self.server.host}:{self.server.port}"
        if isinstance(exc, nats.js.errors.APIError) and exc.code in (400, 403):
            return NatsRejected(f"JetStream at {where} refused {doing}: {_describe(exc)}")
        # Timeouts and 503s: JetStream is off, or the cluster has no leader yet.
        return NatsUnreachable(f"JetStream at {where} did not serve {doing}: "
                               f"{_describe(exc)} (is JetStream enabled, and does the cluster "
                               "have a quorum?)")


def _is_refusal(exc: BaseException) -> bool:
    """A refused CONNECT: nats-py raises a plain Error with the server's -ERR text."""
    if isinstance(exc, nats.errors.AuthorizationError | nats.errors.InvalidUserCredentialsError):
        return True
    text = str(exc).lower()
    return any(word in text for word in _REFUSALS)


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, nats.js.errors.APIError):
        return f"{exc.description or type(exc).__name__} (code {exc.code}, err_code " \
               f"{exc.err_code})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).removeprefix("nats: ") if exc is not None else ""
    return text or type(exc).__name__


def _prepare(settings: LinkSettings) -> tuple[dict[str, Any], ssl.SSLContext | None]:
    """The credential options and (for tls:// servers) the TLS context of one connection
    attempt, built once for all its servers; blocking (files, the system CAs): off the loop."""
    options = _credentials(settings)
    if not any(server.scheme == "tls" for server in settings.servers):
        return options, None
    try:
        return options, mqtt_tls.tls_context(settings.tls)
    except (OSError, ValueError) as exc:
        raise NatsRejected(f"cannot set up TLS for the NATS cluster: {exc}; check "
                           "cloud.ca_file, cert_file and key_file") from exc


def _credentials(settings: LinkSettings) -> dict[str, Any]:
    """nats-py's credential options, files read here (blocking: off the loop)."""
    try:
        if settings.creds_file is not None:
            text = secrets.read_creds(settings.creds_file, "cloud.nats.creds_file")
            return {"user_credentials": RawCredentials(text)}
        if settings.nkey_seed_file is not None:
            seed = secrets.read_secret(settings.nkey_seed_file, "cloud.nats.nkey_seed_file")
            return {"nkeys_seed_str": seed}
        if settings.user is not None and settings.password_file is not None:
            password = secrets.read_secret(settings.password_file, "cloud.nats.password_file")
            return {"user": settings.user, "password": password}
    except (OSError, UnicodeDecodeError) as exc:
        raise NatsRejected(f"cannot read the NATS credentials: {exc}; check cloud.nats.creds_"
                           "file, nkey_seed_file or password_file") from exc
    return {}


async def _close_quietly(client: Client, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    try:
        await asyncio.wait_for(client.close(), timeout_s)
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        log.debug("closing a NATS connection: %s", _describe(exc))

"""The cloud uplink: drains the outbox to the cloud MQTT broker (QoS 1, batches, birth and will).

A fresh paho client per connection (clean session: the outbox, not paho, holds
what is unacknowledged). Events go to `{prefix}/{kind}/{device}` in batches; a
device's birth goes alone, retained, to `{prefix}/birth/{device}`, so a consumer that
subscribes later still learns the device's points. With `compression = "zstd"` every
payload is compressed and says so in the MQTT 5 user property content-encoding.
Rows are acked in the outbox only after the PUBACK of the message that carried them,
and every (re)connect resends every unacked row from the start: at-least-once, with
the events' own ids.

paho runs on the event loop, not in its own thread (gateway/paho_loop.py): PUBACKs
are handled where they are read, with no thread hand-over and no GIL ping-pong. The
in-flight window is ours (gateway/uplink_session.py) and paho's is unlimited: once
its own window is full, paho rescans its in-flight list on every PUBACK (31k
messages/s at a window of 64, 3k at 4,096, 1.4k at 20,000).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway import metrics, mqtt_tls
from gateway.backoff import Backoff
from gateway.config import CloudSection
from gateway.config_base import parse_mqtt_url
from gateway.events import rfc3339
from gateway.uplink_pack import Packer
from gateway.uplink_session import CloudSession, Message, Rejected, Unreachable

if TYPE_CHECKING:
    import random

    from gateway.store import Outbox, OutboxRow

log = logging.getLogger(__name__)

CONNACK_TIMEOUT_S = 10.0
OFFLINE_ACK_TIMEOUT_S = 1.0
STABLE_SESSION_S = 5.0  # a session that lasted this long resets the backoff
FETCH_MAX_ROWS = 10_000
FETCH_MIN_ROWS = 2_000
_REJECTIONS = ("password", "authori", "identifier", "banned")  # CONNACK codes retrying won't fix


class Uplink:
    """Publishes the outbox to the cloud broker until cancelled (see the module docstring)."""

    def __init__(self, cloud: CloudSection, outbox: Outbox, *, prefix: str, gateway_id: str,
                 rng: random.Random | None = None) -> None:
        self.cloud = cloud
        self.outbox = outbox
        self.prefix = prefix.rstrip("/")
        self.gateway_id = gateway_id
        self.status_topic = f"{self.prefix}/status"
        scheme, self.host, self.port = parse_mqtt_url(cloud.url)
        self.use_tls = scheme == "mqtts"
        self.client_id = cloud.client_id or f"millwright-{gateway_id}"
        self.backoff = Backoff(cloud.reconnect_min_s,
                               max(cloud.reconnect_min_s, cloud.reconnect_max_s), rng,
                               refused_s=cloud.refused_retry_s)
        self.packer = Packer(cloud, self.prefix)
        self._connected = False
        self._problem: str | None = None  # the failure last logged: repeats stay quiet
        self.retry_delay_s: float | None = None  # the wait before the current retry, if any

    @property
    def connected(self) -> bool:
        return self._connected

    async def flush(self, timeout_s: float) -> bool:
        """True when every row was acked (so deleted from the outbox) before the timeout."""
        return await self.outbox.wait_empty(timeout_s)

    async def run(self) -> None:
        """Connect, publish birth, drain the outbox, reconnect on loss; until cancelled."""
        while True:
            started = time.monotonic()
            try:
                await self._session()
            except Rejected as exc:
                self._report(str(exc), logging.ERROR)
                self.retry_delay_s = self.backoff.longest()
            except Unreachable as exc:
                self._report(str(exc), logging.WARNING)
                self.retry_delay_s = self.backoff.next()
            except Exception as exc:  # noqa: BLE001 - e.g. an outbox read failed: keep the link
                self._report(f"uplink session failed: {type(exc).__name__}: {exc}",
                             logging.ERROR, exc)
                self.retry_delay_s = self.backoff.next()
            else:  # connected, then lost: a flapping link keeps escalating the delay
                if time.monotonic() - started >= STABLE_SESSION_S:
                    self.backoff.reset()
                self.retry_delay_s = self.backoff.next()
            await asyncio.sleep(self.retry_delay_s)

    def _report(self, problem: str, level: int, exc: BaseException | None = None) -> None:
        if problem != self._problem:
            log.log(level, "%s", problem, exc_info=exc)
            self._problem = problem

    def _set_connected(self, value: bool) -> None:
        self._connected = value
        metrics.UPLINK_CONNECTED.set(1 if value else 0)

    async def _session(self) -> None:
        session = await self._connect()
        try:
            self._set_connected(True)
            self.retry_delay_s = None
            log.info("connected to the cloud broker at %s:%d", self.host, self.port)
            self._problem = None
            self._publish_status(session, "online")
            drain = asyncio.create_task(self._drain(session), name="uplink-drain")
            try:
                await asyncio.wait((drain, session.lost), return_when=asyncio.FIRST_COMPLETED)
            finally:
                drain.cancel()
                await asyncio.gather(drain, return_exceptions=True)
            failure = None if drain.cancelled() else drain.exception()
            if failure is not None:
                raise failure  # e.g. the outbox failed
            log.warning("connection to the cloud broker lost (%s); %d messages in flight "
                        "will be sent again", session.lost.result(), session.in_flight)
            self._problem = None
        except asyncio.CancelledError:
            await self._say_offline(session)
            raise
        finally:
            self._set_connected(False)
            await session.close()

    async def _say_offline(self, session: CloudSession) -> None:
        """A clean shutdown announces offline itself: the broker sends the will only on a cut."""
        if session.lost.done():
            return
        try:
            await asyncio.wait_for(self._publish_status(session, "offline", "shutdown"),
                                   OFFLINE_ACK_TIMEOUT_S)
        except TimeoutError:
            log.warning("the cloud broker did not confirm the offline status within %.1f s",
                        OFFLINE_ACK_TIMEOUT_S)

    def _status_payload(self, status: str, reason: str) -> bytes:
        body = {"status": status, "gateway": self.gateway_id, "time": rfc3339(time.time())}
        if reason:
            body["reason"] = reason
        return json.dumps(body, separators=(",", ":")).encode()

    def _publish_status(self, session: CloudSession, status: str,
                        reason: str = "") -> asyncio.Future[None]:
        return session.publish_status(self.status_topic, self._status_payload(status, reason))

    async def _connect(self) -> CloudSession:
        v5 = self.cloud.mqtt_version == "5"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                             clean_session=None if v5 else True, reconnect_on_failure=False)
        client.max_inflight_messages_set(0)  # our window, not paho's: see the module docstring
        client.connect_timeout = CONNACK_TIMEOUT_S
        client.will_set(self.status_topic, self._status_payload("offline", "connection lost"),
                        qos=1, retain=True)
        # paho's message ids are 16-bit: leave room for the status messages beside the window.
        session = CloudSession(client, self.outbox, min(self.cloud.max_inflight, 65_000))
        where = f"{self.host}:{self.port}"
        try:
            await session.open(lambda: self._open_socket(client))
            await asyncio.wait((session.connack, session.lost), timeout=CONNACK_TIMEOUT_S,
                               return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await session.close()
            raise
        if not session.connack.done():
            await session.close()
            if session.lost.done():
                raise Unreachable(f"the cloud broker at {where} closed the connection before "
                                  f"answering CONNECT ({session.lost.result()}){self._hint()}")
            raise Unreachable(f"the cloud broker at {where} did not answer CONNECT within "
                              f"{CONNACK_TIMEOUT_S:.0f} s")
        reason, properties = session.connack.result()
        if reason.is_failure:
            await session.close()
            refused = f"the cloud broker at {where} refused the connection: {reason}"
            if any(word in str(reason).lower() for word in _REJECTIONS):
                raise Rejected(f"{refused}; check cloud.username, cloud.password_file, "
                               "cloud.client_id and the broker's ACL (retrying only slowly)")
            raise Unreachable(refused)
        receive_max = getattr(properties, "ReceiveMaximum", None) if v5 else None
        if receive_max:  # an MQTT 5 broker says how many QoS 1 messages it takes in flight
            session.window = min(session.window, int(receive_max))
        return session

    def _open_socket(self, client: mqtt.Client) -> None:
        """The blocking part of a connection attempt (files, DNS, TCP, TLS): off the loop."""
        where = f"{self.host}:{self.port}"
        try:
            mqtt_tls.configure(client, self.cloud, use_tls=self.use_tls)
        except (OSError, ValueError) as exc:
            raise Rejected(f"cannot set up TLS or credentials for the cloud broker: {exc}; "
                           "check cloud.ca_file, cert_file, key_file and password_file") from exc
        try:
            rc = client.connect(self.host, self.port, keepalive=self.cloud.keepalive_s)
        except ssl.SSLCertVerificationError as exc:
            raise Rejected(f"the TLS certificate of the cloud broker at {where} is not trusted "
                           f"({exc.verify_message}); set cloud.ca_file to the CA that signed it"
                           ) from exc
        except ssl.SSLError as exc:
            raise Unreachable(f"TLS handshake with the cloud broker at {where} failed: "
                              f"{exc.reason or exc}") from exc
        except OSError as exc:
            raise Unreachable(f"the cloud broker at {where} is unreachable: "
                              f"{exc.strerror or exc}") from exc
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise Unreachable(f"the cloud broker at {where} closed the connection during "
                              f"CONNECT ({mqtt.error_string(rc)}){self._hint()}")

    def _hint(self) -> str:
        if self.use_tls and self.cloud.cert_file is None:
            return "; if the broker requires client certificates, set cloud.cert_file and key_file"
        return ""

    async def _linger(self, rows: Sequence[OutboxRow]) -> bool:
        """With `cloud.linger_s`, a batch short of `batch_max_events` waits (at most that
        long after its first row was committed) for more rows to share its message: fewer,
        fuller messages, which compress far better, for a little latency. True when rows
        came meanwhile."""
        # At most linger_s: `created` is wall-clock, and a clock stepped back must not
        # make the batch wait out the step.
        wait = min(self.cloud.linger_s, self.cloud.linger_s - (time.time() - rows[0].created))
        if wait <= 0 or len(rows) >= self.cloud.batch_max_events:
            return False
        try:
            await asyncio.wait_for(self.outbox.wait_new(rows[-1].pos), wait)
        except TimeoutError:
            return False
        return True

    async def _drain(self, session: CloudSession) -> None:
        """Publish every row from the start, then each new one, within the in-flight window."""
        batch, single = self.packer.batch_properties, self.packer.single_properties
        # Each fetch is a hop to the reader thread: fetch enough to keep the window busy.
        limit = max(self.cloud.batch_max_events, min(
            max(session.window * self.cloud.batch_max_events, FETCH_MIN_ROWS), FETCH_MAX_ROWS))
        last = 0
        ready: deque[Message] = deque()
        while True:
            if not ready:
                rows = await self.outbox.fetch(last, limit)
                if not rows:
                    await self.outbox.wait_new(last)
                    continue
                if await self._linger(rows):
                    continue  # more came: fetch again, from the same place
                last = rows[-1].pos
                ready.extend(self.packer.pack(rows))
            published = 0
            while ready and session.in_flight < session.window:
                message = ready.popleft()
                session.publish(message, single if message.retain else batch)
                published += len(message.positions)
            metrics.UPLINK_PUBLISHED.inc(published)
            if ready:
                await session.wait_window()

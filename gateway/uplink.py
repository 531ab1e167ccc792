"""The cloud uplink: drains the outbox to the cloud MQTT broker (QoS 1, batches, birth and will).

A fresh paho client per connection (clean session: the outbox, not paho, holds
what is unacknowledged). Events go to `{prefix}/{kind}/{device}` in batches; a
device's birth goes alone, retained, to `{prefix}/birth/{device}`, so a consumer that
subscribes later still learns the device's points. With `compression = "zstd"` every
payload is compressed and says so in the MQTT 5 user property content-encoding.
Rows are acked in the outbox only after the PUBACK of the message that carried them,
and every (re)connect resends every unacked row from the start: at-least-once, with
the events' own ids.

What the broker does wrong is handled, never waited out silently: a message without
its PUBACK within `cloud.ack_timeout_s` reconnects (logged once, counted, the uplink
not ready until acknowledgements flow again); batches stay under the broker's packet
limit (gateway/uplink_limits.py); topics an MQTT 5 broker refuses are dropped while
others flow, and a broker that refuses everything is waited for, dropping nothing
(gateway/uplink_drain.py). `problem` says why the uplink is not ready.

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
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import mqtt_tls
from gateway.config import CloudSection
from gateway.config_base import parse_mqtt_url
from gateway.events import rfc3339
from gateway.topics import unsanitise_level
from gateway.uplink_drain import Drain, Refusals
from gateway.uplink_limits import PacketLimits
from gateway.uplink_loop import SessionLoop
from gateway.uplink_pack import Packer
from gateway.uplink_session import CloudSession, Rejected, Unreachable

if TYPE_CHECKING:
    import random

    from gateway.command_runner import CommandInbox
    from gateway.store import Outbox

log = logging.getLogger(__name__)

CONNACK_TIMEOUT_S = 10.0
OFFLINE_ACK_TIMEOUT_S = 1.0
# With commands, the session outlives a connection: commands sent while the gateway is away
# wait at the broker this long (then arrive, and are refused as expired, each with a result).
COMMAND_SESSION_EXPIRY_S = 86_400
_REJECTIONS = ("password", "authori", "identifier", "banned")  # CONNACK codes retrying won't fix


class Uplink(SessionLoop):
    """Publishes the outbox to the cloud broker until cancelled (see the module docstring)."""

    logger = __name__
    rejected = (Rejected,)
    unreachable = (Unreachable,)
    # Whether commands keep the MQTT session across connections (see `_connect`).
    commands_persist = True

    def __init__(self, cloud: CloudSection, outbox: Outbox, *, prefix: str, gateway_id: str,
                 rng: random.Random | None = None) -> None:
        super().__init__(cloud, outbox, rng)
        self.prefix = prefix.rstrip("/")
        self.gateway_id = gateway_id
        self.status_topic = f"{self.prefix}/status"
        scheme, self.host, self.port = parse_mqtt_url(cloud.url)
        self.use_tls = scheme == "mqtts"
        self.client_id = cloud.client_id or f"millwright-{gateway_id}"
        self.packer = Packer(cloud, self.prefix)
        self.limits = PacketLimits.for_cloud(cloud)
        self.refusals = Refusals(outbox, cloud.refused_retry_s)
        self._refusing: str | None = None  # the broker refused every publish
        self._status_refused = False  # the broker refuses our status topic: stop sending it
        self._probe = False  # the last connection closed with messages unanswered, unexplained
        self._current: CloudSession | None = None  # the connection now (the page's figures)
        # With [commands] enabled (set by the runtime): a persistent session subscribed to
        # {prefix}/command/+, each message handed to this inbox (gateway/command_runner.py).
        self.commands: CommandInbox | None = None
        self.command_filter = f"{self.prefix}/command/+"
        self._subscribe_refused: str | None = None

    @property
    def problem(self) -> str | None:
        """Why the uplink is not delivering (None: it is), for /readyz and `millwright status`."""
        if self._stalled or self._refusing:
            return self._stalled or self._refusing
        if not self._connected:
            return self._down or "not connected to the cloud broker yet"
        return None

    async def _session(self) -> None:
        session = self._current = await self._connect()
        try:
            self._set_connected(True)
            self._down = self.retry_delay_s = None
            if self._stalled or self._refusing:  # still the same trouble: said once already
                log.debug("reconnected to the cloud broker at %s:%d", self.host, self.port)
            else:
                log.info("connected to the cloud broker at %s:%d", self.host, self.port)
                self._problem = None
            session.first_ack.add_done_callback(lambda _: self._acks_flow())
            if self.commands is not None:  # every connection: the session may have been lost
                session.client.subscribe(self.command_filter, qos=1)
            await self._deliver(session)
        except asyncio.CancelledError:
            await self._say_offline(session)
            raise
        finally:
            self._set_connected(False)
            _ = self.last_ack_at  # kept past the session
            self._current = None
            await session.close()

    async def _deliver(self, session: CloudSession) -> None:
        """What a connection carries, until it ends: the status, then the outbox as CloudEvents
        (gateway/uplink_sparkplug.py overrides this and `_prepare`)."""
        if not self._status_refused:
            self._publish_status(session, "online").add_done_callback(self._status_answer)
        await self._drain_until_done(session, Drain(
            self.cloud, self.outbox, self.packer, self.limits, self.refusals, session,
            on_accepted=self._accepted, probe=self._probe))

    async def _drain_until_done(self, session: CloudSession, drain: Drain,
                                *also: asyncio.Future[Any]) -> None:
        """Run `drain` until the connection is lost, stalls, the broker refuses everything, the
        outbox fails (raised), or one of `also` is done (the caller's own reason to end)."""
        self._probe = False
        drained = asyncio.create_task(drain.run(), name="uplink-drain")
        stall = asyncio.create_task(session.stalled(self.cloud.ack_timeout_s),
                                    name="uplink-ack-deadline")
        try:
            waits: list[asyncio.Future[Any]] = [drained, stall, session.lost,
                                                drain.refused_all, *also]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (drained, stall):
                task.cancel()
            await asyncio.gather(drained, stall, return_exceptions=True)
        failure = None if drained.cancelled() else drained.exception()
        if failure is not None:
            raise failure  # e.g. the outbox failed
        if drain.refused_all.done():
            self.refusals.forget()  # drop nothing: the broker is misconfigured, not the data
            self._refusing = drain.refused_all.result()
            raise Rejected(self._refusing)
        if not stall.cancelled():
            where = f"{self.host}:{self.port}"
            self._ack_timeout(f"the cloud broker at {where}", where, stall.result(),
                              session.in_flight)
            return
        if session.lost.done():
            self._lost(session)

    def _lost(self, session: CloudSession) -> None:
        """The broker closed the connection: was a message in flight too large?"""
        if session.refusals_seen:  # explained: Mosquitto closes the connection after a refusal
            return
        self._probe = bool(session.unacked())
        too_large = self.limits.on_lost(session.unacked())
        if too_large:
            self.outbox.drop(too_large, "too_large")
        if not self.refusals.held:  # a topic refused: its closed connections are expected
            log.warning("connection to the cloud broker lost (%s); %d messages in flight "
                        "will be sent again", session.lost.result(), session.in_flight)
        if not (self._stalled or self._refusing):
            self._problem = None

    def _acks_flow(self, data: bool = False) -> None:
        # Only the status acknowledged: proof enough when there is nothing else to send.
        if self._stalled is not None and (data or self.outbox.stats().depth == 0):
            log.info("the cloud broker acknowledges publishes again")
            self._stalled = None

    def _accepted(self) -> None:
        self._acks_flow(data=True)
        if self._refusing is not None:
            log.info("the cloud broker accepts publishes again")
            self._refusing = None

    def _status_answer(self, answer: asyncio.Future[str | None]) -> None:
        if not answer.cancelled() and answer.result() and not self._status_refused:
            self._status_refused = True  # (Mosquitto closes the connection after a refusal)
            log.error("the cloud broker refuses the status topic %s (%s); online/offline "
                      "status is no longer published; check the broker's ACL",
                      self.status_topic, answer.result())

    async def _say_offline(self, session: CloudSession) -> None:
        """A clean shutdown announces offline itself: the broker sends the will only on a cut."""
        if session.lost.done() or self._status_refused:
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
                        reason: str = "") -> asyncio.Future[str | None]:
        return session.publish_status(self.status_topic, self._status_payload(status, reason))

    async def _connect(self) -> CloudSession:
        v5 = self.cloud.mqtt_version == "5"
        # Commands need a persistent session (a stable client id, no clean start) so that the
        # broker keeps the subscription and what arrives while the gateway is away; they are
        # acknowledged by hand, once their result is in the outbox.
        persistent = self.commands is not None and self.commands_persist
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                             clean_session=None if v5 else not persistent,
                             reconnect_on_failure=False, manual_ack=persistent)
        client.max_inflight_messages_set(0)  # our window, not paho's: see the module docstring
        client.connect_timeout = CONNACK_TIMEOUT_S
        self._prepare(client)
        # paho's message ids are 16-bit: leave room for the status messages beside the window.
        session = CloudSession(client, self.outbox, min(self.cloud.max_inflight, 65_000))
        if self.commands is not None:
            self._take_commands(session, self.commands)
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
        self.limits.on_connack(properties if v5 else None)
        receive_max = getattr(properties, "ReceiveMaximum", None) if v5 else None
        if receive_max:  # an MQTT 5 broker says how many QoS 1 messages it takes in flight
            session.window = min(session.window, int(receive_max))
        return session

    def _prepare(self, client: mqtt.Client) -> None:
        """Before each CONNECT: the will (the retained offline status)."""
        client.will_set(self.status_topic, self._status_payload("offline", "connection lost"),
                        qos=1, retain=True)

    def _open_socket(self, client: mqtt.Client) -> None:
        """The blocking part of a connection attempt (files, DNS, TCP, TLS): off the loop."""
        where = f"{self.host}:{self.port}"
        try:
            mqtt_tls.configure(client, self.cloud, use_tls=self.use_tls)
        except (OSError, ValueError) as exc:
            raise Rejected(f"cannot set up TLS or credentials for the cloud broker: {exc}; "
                           "check cloud.ca_file, cert_file, key_file and password_file") from exc
        options: dict[str, Any] = {}
        if self.commands is not None and self.commands_persist and \
                self.cloud.mqtt_version == "5":
            session_expiry = Properties(PacketTypes.CONNECT)
            session_expiry.SessionExpiryInterval = COMMAND_SESSION_EXPIRY_S
            options = {"clean_start": False, "properties": session_expiry}
        try:
            rc = client.connect(self.host, self.port, keepalive=self.cloud.keepalive_s,
                                **options)
        except ssl.SSLCertVerificationError as exc:
            raise Rejected(mqtt_tls.explain_refusal(
                exc, self.host, self.port, "the cloud broker", "cloud.")) from exc
        except ssl.SSLError as exc:
            raise Unreachable(f"TLS handshake with the cloud broker at {where} failed: "
                              f"{exc.reason or exc}") from exc
        except OSError as exc:
            raise Unreachable(f"the cloud broker at {where} is unreachable: "
                              f"{exc.strerror or exc}") from exc
        if rc != mqtt.MQTT_ERR_SUCCESS:
            raise Unreachable(f"the cloud broker at {where} closed the connection during "
                              f"CONNECT ({mqtt.error_string(rc)}){self._hint()}")

    def _take_commands(self, session: CloudSession, inbox: CommandInbox) -> None:
        """Hand each command message to `inbox` (never blocking paho's read); while the inbox
        is full, stop reading the socket (TCP holds the broker back) until it has room."""
        from gateway.command_runner import Incoming

        client = session.client
        level_at = len(self.prefix) + len("/command/")

        def on_message(_client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
            topic = message.topic
            mid, qos = message.mid, message.qos

            def ack() -> None:
                if qos:
                    client.ack(mid, qos)  # on a closed connection: nothing (sent again)

            if not topic.startswith(self.prefix + "/command/") or "/" in topic[level_at:]:
                ack()  # not a command topic of ours (the subscription names only those)
                return
            try:
                device = unsanitise_level(topic[level_at:])
            except (ValueError, UnicodeDecodeError):
                device = topic[level_at:]  # not a level the gateway made: an unknown device
            if not inbox.offer(Incoming(device, bytes(message.payload), ack)):
                session.bridge.pause_reading()

        def on_subscribe(_client: Any, _userdata: Any, _mid: int, reasons: Any,
                         _properties: Any) -> None:
            refused = [str(r) for r in reasons if getattr(r, "is_failure", False)]
            problem = (f"the cloud broker refused the subscription to {self.command_filter} "
                       f"({', '.join(refused)}); commands cannot arrive: check the broker's "
                       "ACL") if refused else None
            if problem and problem != self._subscribe_refused:
                log.error("%s", problem)
            self._subscribe_refused = problem

        client.on_message = on_message
        client.on_subscribe = on_subscribe
        inbox.on_room = session.bridge.resume_reading

    def _hint(self) -> str:
        if self.use_tls and self.cloud.cert_file is None:
            return "; if the broker requires client certificates, set cloud.cert_file and key_file"
        return ""

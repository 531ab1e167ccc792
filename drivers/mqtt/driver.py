"""The MQTT driver: subscribe on a plant broker, decode payloads, acknowledge after persist.

Delivery: QoS 1 on a persistent session (a fixed client id; MQTT 5 `clean_start=False`
with a session expiry, or MQTT 3.1.1 `clean_session=False`) with paho's manual
acknowledgement. A message's PUBACK is sent only from its `Batch.ack`, which the
runtime calls after the outbox commit, so the broker redelivers whatever a crash
interrupted and the deterministic event id drops the duplicate. A rejected message
is acknowledged at once (nothing of it will ever be persisted), so it never holds
up the good ones behind it.

The driver never reconnects by itself: a lost connection ends `read` with
NotConnected and the runtime reconnects with backoff. Event-loop integration and
back-pressure: drivers/mqtt/session.py; the paho client itself: drivers/mqtt/transport.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from drivers.mqtt import transport
from drivers.mqtt.codec import OVERSIZED, Plan, Rejection, decode
from drivers.mqtt.config import MqttDeviceConfig
from drivers.mqtt.session import AckEntry, Incoming, Session, Suback
from gateway import metrics
from gateway.config_base import DeviceConfig
from gateway.driver import Batch, Driver
from gateway.errors import DriverError, NotConnected, WriteFailed
from gateway.frames import Frame, Value

log = logging.getLogger(__name__)

CLOSE_BARRIER_S = 2.0


class RejectLog:
    """Counts every rejection in the metric at once; logs them at most once per interval."""

    def __init__(self, device: str, interval_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self.interval_s = interval_s
        self.totals: Counter[str] = Counter()
        self._clock = clock
        self._since_log: Counter[str] = Counter()
        self._next_log = 0.0

    def record(self, rejections: Sequence[Rejection]) -> None:
        for rejection in rejections:
            metrics.DEVICE_REJECTED.labels(self.device, rejection.reason).inc()
            self.totals[rejection.reason] += 1
            self._since_log[rejection.reason] += 1
        now = self._clock()
        if rejections and now >= self._next_log:
            counts = ", ".join(f"{reason}: {n}" for reason, n in sorted(self._since_log.items()))
            log.warning("device %s: rejected %d message(s) or value(s) (%s); latest: %s",
                        self.device, sum(self._since_log.values()), counts,
                        rejections[-1].detail)
            self._since_log.clear()
            self._next_log = now + self.interval_s


class MqttDriver(Driver):
    """Frames from JSON messages on one topic filter of a plant broker."""

    config_model = MqttDeviceConfig
    config: MqttDeviceConfig

    def __init__(self, config: DeviceConfig) -> None:
        if not isinstance(config, MqttDeviceConfig):
            raise TypeError(f"MqttDriver needs an MqttDeviceConfig, not {type(config).__name__}")
        super().__init__(config)
        # Compiled now, so a config that cannot be decoded fails at `millwright check`.
        self._plan = Plan.from_config(config)
        self.rejects = RejectLog(config.name, config.reject_log_interval_s)
        self._client: mqtt.Client | None = None
        self._session: Session | None = None
        self._had_session = False

    @property
    def client_id(self) -> str:
        return self.config.effective_client_id

    @property
    def inbox_depth(self) -> int:
        """Messages received and not yet read (bounded by `receive_maximum`)."""
        return len(self._session.inbox) if self._session is not None else 0

    @property
    def inbox_high_water(self) -> int:
        """The most messages the inbox has held at once on this connection."""
        return self._session.high_water if self._session is not None else 0

    @property
    def inbox_bytes(self) -> int:
        """Payload bytes received and not yet read (bounded by `inbox_max_bytes`)."""
        return self._session.inbox_bytes if self._session is not None else 0

    @property
    def inbox_bytes_high_water(self) -> int:
        """The most payload bytes the inbox has held at once on this connection."""
        return self._session.bytes_high_water if self._session is not None else 0

    # -- the driver contract ----------------------------------------------------------

    async def connect(self) -> None:
        await self.close()
        cfg = self.config
        try:
            # Reads the password and TLS files: off the loop.
            client = await asyncio.to_thread(transport.new_client, cfg)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            raise DriverError(f"device {self.name}: TLS or credentials for {cfg.url} cannot be "
                              f"set up: {exc}; check ca_file, cert_file, key_file and "
                              "password_file") from exc
        session = Session(client, cfg.receive_maximum, max_bytes=cfg.inbox_max_bytes,
                          max_payload_bytes=cfg.max_payload_bytes,
                          gauge=metrics.DEVICE_INBOX_BYTES.labels(self.name))
        self._client, self._session = client, session
        try:
            await self._open(client, session)
        except Exception:
            await self.close()
            raise

    async def read(self) -> Batch:
        session = self._session
        if session is None:
            raise NotConnected(f"device {self.name} is not connected")
        while True:
            # Unacknowledged QoS 1 messages come again on the next connection, so a lost
            # connection ends reading at once; QoS 0 ones would not, so those are used up.
            if session.lost is not None and (self.config.qos == 1 or not session.inbox):
                raise session.error or NotConnected(session.lost)
            if not session.inbox:
                session.ready.clear()
                await session.ready.wait()
                continue
            batch = self._decode(session, session.take(self.config.batch_max_messages))
            if batch is not None:
                return batch

    async def write(self, values: Mapping[str, Value]) -> dict[str, Value]:
        """Publish one command to the device's `command_topic`; return once the broker has it.

        The payload is JSON, `{"values": {"<point>": <value>, ...}}` (point names as
        configured), published at QoS 1 on the plant broker, not retained. The device's
        own answer is not awaited: the PUBACK means the broker took the command, not that
        the device acted on it, and MQTT gives no way to read a value back, so the result
        has no read-back ({}). New values show up in the device's telemetry as usual.

        The PUBACK is read from the same socket as the telemetry: while the inbox is full
        (back-pressure) it waits with them, so call this from a task other than the one
        that calls `read`.
        """
        cfg = self.config
        session, client = self._session, self._client
        if session is None or client is None:
            raise NotConnected(f"device {self.name} is not connected")
        if session.lost is not None:
            raise NotConnected(session.lost)
        topic = cfg.command_topic
        if topic is None:  # the config refuses writable points without one
            raise WriteFailed(f"device {self.name} has no command_topic")
        unknown = sorted(set(values) - {p.name for p in cfg.points if p.writable})
        if unknown:
            raise WriteFailed(f"device {self.name}: not writable: {', '.join(unknown)}")
        try:
            payload = json.dumps({"values": dict(values)}, separators=(",", ":"),
                                 allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise WriteFailed(f"device {self.name}: the command is not JSON: {exc}") from None
        info = client.publish(topic, payload, qos=1, retain=False)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise NotConnected(f"publishing the command to '{topic}' on {cfg.url} failed: "
                               f"{mqtt.error_string(info.rc)}")
        puback = session.expect_puback(info.mid)  # before any await: the PUBACK is read then
        try:
            async with asyncio.timeout(cfg.command_timeout_s):
                refused = await asyncio.shield(puback)
        except TimeoutError:
            session.pubacks.pop(info.mid, None)
            raise NotConnected(f"no PUBACK for the command on '{topic}' from {cfg.url} within "
                               f"{cfg.command_timeout_s:g} s; it may still be delivered") from None
        except ConnectionError as exc:
            raise NotConnected(f"{exc}; the command may or may not have reached the "
                               "broker") from None
        if refused is not None:
            raise WriteFailed(f"the plant broker {cfg.url} refused the command on '{topic}': "
                              f"{refused}; check the broker's ACL for client id "
                              f"'{self.client_id}'")
        return {}

    async def close(self) -> None:
        client, session = self._client, self._session
        self._client = self._session = None
        if client is None or session is None:
            return
        session.release()
        if session.lost is None and client.is_connected():
            await self._flush_acks(client, session)
        session.stop()
        # DISCONNECT keeps the session (and its unacknowledged messages) on the broker.
        await session.bridge.close(CLOSE_BARRIER_S)

    # -- internals ----------------------------------------------------------------------

    async def _open(self, client: mqtt.Client, session: Session) -> None:
        cfg = self.config
        try:
            await session.bridge.open(lambda: transport.send_connect(client, cfg))
        except (OSError, ValueError) as exc:  # ssl.SSLError and timeouts are OSErrors
            raise NotConnected(f"cannot reach the plant broker {cfg.url}: {exc}") from exc
        try:
            connack = await asyncio.wait_for(asyncio.shield(session.connack),
                                             cfg.connect_timeout_s)
        except TimeoutError:
            raise NotConnected(f"no CONNACK from the plant broker {cfg.url} within "
                               f"{cfg.connect_timeout_s} s") from None
        if connack is None:
            raise NotConnected(session.lost or "connection lost before the CONNACK")
        if connack.failed:
            raise NotConnected(f"the plant broker {cfg.url} refused client id "
                               f"'{self.client_id}': {connack.reason}; check username, "
                               "password_file and the broker's client-id rules")
        if self._had_session and not connack.session_present and cfg.qos == 1:
            log.warning("device %s: the broker had no session for client id '%s': messages "
                        "published while the gateway was away were not kept (session expired, "
                        "or the broker restarted without persistence)", self.name, self.client_id)
        self._had_session = True
        result = transport.send_subscribe(client, cfg)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise NotConnected(f"subscribing to '{cfg.topic}' on {cfg.url} failed: "
                               f"{mqtt.error_string(result)}")
        # The SUBACK is checked when it comes, not awaited here: a resumed session's
        # messages arrive before it, and it can only be read once they are being read.
        session.suback.add_done_callback(functools.partial(self._check_suback, session))
        self._arm_suback_timer(session)
        log.info("device %s: connected to %s as '%s' (%s session), subscribing to '%s'",
                 self.name, cfg.url, self.client_id,
                 "resumed" if connack.session_present else "new", cfg.topic)

    def _check_suback(self, session: Session, future: asyncio.Future[list[Suback] | None]) -> None:
        codes = future.result()
        if not codes:
            return  # the connection was lost first; that is reported already
        cfg = self.config
        if codes[0].failed:
            session.fail(DriverError(
                f"the plant broker {cfg.url} refused the subscription to '{cfg.topic}': "
                f"{codes[0].reason}; check the broker's ACL for this user and client id"))
        elif codes[0].granted_qos < cfg.qos:
            log.warning("device %s: the broker granted QoS %d for '%s', not %d: messages "
                        "can be lost in a crash", self.name, codes[0].granted_qos, cfg.topic,
                        cfg.qos)

    def _arm_suback_timer(self, session: Session) -> None:
        session.suback_timer = session.loop.call_later(
            self.config.connect_timeout_s, self._suback_overdue, session)

    def _suback_overdue(self, session: Session) -> None:
        if session.suback.done() or session.lost is not None:
            return
        if session.full:
            # paho's thread waits for room: the SUBACK is behind messages nobody read yet.
            self._arm_suback_timer(session)
            return
        session.fail(NotConnected(f"no SUBACK from the plant broker {self.config.url} within "
                                  f"{self.config.connect_timeout_s} s"))

    async def _flush_acks(self, client: mqtt.Client, session: Session) -> None:
        """Make sure the broker has taken our PUBACKs before the socket closes.

        Closing a socket with unread data in it makes the kernel reset the connection,
        and the broker then loses the PUBACKs it had not read yet (seen here: they came
        back as redeliveries). A broker handles a client's packets in order, so once an
        UNSUBACK answers an UNSUBSCRIBE sent after them, every PUBACK has been taken.
        """
        if transport.send_barrier(client, self.config) == MQTTErrorCode.MQTT_ERR_SUCCESS:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(session.unsuback), CLOSE_BARRIER_S)

    def _decode(self, session: Session, messages: list[Incoming]) -> Batch | None:
        """A frame per message; rejected ones are counted and acknowledged at once."""
        frames: list[Frame] = []
        pending: list[AckEntry] = []
        settled: list[AckEntry] = []
        for message in messages:
            if message.oversize:
                topic = (message.topic or "?")[:200]
                self.rejects.record([Rejection(OVERSIZED, (
                    f"{message.oversize} bytes on '{topic}' exceed max_payload_bytes = "
                    f"{self.config.max_payload_bytes}; refused on arrival"))])
                if message.entry is not None:
                    settled.append(message.entry)
                continue
            decoded = decode(self._plan, message.topic, message.payload, message.receive_time)
            if decoded.rejections:
                self.rejects.record(decoded.rejections)
            if message.entry is not None:
                (pending if decoded.frame is not None else settled).append(message.entry)
            if decoded.frame is not None:
                frames.append(decoded.frame)
        if settled:
            session.window.settle(settled)
        if not frames:
            return None
        if not pending:
            return Batch(frames)

        def ack() -> None:
            session.window.settle(pending)

        return Batch(frames, ack=ack)

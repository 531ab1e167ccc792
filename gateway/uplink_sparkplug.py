"""The Sparkplug B uplink: the gateway as a Sparkplug edge node on the cloud broker.

The CloudEvents uplink (gateway/uplink.py) with another payload: the same paho bridge,
outbox, QoS 1 window, PUBACK deadline, packet limits, refusals, readiness and reconnect
backoff; only what a connection carries differs (`_prepare`, `_deliver`, `_say_offline`).

- **Before each CONNECT** the node session takes its next bdSeq (persisted first,
  gateway/sparkplug/node.py), and the NDEATH with that bdSeq is the will (QoS 1, not
  retained); clean session.
- **After CONNACK** it subscribes to its NCMD and DCMD topics (and the primary host's
  STATE), publishes the NBIRTH (bdSeq, Node Control/Rebirth, the outbox's depth, oldest age
  and drops) and a DBIRTH per known device, then drains the outbox, each stored event
  translated as it is sent (gateway/uplink_sparkplug_drain.py).
- **QoS 1, not the spec's QoS 0** for data: a row leaves the outbox only on the PUBACK of
  the message carrying it, the same no-loss guarantee as CloudEvents. A host subscribed at
  QoS 0 still receives them at QoS 0.
- **Store and forward** with `primary_host_id`: nothing, births included, is published
  until the host's STATE says online; rows already in the outbox then (stored while the
  host or the broker was away) go out with every metric `is_historical`, after the births
  and before live data. When the host goes offline the node publishes its NDEATH,
  disconnects (the spec's "terminate the session"), reconnects and waits again.
- **Commands**: an NCMD `Node Control/Rebirth = true` brings a fresh NBIRTH and every
  DBIRTH (seq from 0, bdSeq kept). With `[commands] enabled = true`, a DCMD is a write that
  takes the command path of CloudEvents commands (gateway/sparkplug/commands.py: same
  checks, ledger and one result, announced as the node's `Commands/` metrics); without,
  it is logged and ignored. The session stays clean, as the spec requires of an edge node:
  a DCMD sent while the node is away is not delivered (the host saw its NDEATH).
- **A clean stop** publishes the NDEATH itself before DISCONNECT (the broker sends the will
  only when the connection is cut).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt

from gateway.command_runner import Incoming
from gateway.sparkplug import names
from gateway.sparkplug.commands import dcmd_command
from gateway.sparkplug.config import asset_devices
from gateway.sparkplug.node import BdSeqFile, NodeSession
from gateway.sparkplug.payloads import Health
from gateway.sparkplug.translate import Translator
from gateway.uplink import OFFLINE_ACK_TIMEOUT_S, Uplink
from gateway.uplink_session import CloudSession
from gateway.uplink_sparkplug_drain import SparkplugDrain, SparkplugPacker

if TYPE_CHECKING:
    import random

    from gateway.command_runner import CommandInbox
    from gateway.config import CloudSection, Config
    from gateway.driver import Driver
    from gateway.frames import PointSpec
    from gateway.store import Outbox

log = logging.getLogger(__name__)

HOST_QUIET_S = 2.0  # waiting this long for the primary host's STATE is logged


class SparkplugUplink(Uplink):
    """Publishes the outbox as a Sparkplug B edge node until cancelled (module docstring)."""

    commands_persist = False  # Sparkplug 3.0: an edge node's MQTT session is clean

    def __init__(self, cloud: CloudSection, outbox: Outbox, *, gateway_id: str, data_dir: Path,
                 devices: Mapping[str, Sequence[PointSpec]] | None = None,
                 assets: Mapping[str, Iterable[str]] | None = None,
                 commands: bool = False, rng: random.Random | None = None) -> None:
        super().__init__(cloud, outbox, prefix=names.NAMESPACE, gateway_id=gateway_id, rng=rng)
        section = cloud.sparkplug
        if section is None:
            raise ValueError("cloud.format = \"sparkplug_b\" needs [cloud.sparkplug]")
        self.group_id = section.group_id
        self.edge_node_id = section.node_id(gateway_id)
        self.host_id = section.primary_host_id
        devices = dict(devices or {})
        self.node = NodeSession(BdSeqFile.in_dir(data_dir))
        self.translator = Translator(
            self.node, self.group_id, self.edge_node_id,
            asset_devices=asset_devices(assets or {}, devices), health=self._health,
            commands=commands)
        for device, points in devices.items():
            self.translator.remember_birth(device, points)
        self.spb_packer = SparkplugPacker(self.translator, section.compression,
                                          v5=cloud.mqtt_version == "5")
        self.primary = names.HostWatch()
        self.ncmd_topic = names.node_topic(self.group_id, "NCMD", self.edge_node_id)
        self.dcmd_prefix = f"{names.NAMESPACE}/{self.group_id}/DCMD/{self.edge_node_id}/"
        self.state_topic = None if self.host_id is None else names.state_topic(self.host_id)
        self._session_now: CloudSession | None = None
        self._born = False  # this connection's births were sent
        self._waiting_for_host = False
        self._host_online: asyncio.Future[None] | None = None
        self._host_offline: asyncio.Future[None] | None = None
        self._logged: set[str] = set()

    @classmethod
    def for_config(cls, config: Config, outbox: Outbox,
                   drivers: Sequence[Driver]) -> SparkplugUplink:
        """The edge node of `config`, told its drivers' points (for DBIRTHs from the start)."""
        return cls(config.cloud, outbox, gateway_id=config.gateway.id,
                   data_dir=config.gateway.data_dir,
                   devices={d.name: d.describe(d.name) for d in drivers},
                   assets={a.name: list(a.inputs.values()) for a in config.assets},
                   commands=config.commands.enabled)

    @property
    def problem(self) -> str | None:
        problem = super().problem
        if problem is None and self._waiting_for_host:
            return (f"connected, waiting for the primary host '{self.host_id}' to be online "
                    f"({self.state_topic}); data waits in the outbox")
        return problem

    def _health(self) -> Health:
        stats = self.outbox.stats()
        return Health(stats.depth, stats.oldest_age_s or 0.0, sum(stats.dropped.values()),
                      sum(stats.dropped_readings.values()))

    # -- a connection ----------------------------------------------------------------------

    async def _connect(self) -> CloudSession:
        await asyncio.to_thread(self.node.begin)  # bdSeq on disk before the CONNECT uses it
        return await super()._connect()

    def _prepare(self, client: mqtt.Client) -> None:
        death = self.translator.death()
        client.will_set(death.topic, death.payload, qos=1, retain=False)
        client.on_message = self._on_message
        loop = asyncio.get_running_loop()
        self._host_online, self._host_offline = loop.create_future(), loop.create_future()
        self._born = False

    async def _deliver(self, session: CloudSession) -> None:
        assert self._host_online is not None and self._host_offline is not None
        self._session_now = session
        try:
            topics = [(self.ncmd_topic, 1), (self.dcmd_prefix + "+", 1)]
            if self.state_topic is not None:
                topics.append((self.state_topic, 1))
            session.client.subscribe(topics)
            historical_to = 0
            if self.state_topic is not None:
                if not await self._wait_for_host(session):
                    return
                historical_to = self.outbox.last_position
            self._publish_births(session)
            drain = SparkplugDrain(self.cloud, self.outbox, self.spb_packer,
                                   self.limits, self.refusals, session,
                                   on_accepted=self._accepted, probe=self._probe,
                                   historical_to=historical_to)
            await self._drain_until_done(session, drain, self._host_offline)
            if self._host_offline.done() and not session.lost.done():
                log.warning("sparkplug: the primary host %s went offline: NDEATH and "
                            "disconnect, as the spec requires; data waits in the outbox "
                            "until it is back", self.host_id)
                await self._say_offline(session)
        finally:
            self._session_now = None
            self._waiting_for_host = False

    async def _wait_for_host(self, session: CloudSession) -> bool:
        """True once the primary host is online (births may go); False if the connection
        was lost first."""
        assert self._host_online is not None
        if not self._host_online.done():
            self._waiting_for_host = True
            waits = (self._host_online, session.lost)
            # The host's retained STATE normally answers the subscription at once: only a
            # longer wait is worth a line.
            await asyncio.wait(waits, timeout=HOST_QUIET_S, return_when=asyncio.FIRST_COMPLETED)
            if not any(w.done() for w in waits):
                self._log_once("host-wait", logging.WARNING, "sparkplug: waiting for the "
                               f"primary host {self.host_id} to be online ({self.state_topic})"
                               " before the births; data waits in the outbox")
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            self._waiting_for_host = False
        if not self._host_online.done():
            self._lost(session)
            return False
        if "host-wait" in self._logged:
            self._logged.discard("host-wait")
            log.info("sparkplug: the primary host %s is online: births, then %d stored events "
                     "as historical, then live data", self.host_id, self.outbox.stats().depth)
        return True

    def _publish_births(self, session: CloudSession) -> None:
        for message in self.spb_packer.births():
            session.publish(message)
        self._born = True

    async def _say_offline(self, session: CloudSession) -> None:
        """The NDEATH, published before DISCONNECT (an intentional end of the session)."""
        if session.lost.done():
            return
        death = self.translator.death()
        try:
            await asyncio.wait_for(session.publish_status(death.topic, death.payload,
                                                          retain=False), OFFLINE_ACK_TIMEOUT_S)
        except TimeoutError:
            log.warning("the cloud broker did not confirm the NDEATH within %.1f s",
                        OFFLINE_ACK_TIMEOUT_S)

    # -- what the broker delivers to the node (on the loop, inside paho's read) -----------

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.state_topic:
            self._on_state(bytes(msg.payload))
        elif msg.topic == self.ncmd_topic:
            if self.translator.is_rebirth_request(bytes(msg.payload)):
                # After this read: never between a translated row and its publishing.
                asyncio.get_running_loop().call_soon(self._rebirth)
            else:
                self._log_once("ncmd", logging.INFO, "sparkplug: an NCMD other than Node "
                               "Control/Rebirth was ignored (the node has no other commands)")
        elif msg.topic.startswith(self.dcmd_prefix):
            self._on_dcmd(msg.topic[len(self.dcmd_prefix):], bytes(msg.payload))

    def _take_commands(self, session: CloudSession, inbox: CommandInbox) -> None:
        # DCMDs arrive through `_on_message` (paho acknowledges them: the session is clean,
        # so the broker would not send an unacknowledged one again anyway).
        inbox.on_room = session.bridge.resume_reading

    def _on_dcmd(self, device: str, payload: bytes) -> None:
        inbox, session = self.commands, self._session_now
        if inbox is None:
            self._log_once(f"dcmd:{device}", logging.WARNING,
                           f"sparkplug: a DCMD to device {device!r} was ignored: commands are "
                           "off (set [commands] enabled = true; docs/commands.md)")
            return
        defs = self.translator.session.devices.get(device)  # its aliases, as born
        parse = functools.partial(dcmd_command, defs=defs)
        if not inbox.offer(Incoming(device, payload, _acknowledged, parse)) and \
                session is not None:
            session.bridge.pause_reading()

    def _on_state(self, payload: bytes) -> None:
        try:
            state = names.parse_state(payload)
        except ValueError as exc:
            self._log_once("state", logging.WARNING, f"sparkplug: {self.state_topic}: {exc}")
            return
        self.primary.observe(state)
        if self.primary.online:
            _settle(self._host_online)
        elif self._born:
            _settle(self._host_offline)

    def _rebirth(self) -> None:
        session = self._session_now
        if session is None or not self._born or session.lost.done():
            return  # not born yet: the births come anyway
        log.info("sparkplug: the host asked for a rebirth: NBIRTH and every DBIRTH again")
        self._publish_births(session)

    def _log_once(self, key: str, level: int, text: str) -> None:
        if key not in self._logged:
            self._logged.add(key)
            log.log(level, "%s", text)


def _acknowledged() -> None:
    """A DCMD needs no acknowledgement of ours: paho sent it on receipt."""


def _settle(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


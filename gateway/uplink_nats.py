"""The NATS JetStream uplink: the outbox into a (replicated) stream, each event stored once.

The runtime's surface is the MQTT uplink's (`run`, `connected`, `problem`, `flush`);
gateway/uplinks.py picks this one for a nats:// or tls:// `cloud.url`. Per connection:

1. **Connect** to a server of `cloud.url`, the one after the last used first, so a lost
   node is skipped (gateway/nats_link.py).
2. **The stream**: it must exist, take every subject the gateway publishes and keep
   message ids at least `duplicate_window_s`; with `create_stream = true` a missing one
   is created. Otherwise one clear line is logged, the uplink is not ready (`problem`,
   /readyz) and the check is repeated every `refused_retry_s`; nothing crashes.
3. **Status**: `online` on `{prefix}.status`, again every `heartbeat_s` (NATS has no will:
   a consumer infers a crashed gateway from missing heartbeats), `offline` on a clean stop.
4. **Drain** (gateway/uplink_nats_session.py) until the connection is lost, PubAcks stop
   for `cloud.ack_timeout_s`, or the stream refuses; then the next attempt comes after
   `reconnect_min_s`..`reconnect_max_s` (jittered), or `refused_retry_s` after a refusal.

Every event carries `Nats-Msg-Id` = its id, and rows leave the outbox only on a PubAck,
so what a lost connection or a kill -9 left unanswered is sent again and the stream
drops the copy: each event is stored once, as long as the resend comes within the
stream's duplicate window (docs/jetstream.md says what happens past it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from gateway.events import KINDS, rfc3339
from gateway.nats_config import parse_nats_urls
from gateway.nats_link import LinkLost, LinkSettings, NatsLink, NatsRejected, NatsUnreachable
from gateway.subjects import SubjectTemplate, covered, kind_token, prefix_tokens
from gateway.uplink import OFFLINE_ACK_TIMEOUT_S
from gateway.uplink_loop import SessionLoop
from gateway.uplink_nats_session import NatsSession

if TYPE_CHECKING:
    import random

    from gateway.config import CloudSection
    from gateway.store import Outbox

log = logging.getLogger(__name__)

# The in-flight window when cloud.max_inflight is not set: one event per message makes
# MQTT's default of 64 too small to keep JetStream busy (docs/benchmarks.md).
DEFAULT_WINDOW = 256


class NatsUplink(SessionLoop):
    """Publishes the outbox into a JetStream stream until cancelled (module docstring)."""

    logger = __name__
    rejected = (NatsRejected,)
    unreachable = (NatsUnreachable, LinkLost)

    def __init__(self, cloud: CloudSection, outbox: Outbox, *, prefix: str, gateway_id: str,
                 rng: random.Random | None = None) -> None:
        if cloud.nats is None:
            raise ValueError("a NATS cloud.url needs [cloud.nats]")
        super().__init__(cloud, outbox, rng)
        self.section = cloud.nats
        self.gateway_id = gateway_id
        self.subjects = SubjectTemplate(self.section.subject, prefix_tokens(prefix))
        self.status_subject = self.subjects.status_subject()
        servers = parse_nats_urls(cloud.url)
        self.settings = LinkSettings(
            servers=servers, name=cloud.client_id or f"millwright-{gateway_id}",
            tls=cloud if servers[0].scheme == "tls" else None,
            ping_interval_s=cloud.keepalive_s, creds_file=self.section.creds_file,
            nkey_seed_file=self.section.nkey_seed_file, user=self.section.user,
            password_file=self.section.password_file)
        self.window = (cloud.max_inflight if "max_inflight" in cloud.model_fields_set
                       else DEFAULT_WINDOW)
        self._next_server = 0
        self.duplicates = 0  # PubAcks with duplicate: true, since start
        self._current: NatsSession | None = None  # the connection now (the page's figures)

    @property
    def problem(self) -> str | None:
        """Why the uplink is not delivering (None: it is), for /readyz and `millwright status`."""
        if self._stalled:
            return self._stalled
        if not self._connected:
            return self._down or "not connected to the NATS cluster yet"
        return None

    async def _session(self) -> None:
        session = NatsSession(self.outbox, self.subjects, self.window)
        link = await NatsLink.open(self.settings, self._next_server, session.on_answer)
        self._current = session
        servers = list(self.settings.servers)
        # The next attempt starts after this server: if it went down, the others go first.
        self._next_server = (servers.index(link.server) + 1) % len(servers)
        try:
            await self._check_stream(link)
            session.attach(link)
            self._set_connected(True)
            self._down = self.retry_delay_s = None
            where = f"{link.server.host}:{link.server.port}"
            if self._stalled:  # still the same trouble: said once already
                log.debug("reconnected to NATS at %s", where)
            else:
                log.info("connected to NATS at %s: publishing into the stream %s",
                         where, self.section.stream)
                self._problem = None
            session.first_ack.add_done_callback(lambda _: self._acks_flow())
            await self._deliver(link, session)
        except asyncio.CancelledError:
            await self._say_offline(link, session)
            raise
        finally:
            self._set_connected(False)
            _ = self.last_ack_at  # kept past the session
            self._current = None
            self.duplicates += session.duplicates
            if session.duplicates:
                log.info("%d events were in the stream already (sent again after an answer "
                         "was lost, or a restart): not stored twice", session.duplicates)
            await link.close()

    async def _deliver(self, link: NatsLink, session: NatsSession) -> None:
        drained = asyncio.create_task(session.run(), name="uplink-nats-drain")
        beating = asyncio.create_task(self._heartbeats(session), name="uplink-nats-heartbeat")
        stall = asyncio.create_task(session.stalled(self.cloud.ack_timeout_s),
                                    name="uplink-nats-ack-deadline")
        tasks = (drained, beating, stall)
        ends: list[asyncio.Future[Any]] = [*tasks, link.lost, session.trouble]
        try:
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in (drained, beating):
            failure = None if task.cancelled() else task.exception()
            if failure is not None and not link.lost.done():
                raise failure  # e.g. the outbox failed, or the link closed under a publish
        if session.trouble.done():
            raise session.trouble.result()
        if not stall.cancelled():
            where = f"{link.server.host}:{link.server.port}"
            self._ack_timeout(f"the NATS server at {where}", where, stall.result(),
                              session.in_flight)
        elif link.lost.done():
            self._down = f"{link.lost.result()}; reconnecting"
            log.warning("%s; %d events in flight will be sent again", link.lost.result(),
                        session.in_flight)
            if not self._stalled:
                self._problem = None

    async def _check_stream(self, link: NatsLink) -> None:
        """The stream exists (or is created), takes our subjects and keeps ids long enough;
        NatsRejected saying what to fix otherwise."""
        name, section = self.section.stream, self.section
        wanted = [self.subjects.pattern(kind_token(k)) for k in KINDS] + [self.status_subject]
        facts = await link.stream(name)
        if facts is None and section.create_stream:
            subjects = [self.subjects.pattern(), self.status_subject]
            await link.create_stream(name, subjects, section.duplicate_window_s,
                                     section.replicas)
            log.info("created the JetStream stream %s (subjects %s, duplicate window %g s, "
                     "%d replicas)", name, subjects, section.duplicate_window_s,
                     section.replicas)
            return
        if facts is None:
            raise NatsRejected(
                f"the JetStream stream {name!r} does not exist, so nothing is published; "
                f"create it with the subjects {self.subjects.prefix}.> (docs/jetstream.md), "
                "or set cloud.nats.create_stream = true; checking again every "
                f"{self.cloud.refused_retry_s:g} s")
        missing = [subject for subject in wanted if not covered(facts.subjects, subject)]
        if missing:
            raise NatsRejected(
                f"the JetStream stream {name!r} takes {facts.subjects} but not {missing[0]}"
                f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}, so "
                f"nothing is published; add {self.subjects.prefix}.> to its subjects; "
                f"checking again every {self.cloud.refused_retry_s:g} s")
        if facts.duplicate_window_s < section.duplicate_window_s:
            raise NatsRejected(
                f"the JetStream stream {name!r} keeps message ids for "
                f"{facts.duplicate_window_s:g} s, less than cloud.nats.duplicate_window_s = "
                f"{section.duplicate_window_s:g}: a resend after that would be stored twice; "
                f"raise the stream's duplicate_window to {section.duplicate_window_s:g} s, "
                "or lower duplicate_window_s; nothing is published until then")

    async def _heartbeats(self, session: NatsSession) -> None:
        """`online` now and every heartbeat_s; a refused status is logged once."""
        logged = False
        while True:
            answer = await session.publish_status(self.status_subject,
                                                  self._status_payload("online"))
            await asyncio.sleep(self.section.heartbeat_s)  # the beat itself, not a sync
            if answer.done() and answer.result().refused and not logged:
                logged = True
                log.error("the stream refuses the status subject %s (%s)", self.status_subject,
                          answer.result().refused)

    async def _say_offline(self, link: NatsLink, session: NatsSession) -> None:
        """A clean stop says offline (a crash cannot: consumers watch the heartbeats)."""
        if link.lost.done() or session.link is None:
            return
        try:
            answer = await session.publish_status(
                self.status_subject, self._status_payload("offline", "shutdown"))
            await asyncio.wait_for(answer, OFFLINE_ACK_TIMEOUT_S)
        except (TimeoutError, LinkLost):
            log.warning("the NATS cluster did not confirm the offline status within %.1f s",
                        OFFLINE_ACK_TIMEOUT_S)

    def _status_payload(self, status: str, reason: str = "") -> bytes:
        body: dict[str, Any] = {"status": status, "gateway": self.gateway_id,
                                "time": rfc3339(time.time())}
        if status == "online":
            body["heartbeat_s"] = self.section.heartbeat_s
        if reason:
            body["reason"] = reason
        return json.dumps(body, separators=(",", ":")).encode()

    def _acks_flow(self) -> None:
        if self._stalled is not None:
            log.info("the NATS cluster acknowledges publishes again")
            self._stalled = None

"""The uplink's drain: outbox rows to a session's messages, under the broker's limits and refusals.

`Drain` runs for one connection: it fetches rows, lets a short batch linger, packs
them under the packet limit (gateway/uplink_limits.py), drops an event too large to
ever fit as `too_large`, and publishes within the in-flight window. After a connection
the broker closed with messages unanswered and no reason given, the first message goes
alone (`probe`): a broker that closes after refusing one (Mosquitto 2.0) would
otherwise be written to after closing, and the reset that follows discards its answer.

`Refusals` outlives connections. When an MQTT 5 broker refuses a message (PUBACK
reason code >= 0x80, e.g. 0x87 Not authorized: an ACL), its topic is held: its
messages are not sent again (Mosquitto 2.0 even closes the connection after a
refusal). Once another message is accepted on a connection, the broker is working
and only that topic is refused: the held rows are dropped as `refused` (counted, and
announced as data_dropped), and later messages to the topic are dropped unsent for
`refused_retry_s`, after which one is tried again. When every message was refused
(nothing accepted on the connection by the time all was sent), the credentials or
the ACL are wrong: nothing is dropped, the uplink says why it is not ready, waits
long, and starts over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gateway import metrics
from gateway.uplink_limits import PacketLimits
from gateway.uplink_pack import Packer
from gateway.uplink_session import CloudSession, Message

if TYPE_CHECKING:
    from gateway.config import CloudSection
    from gateway.store import Outbox, OutboxRow

log = logging.getLogger(__name__)

FETCH_MAX_ROWS = 10_000
FETCH_MIN_ROWS = 2_000
MAX_LOGGED_TOPICS = 1_000


class Refusals:
    """The topics an MQTT 5 broker refuses, kept across connections (see the module docstring)."""

    def __init__(self, outbox: Outbox, retry_s: float) -> None:
        self.outbox = outbox
        self.retry_s = retry_s
        self.held: dict[str, set[int]] = {}  # topic -> positions, the verdict pending
        self.reasons: dict[str, str] = {}
        self._dropping: dict[str, float] = {}  # topic -> time.monotonic() of the next probe
        self._logged: set[str] = set()
        self.passing = False  # a message was accepted on the current connection

    def new_connection(self) -> None:
        self.passing = False

    def admit(self, message: Message) -> bool:
        """True: send `message`. False: its topic is refused, and its rows are held or dropped."""
        topic = message.topic
        held = self.held.get(topic)
        if held is not None:
            held.update(message.positions)
            return False
        probe_at = self._dropping.get(topic)
        if probe_at is None:
            return True
        if time.monotonic() >= probe_at:
            del self._dropping[topic]  # the ACL may have changed: this one goes as a probe
            return True
        self.outbox.drop(message.positions, "refused")
        return False

    def refused(self, message: Message, reason: str) -> None:
        self.held.setdefault(message.topic, set()).update(message.positions)
        self.reasons[message.topic] = reason
        if self.passing:
            self._drop_held()

    def accepted(self) -> None:
        self.passing = True
        if self.held:
            self._drop_held()

    def all_refused(self) -> str | None:
        """Why the broker seems to refuse everything, or None."""
        if not self.held or self.passing:
            return None
        topics = sorted(self.held)
        return (f"the cloud broker refuses every publish ({len(topics)} topics, e.g. "
                f"{topics[0]}: {self.reasons[topics[0]]}) and accepted none; check "
                "cloud.username, cloud.password_file and the broker's ACL (nothing is "
                "dropped; retrying only slowly)")

    def forget(self) -> None:
        """After the verdict "everything refused": drop nothing, try every topic again later."""
        self.held.clear()
        self.reasons.clear()

    def _drop_held(self) -> None:
        for topic, positions in self.held.items():
            self.outbox.drop(positions, "refused")
            self._dropping[topic] = time.monotonic() + self.retry_s
            if topic not in self._logged and len(self._logged) < MAX_LOGGED_TOPICS:
                self._logged.add(topic)
                log.warning("the cloud broker refuses publishes to %s (%s) while it accepts "
                            "others: their events are dropped as refused (announced as "
                            "data_dropped); another is tried every %.0f s", topic,
                            self.reasons.get(topic, "refused"), self.retry_s,
                            extra={"topic": topic, "reason": self.reasons.get(topic),
                                   "dropped_events": len(positions)})
        self.held.clear()


class Drain:
    """Publishes every unacknowledged row on one connection, then each new one."""

    def __init__(self, cloud: CloudSection, outbox: Outbox, packer: Packer,
                 limits: PacketLimits, refusals: Refusals, session: CloudSession,
                 on_accepted: Callable[[], None], *, probe: bool = False) -> None:
        self.cloud = cloud
        self.outbox = outbox
        self.packer = packer
        self.limits = limits
        self.refusals = refusals
        self.session = session
        self._on_accepted = on_accepted
        self.caught_up = False
        self.probing = probe  # one message alone until it is answered
        loop = asyncio.get_running_loop()
        self.refused_all: asyncio.Future[str] = loop.create_future()
        self._linger_head = (0, 0.0)  # (position, time.monotonic() it was first seen)
        session.on_answers = self._answers
        refusals.new_connection()

    def _answers(self, accepted: list[Message], refused: list[tuple[Message, str]]) -> None:
        self.probing = False
        for message in accepted:
            self.limits.on_acked(message)
        if accepted:
            self.refusals.accepted()
            self._on_accepted()
        for message, reason in refused:
            self.refusals.refused(message, reason)
        self._check_all_refused()

    def _check_all_refused(self) -> None:
        if self.caught_up and self.session.in_flight == 0 and not self.refused_all.done():
            verdict = self.refusals.all_refused()
            if verdict is not None:
                self.refused_all.set_result(verdict)

    async def _linger(self, rows: Sequence[OutboxRow]) -> bool:
        """With `cloud.linger_s`, a batch short of `batch_max_events` waits (at most that
        long after its first row was committed, and never longer than linger_s on the
        monotonic clock, whatever the wall clock does) for more rows to share its message:
        fewer, fuller messages, which compress far better, for a little latency. True when
        rows came meanwhile."""
        linger_s = self.cloud.linger_s
        if linger_s <= 0 or len(rows) >= self.cloud.batch_max_events:
            return False
        now = time.monotonic()
        if self._linger_head[0] != rows[0].pos:
            self._linger_head = (rows[0].pos, now)
        age = max(0.0, time.time() - rows[0].created)  # a clock set back makes it negative
        wait = min(linger_s - age, self._linger_head[1] + linger_s - now)
        if wait <= 0:
            return False
        try:
            await asyncio.wait_for(self.outbox.wait_new(rows[-1].pos), wait)
        except TimeoutError:
            return False
        return True

    def _pack(self, rows: Sequence[OutboxRow]) -> list[Message]:
        messages, too_large = self.packer.pack_within(
            rows, max_events=self.limits.max_events, max_packet=self.limits.max_bytes)
        if too_large:
            log.warning("%d events are each larger than the cloud broker's %d-byte packet "
                        "limit: dropped as too_large (announced as data_dropped)",
                        len(too_large), self.limits.max_bytes,
                        extra={"dropped_events": len(too_large),
                               "max_packet_bytes": self.limits.max_bytes})
            self.outbox.drop(too_large, "too_large")
        return [m for m in messages if self.refusals.admit(m)]

    async def run(self) -> None:
        """Publish every row from the start, then each new one, within the in-flight window."""
        session = self.session
        # Each fetch is a hop to the reader thread: fetch enough to keep the window busy.
        batch_max = self.cloud.batch_max_events
        limit = max(batch_max, min(max(session.window * batch_max, FETCH_MIN_ROWS),
                                   FETCH_MAX_ROWS))
        last = 0
        ready: deque[Message] = deque()
        while True:
            if not ready:
                rows = await self.outbox.fetch(last, limit)
                if not rows:
                    self.caught_up = True
                    self._check_all_refused()
                    await self.outbox.wait_new(last)
                    continue
                self.caught_up = False
                if await self._linger(rows):
                    continue  # more came: fetch again, from the same place
                last = rows[-1].pos
                ready.extend(self._pack(rows))
            published = 0
            window = 1 if self.probing else session.window
            while ready and session.in_flight < window:
                message = ready.popleft()
                session.publish(message)
                published += len(message.positions)
            metrics.UPLINK_PUBLISHED.inc(published)
            if ready:
                await session.wait_window(1 if self.probing else None)

"""One NATS connection's drain: outbox rows as JetStream publishes, within a window, until acked.

Each row is one message (a frame is one event, one message, as with the MQTT uplink's
`batch_max_events = 1`) to its subject, with `Nats-Msg-Id` = the event's id; at most
`window` are unanswered at once. A PubAck, `duplicate` or not, acknowledges the row in
the outbox (every PubAck read in one wake-up in one go). A message larger than the
server's `max_payload` or the stream's `max_msg_size` can never be stored: it is dropped
as `too_large`, counted and announced. Anything else the stream says ends the session
through `trouble` with nothing dropped: no responders (no stream takes the subject, or
the cluster has no leader for it) is worth a quick retry, an error (the stream is full,
say) a slow one. `stalled` tells when PubAcks stop coming, as the MQTT session does.

The session starts from the outbox's first row every time: what a lost connection left
unanswered goes again with the same ids, and the stream drops what it already holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from gateway import metrics
from gateway.nats_link import Answer, NatsLink, NatsRejected, NatsUnreachable, TooLarge
from gateway.subjects import SubjectTemplate, kind_token

if TYPE_CHECKING:
    from gateway.store import Outbox, OutboxRow

log = logging.getLogger(__name__)

FETCH_ROWS = 5_000  # one hop to the reader thread per this many rows


class NatsSession:
    """The window of one connection; `attach` it to the link whose answers it reads."""

    def __init__(self, outbox: Outbox, subjects: SubjectTemplate, window: int) -> None:
        self.outbox = outbox
        self.subjects = subjects
        self.window = window
        self.link: NatsLink | None = None
        loop = asyncio.get_running_loop()
        self.first_ack: asyncio.Future[None] = loop.create_future()
        self.trouble: asyncio.Future[Exception] = loop.create_future()
        self.duplicates = 0  # PubAcks that said the stream held the event already
        self.last_ack_at: float | None = None  # wall time of the last PubAck for an event
        self._inflight: dict[int, tuple[int, float]] = {}  # token -> (position, sent)
        self._status: dict[int, asyncio.Future[Answer]] = {}
        self._token = 0
        self._acked: list[int] = []
        self._room = asyncio.Event()
        self._too_large_logged = False

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def attach(self, link: NatsLink) -> None:
        self.link = link

    def _next_token(self) -> int:
        self._token += 1
        return self._token

    async def run(self) -> None:
        """Publish every row from the outbox's start, then each new one; raises LinkLost
        (gateway/nats_link.py) when the connection closes under a publish."""
        assert self.link is not None
        publish, subject_of = self.link.publish, self.subjects.subject
        inflight, monotonic = self._inflight, time.monotonic
        last = 0
        while True:
            rows = await self.outbox.fetch(last, FETCH_ROWS)
            if not rows:
                await self.outbox.wait_new(last)
                continue
            for row in rows:
                while len(inflight) >= self.window:
                    self._room.clear()
                    await self._room.wait()
                token = self._next_token()
                inflight[token] = (row.pos, monotonic())
                try:
                    await publish(subject_of(kind_token(row.kind), row.device),
                                  row.body.encode(), token, row.id)
                except TooLarge as exc:
                    del inflight[token]
                    self._drop_too_large(row, str(exc))
                last = row.pos
            metrics.UPLINK_PUBLISHED.inc(len(rows))

    async def publish_status(self, subject: str, payload: bytes) -> asyncio.Future[Answer]:
        """A message outside the window (no id: each is news); the future gets its answer."""
        assert self.link is not None
        token = self._next_token()
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._status[token] = answer
        await self.link.publish(subject, payload, token)
        return answer

    async def stalled(self, timeout_s: float) -> float:
        """Return (the seconds waited) once a message has gone `timeout_s` unanswered."""
        while True:
            now = time.monotonic()
            oldest = now
            if self._inflight:  # oldest first: a dict keeps the order of publishing
                oldest = next(iter(self._inflight.values()))[1]
            if now - oldest >= timeout_s:
                return now - oldest
            # A deadline timer, not a synchronisation: an answer in time changes `oldest`.
            await asyncio.sleep(oldest + timeout_s - now)

    def on_answer(self, token: int, answer: Answer) -> None:
        """One PubAck or error, read by nats-py's subscription task (on the loop)."""
        entry = self._inflight.pop(token, None)
        if entry is None:
            status = self._status.pop(token, None)
            if status is not None and not status.done():
                status.set_result(answer)
            return
        self._room.set()
        position, sent = entry
        if answer.refused is None and not answer.no_stream:
            if not self._acked:  # the first of this wake-up: acknowledge them all after it
                asyncio.get_running_loop().call_soon(self._acknowledge)
            self._acked.append(position)
            self.duplicates += answer.duplicate
            metrics.UPLINK_LATENCY.observe(time.monotonic() - sent)
            if not self.first_ack.done():
                self.first_ack.set_result(None)
        elif answer.too_large:
            self.outbox.drop([position], "too_large")
            self._log_too_large(answer.refused or "over the stream's max_msg_size")
        elif not self.trouble.done():
            self.trouble.set_result(self._trouble(answer))

    def _trouble(self, answer: Answer) -> Exception:
        if answer.no_stream:
            return NatsUnreachable(f"no JetStream stream answered for {self.subjects.pattern()} "
                                   "(no stream takes it, or the cluster has no leader for it "
                                   "now); retrying")
        return NatsRejected(f"the JetStream stream refused a publish: {answer.refused}; nothing is "
                            "dropped, retrying only slowly")

    def _acknowledge(self) -> None:
        positions, self._acked = self._acked, []
        if positions:
            self.outbox.ack(positions)
            metrics.UPLINK_ACKED.inc(len(positions))
            self.last_ack_at = time.time()

    def _drop_too_large(self, row: OutboxRow, why: str) -> None:
        self.outbox.drop([row.pos], "too_large")
        self._log_too_large(why)

    def _log_too_large(self, why: str) -> None:
        if not self._too_large_logged:  # once per connection: counted in the outbox anyway
            self._too_large_logged = True
            log.warning("an event too large for NATS was dropped as too_large (announced as "
                        "data_dropped): %s", why)


"""The durable outbox: every event is committed here before anything else may happen to it.

One writer task (gateway/outbox_writer.py) owns the database (group commit: everything
queued goes into one transaction on the writer thread), a second connection serves the
uplink's reads.
`append` returns only after the commit, so "accepted" always means "on disk".
Rows leave only through `ack` (the broker's PUBACK) or, counted and announced,
through the byte cap and the TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from gateway import metrics
from gateway.config import StoreSection
from gateway.errors import StoreError
from gateway.events import Event
from gateway.outbox_db import OutboxDb
from gateway.outbox_rows import Batch, read_batch
from gateway.outbox_writer import OutboxWriter

log = logging.getLogger(__name__)

QUEUE_EVENTS = 50_000  # appends beyond this wait: back-pressure reaches the drivers
CLOSE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class OutboxRow:
    pos: int
    device: str
    kind: str
    body: str
    created: float
    id: str = ""  # the CloudEvent id (the outbox's `id` column); tests may leave it out


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    bytes: int
    oldest_age_s: float | None
    dropped: dict[str, int]
    writable: bool
    readings: int = 0
    dropped_readings: dict[str, int] = field(default_factory=dict)


class Outbox(OutboxWriter):
    """The asyncio face of the outbox. Construct, `await open()`, use, `await close()`."""

    def __init__(self, path: Path, store: StoreSection, *, source_prefix: str,
                 busy_timeout_ms: int = 5000) -> None:
        self._db = OutboxDb(path, source_prefix=source_prefix, max_bytes=store.max_bytes,
                            ttl_s=store.ttl_s, durability=store.durability,
                            busy_timeout_ms=busy_timeout_ms)
        self.path = path
        self._pending: deque[tuple[Sequence[Event], asyncio.Future[None]]] = deque()
        self._pending_events = 0
        self._acks: list[int] = []
        self._drops: list[tuple[int, str]] = []
        self._wake = asyncio.Event()
        self._room = asyncio.Condition()
        self._changed: asyncio.Future[None] | None = None
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="outbox-writer")
        self._reader_thread = ThreadPoolExecutor(1, thread_name_prefix="outbox-reader")
        self._reader: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._close_requested = asyncio.Event()
        self.writable = True
        self.commit_failures = 0  # transactions that failed, since open
        self.retry_delay_s = 0.0  # the pause before the next attempt, while not writable
        self._retry_at = 0.0  # time.monotonic() of the next attempt
        self.moved_aside: str | None = None
        self._unlogged_drops: Counter[str] = Counter()
        self._next_drop_log = 0.0
        self._read_to: tuple[int, int] = (0, 0)  # (after_pos, end): nothing readable between

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.moved_aside = await loop.run_in_executor(self._writer_thread, self._db.open)
            self._reader = await loop.run_in_executor(self._reader_thread, self._db.open_reader)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the outbox {self.path}: {exc}") from exc
        if self.moved_aside:
            log.error("outbox %s was corrupt: moved aside to %s, started a fresh one with "
                      "the rows that still read", self.path, self.moved_aside)
        if self._db.unrecovered:
            log.error("outbox %s lost the end of its write-ahead log in an unclean stop: seqs "
                      "%s were skipped and announced as data_dropped (unrecovered)", self.path,
                      {s: f"{a}..{b}" for s, (a, b) in self._db.unrecovered.items()})
        self._changed = loop.create_future()
        self._publish_gauges()
        self._task = asyncio.create_task(self._writer(), name="outbox-writer")

    async def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Commit what is queued, within `timeout_s`, then close both connections anyway.

        What could not be committed by then is logged: appends fail with StoreError (their
        producers were never told they were stored), and acks not recorded only mean
        those rows are sent again (at least once)."""
        self._closing = True
        self._close_requested.set()
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                self._task.cancel()
                if self._db.is_open:  # a call blocked in SQLite (a lock wait) returns now
                    self._db.conn.interrupt()
            except asyncio.CancelledError:
                pass
            self._task = None
        self._abandon_uncommitted()
        closing = [loop.run_in_executor(self._writer_thread, self._db.close)]
        if self._reader is not None:
            closing.append(loop.run_in_executor(self._reader_thread, self._reader.close))
            self._reader = None
        _done, stuck = await asyncio.wait(closing, timeout=max(0.1, deadline - loop.time()))
        if stuck:
            log.error("outbox %s: a database call did not return in time; closing without it",
                      self.path)
        self._writer_thread.shutdown(wait=False)
        self._reader_thread.shutdown(wait=False)

    def _abandon_uncommitted(self) -> None:
        events = sum(len(batch) for batch, _done in self._pending)
        for _batch, done in self._pending:
            if not done.done():
                done.set_exception(StoreError(f"outbox {self.path} closed before these "
                                              "events could be committed"))
        self._pending.clear()
        self._pending_events = 0
        if events or self._acks or self._drops:
            log.error("outbox %s closed with %d events not committed (never acknowledged to "
                      "their producers) and %d acknowledgements and %d drops not recorded "
                      "(those rows will be sent again)", self.path, events, len(self._acks),
                      len(self._drops))
        self._acks.clear()
        self._drops.clear()

    # -- producers ---------------------------------------------------------

    async def append(self, events: Sequence[Event]) -> None:
        """Queue events and return once they are committed; waits while the queue is full."""
        if not events:
            return
        if self._closing or self._task is None:
            raise StoreError("the outbox is closed")
        if not self.writable and time.monotonic() < self._retry_at:
            # Fail fast while the disk is known bad; the first append after the pause tries.
            raise StoreError(f"outbox {self.path} is not writable; retrying in "
                             f"{self._retry_at - time.monotonic():.1f} s")
        async with self._room:
            await self._room.wait_for(lambda: self._pending_events < QUEUE_EVENTS)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((events, done))
        self._pending_events += len(events)
        self._wake.set()
        await done

    # -- the uplink's side -------------------------------------------------

    async def fetch(self, after_pos: int, limit: int) -> list[OutboxRow]:
        """Up to `limit` rows after `after_pos`, in commit order, each verified against its
        checksum on the reader thread; rows that fail are dropped as `corrupt` (counted,
        announced, their bytes kept in the quarantine table), never handed out."""
        assert self._reader is not None, "outbox is not open"
        batch = await asyncio.get_running_loop().run_in_executor(
            self._reader_thread, _read, self._reader, after_pos, limit)
        if batch.bad:
            log.error("outbox %s: %d stored rows fail their checksum or do not decode "
                      "(positions %s...): dropped as corrupt, kept in its quarantine table",
                      self.path, len(batch.bad), batch.bad[:5])
            self.drop(batch.bad, "corrupt")
        if batch.end is not None:
            self._read_to = (after_pos, batch.end)
        elif self._read_to[0] == after_pos:
            self._read_to = (-1, 0)
        return batch.rows  # OutboxRows: built by _read

    async def wait_new(self, after_pos: int) -> None:
        """Return as soon as a row after `after_pos` has been committed (rows that a fetch
        from `after_pos` found gone or damaged do not count)."""
        seen_after, seen_end = self._read_to
        floor = max(after_pos, seen_end) if seen_after == after_pos else after_pos
        while self._db.totals.max_pos <= floor:
            assert self._changed is not None, "outbox is not open"
            await asyncio.shield(self._changed)

    def ack(self, positions: Iterable[int]) -> None:
        """The broker has these rows: delete them in the next transaction (never blocks)."""
        self._acks.extend(positions)
        self._wake.set()

    def drop(self, positions: Iterable[int], reason: str) -> None:
        """These rows can never be delivered (e.g. the broker refuses them): delete them in
        the next transaction, counted and announced upstream as `data_dropped` with `reason`."""
        self._drops.extend((pos, reason) for pos in positions)
        self._wake.set()

    async def wait_empty(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._db.totals.depth > 0 or self._acks or self._drops or self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            assert self._changed is not None, "outbox is not open"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._changed), remaining)
        return True

    @property
    def closed(self) -> bool:
        """True once `close()` began (or before `open()`): appends fail for good."""
        return self._closing or self._task is None

    @property
    def retry_in_s(self) -> float:
        """While not writable: how long until the next commit attempt (0 when due)."""
        return 0.0 if self.writable else max(0.0, self._retry_at - time.monotonic())

    def stats(self) -> OutboxStats:
        totals = self._db.totals
        oldest = None if totals.oldest_created is None else max(
            0.0, time.time() - totals.oldest_created)
        return OutboxStats(totals.depth, totals.bytes, oldest, dict(totals.dropped),
                           self.writable, totals.readings, dict(totals.dropped_readings))

    @property
    def ingest_bytes_per_s(self) -> float:
        """Bytes per second entering the outbox, averaged over about a minute (the page)."""
        return self._db.rate.bytes_per_s

    @property
    def last_position(self) -> int:
        """The position of the last row committed (0 before any): rows at or before it were
        in the outbox by now (the Sparkplug uplink's line between stored and live data)."""
        return self._db.totals.max_pos

    def _publish_gauges(self) -> None:
        stats = self.stats()
        metrics.OUTBOX_DEPTH.set(stats.depth)
        metrics.OUTBOX_BYTES.set(stats.bytes)
        metrics.OUTBOX_READINGS.set(stats.readings)
        metrics.OUTBOX_OLDEST_AGE.set(stats.oldest_age_s or 0.0)
        metrics.OUTBOX_WRITABLE.set(1 if self.writable else 0)


def _read(reader: sqlite3.Connection, after: int, limit: int) -> Batch:
    # Runs on the reader thread: verifying and building the row objects costs the event
    # loop nothing.
    batch = read_batch(reader, after, limit)
    batch.rows = [OutboxRow(*row) for row in batch.rows]
    return batch

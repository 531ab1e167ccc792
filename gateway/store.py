"""The durable outbox: every event is committed here before anything else may happen to it.

One writer task owns the database (group commit: everything queued goes into one
transaction on the writer thread), a second connection serves the uplink's reads.
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
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway import metrics
from gateway.config import StoreSection
from gateway.errors import StoreError
from gateway.events import Event
from gateway.outbox_db import OutboxDb
from gateway.outbox_rows import fetch

log = logging.getLogger(__name__)

MAX_EVENTS_PER_COMMIT = 20_000
QUEUE_EVENTS = 50_000  # appends beyond this wait: back-pressure reaches the drivers
HOUSEKEEPING_S = 1.0
DROP_LOG_INTERVAL_S = 60.0


@dataclass(frozen=True, slots=True)
class OutboxRow:
    pos: int
    device: str
    kind: str
    body: str
    created: float


@dataclass(frozen=True, slots=True)
class OutboxStats:
    depth: int
    bytes: int
    oldest_age_s: float | None
    dropped: dict[str, int]
    writable: bool
    readings: int = 0


class Outbox:
    """The asyncio face of the outbox. Construct, `await open()`, use, `await close()`."""

    def __init__(self, path: Path, store: StoreSection, *, source_prefix: str) -> None:
        self._db = OutboxDb(path, source_prefix=source_prefix, max_bytes=store.max_bytes,
                            ttl_s=store.ttl_s, durability=store.durability)
        self.path = path
        self._pending: deque[tuple[Sequence[Event], asyncio.Future[None]]] = deque()
        self._pending_events = 0
        self._acks: list[int] = []
        self._wake = asyncio.Event()
        self._room = asyncio.Condition()
        self._changed: asyncio.Future[None] | None = None
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="outbox-writer")
        self._reader_thread = ThreadPoolExecutor(1, thread_name_prefix="outbox-reader")
        self._reader: sqlite3.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.writable = True
        self.moved_aside: str | None = None
        self._unlogged_drops: Counter[str] = Counter()
        self._next_drop_log = 0.0

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.moved_aside = await loop.run_in_executor(self._writer_thread, self._db.open)
            self._reader = await loop.run_in_executor(self._reader_thread, self._db.open_reader)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open the outbox {self.path}: {exc}") from exc
        if self.moved_aside:
            log.error("outbox %s was corrupt: moved aside to %s, started a fresh one",
                      self.path, self.moved_aside)
        self._changed = loop.create_future()
        self._publish_gauges()
        self._task = asyncio.create_task(self._writer(), name="outbox-writer")

    async def close(self) -> None:
        """Commit what is queued, then close both connections."""
        self._closing = True
        if self._task is not None:
            self._wake.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        loop = asyncio.get_running_loop()
        if self._reader is not None:
            await loop.run_in_executor(self._reader_thread, self._reader.close)
            self._reader = None
        await loop.run_in_executor(self._writer_thread, self._db.close)
        self._writer_thread.shutdown()
        self._reader_thread.shutdown()

    # -- producers ---------------------------------------------------------

    async def append(self, events: Sequence[Event]) -> None:
        """Queue events and return once they are committed; waits while the queue is full."""
        if not events:
            return
        if self._closing or self._task is None:
            raise StoreError("the outbox is closed")
        async with self._room:
            await self._room.wait_for(lambda: self._pending_events < QUEUE_EVENTS)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((events, done))
        self._pending_events += len(events)
        self._wake.set()
        await done

    # -- the uplink's side -------------------------------------------------

    async def fetch(self, after_pos: int, limit: int) -> list[OutboxRow]:
        """Up to `limit` rows after `after_pos`, in commit order."""
        assert self._reader is not None, "outbox is not open"
        return await asyncio.get_running_loop().run_in_executor(
            self._reader_thread, _fetch_rows, self._reader, after_pos, limit)

    async def wait_new(self, after_pos: int) -> None:
        """Return as soon as a row after `after_pos` has been committed."""
        while self._db.totals.max_pos <= after_pos:
            assert self._changed is not None, "outbox is not open"
            await asyncio.shield(self._changed)

    def ack(self, positions: Iterable[int]) -> None:
        """The broker has these rows: delete them in the next transaction (never blocks)."""
        self._acks.extend(positions)
        self._wake.set()

    async def wait_empty(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self._db.totals.depth > 0 or self._acks or self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            assert self._changed is not None, "outbox is not open"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._changed), remaining)
        return True

    def stats(self) -> OutboxStats:
        totals = self._db.totals
        oldest = None if totals.oldest_created is None else max(
            0.0, time.time() - totals.oldest_created)
        return OutboxStats(totals.depth, totals.bytes, oldest, dict(totals.dropped),
                           self.writable, totals.readings)

    # -- the writer --------------------------------------------------------

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        next_housekeeping = time.monotonic() + HOUSEKEEPING_S
        while True:
            if not (self._pending or self._acks):
                if self._closing:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), HOUSEKEEPING_S)
                self._wake.clear()
            try:
                if time.monotonic() >= next_housekeeping:
                    next_housekeeping = time.monotonic() + HOUSEKEEPING_S
                    # Expiry usually writes nothing: it can show the disk is broken, never
                    # that it recovered.
                    await self._run(loop, self._db.housekeeping, time.time(),
                                    proves_writable=False)
            except Exception:  # noqa: BLE001 - housekeeping must not stop the writer
                log.exception("outbox writer: housekeeping failed")
            if self._pending or self._acks:
                await self._commit_pending(loop)

    async def _commit_pending(self, loop: asyncio.AbstractEventLoop) -> None:
        jobs: list[tuple[Sequence[Event], asyncio.Future[None]]] = []
        events: list[Event] = []
        while self._pending and len(events) < MAX_EVENTS_PER_COMMIT:
            job = self._pending.popleft()
            jobs.append(job)
            events.extend(job[0])
        acks, self._acks = self._acks, []
        try:
            ok = await self._run(loop, self._db.commit, events, acks, time.time())
        except Exception:  # noqa: BLE001 - the writer must outlive any one bad batch
            log.exception("outbox writer: unexpected error; this batch is refused")
            ok = False
        self._pending_events -= len(events)
        async with self._room:
            self._room.notify_all()
        for _events, done in jobs:
            if done.done():
                continue
            if ok:
                done.set_result(None)
            else:
                done.set_exception(StoreError(f"outbox {self.path} is not writable"))
        if not ok:
            # The broker has these rows already; deleting them can wait for the disk to recover.
            self._acks[:0] = acks

    async def _run(self, loop: asyncio.AbstractEventLoop, call: Callable[..., Any],
                   *args: Any, proves_writable: bool = True) -> bool:
        """Run one database call on the writer thread; False (logged once) when it failed."""
        try:
            result = await loop.run_in_executor(self._writer_thread, call, *args)
        except sqlite3.Error as exc:
            if self.writable:
                log.error("outbox write failed (%s): %s; new readings are refused until it "
                          "recovers, nothing accepted is lost", self.path, exc)
            self.writable = False
            metrics.OUTBOX_WRITABLE.set(0)
            self._signal_change()
            return False
        if proves_writable and not self.writable:
            log.warning("outbox %s is writable again", self.path)
            self.writable = True
        dropped = getattr(result, "dropped", result)
        if dropped:
            self._note_drops(dropped)
        self._publish_gauges()
        self._signal_change()
        return True

    def _note_drops(self, dropped: Counter[str]) -> None:
        """Count drops; log them at most once a minute (a full outbox drops on many commits)."""
        for reason, count in dropped.items():
            metrics.OUTBOX_DROPPED.labels(reason).inc(count)
        self._unlogged_drops.update(dropped)
        now = time.monotonic()
        if now >= self._next_drop_log:
            self._next_drop_log = now + DROP_LOG_INTERVAL_S
            log.warning("outbox dropped %s since the last report (capacity: max_bytes reached; "
                        "ttl: older than ttl_s; unencodable: data no JSON can carry); "
                        "data_dropped events announce it upstream", dict(self._unlogged_drops))
            self._unlogged_drops.clear()

    def _signal_change(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = asyncio.get_running_loop().create_future()

    def _publish_gauges(self) -> None:
        stats = self.stats()
        metrics.OUTBOX_DEPTH.set(stats.depth)
        metrics.OUTBOX_BYTES.set(stats.bytes)
        metrics.OUTBOX_READINGS.set(stats.readings)
        metrics.OUTBOX_OLDEST_AGE.set(stats.oldest_age_s or 0.0)
        metrics.OUTBOX_WRITABLE.set(1 if self.writable else 0)


def _fetch_rows(reader: sqlite3.Connection, after: int, limit: int) -> list[OutboxRow]:
    # Runs on the reader thread: the row objects are built there, not on the event loop.
    return [OutboxRow(*row) for row in fetch(reader, after, limit)]

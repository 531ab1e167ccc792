"""The outbox's writer task: group commits on the writer thread, retried after a failure.

A base of Outbox (gateway/store.py), kept apart so each stays small: Outbox sets up
every attribute declared below and is the face producers and the uplink use; this
part takes what they queued (events, acks, drops) into one transaction at a time,
runs the housekeeping, and counts and logs what the commits dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gateway import metrics
from gateway.errors import StoreError
from gateway.events import Event
from gateway.outbox_db import OutboxDb

# The outbox's log lines keep the logger name they had before this part left
# gateway/store.py: log filters and alerts match on it.
log = logging.getLogger("gateway.store")

MAX_EVENTS_PER_COMMIT = 20_000
HOUSEKEEPING_S = 1.0
RETRY_FIRST_S = 0.1  # after a failed transaction; doubles on each failure in a row
RETRY_MAX_S = 5.0
DROP_LOG_INTERVAL_S = 60.0
DROP_REASONS = {  # what each data_dropped reason means, for the log line
    "capacity": "max_bytes reached",
    "ttl": "older than ttl_s",
    "unencodable": "data no JSON can carry",
    "refused": "the cloud broker refused the message",
    "too_large": "larger than the broker's maximum packet size",
    "corrupt": "the stored row no longer decodes",
    "unrecovered": "committed before an unclean stop, lost with the WAL's damaged tail",
    "untranslatable": "the cloud format (Sparkplug B) cannot express the event",
}


class OutboxWriter:
    """The writer task behind Outbox: `_writer` runs as its task from `open()` to `close()`."""

    path: Path
    writable: bool
    commit_failures: int
    retry_delay_s: float
    _db: OutboxDb
    _pending: deque[tuple[Sequence[Event], asyncio.Future[None]]]
    _pending_events: int
    _acks: list[int]
    _drops: list[tuple[int, str]]
    _wake: asyncio.Event
    _room: asyncio.Condition
    _changed: asyncio.Future[None] | None
    _writer_thread: ThreadPoolExecutor
    _closing: bool
    _close_requested: asyncio.Event
    _retry_at: float
    _unlogged_drops: Counter[str]
    _next_drop_log: float

    def _publish_gauges(self) -> None:
        raise NotImplementedError

    async def _writer(self) -> None:
        loop = asyncio.get_running_loop()
        next_housekeeping = time.monotonic() + HOUSEKEEPING_S
        while True:
            if not (self._pending or self._acks or self._drops):
                if self._closing:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), HOUSEKEEPING_S)
                self._wake.clear()
            elif not self.writable and not self._closing:
                # After a failure, wait out the pause (a close cuts it short): a writer that
                # retried at once spun a core and never let close() finish.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._close_requested.wait(),
                                           self._retry_at - time.monotonic())
            try:
                if time.monotonic() >= next_housekeeping:
                    next_housekeeping = time.monotonic() + HOUSEKEEPING_S
                    # Expiry usually writes nothing: it can show the disk is broken, never
                    # that it recovered.
                    await self._run(loop, self._db.housekeeping, time.time(),
                                    proves_writable=False)
            except Exception:  # noqa: BLE001 - housekeeping must not stop the writer
                log.exception("outbox writer: housekeeping failed")
            if self._pending or self._acks or self._drops:
                if not await self._commit_pending(loop) and self._closing:
                    return  # one last attempt at close; the rest is close()'s to report

    async def _commit_pending(self, loop: asyncio.AbstractEventLoop) -> bool:
        jobs: list[tuple[Sequence[Event], asyncio.Future[None]]] = []
        events: list[Event] = []
        while self._pending and len(events) < MAX_EVENTS_PER_COMMIT:
            job = self._pending.popleft()
            jobs.append(job)
            events.extend(job[0])
        acks, self._acks = self._acks, []
        drops, self._drops = self._drops, []
        try:
            ok = await self._run(loop, self._db.commit, events, acks, time.time(), drops)
        except asyncio.CancelledError:  # close() gave up waiting: the producers must hear
            self._pending.extendleft(reversed(jobs))
            self._acks[:0] = acks
            self._drops[:0] = drops
            raise
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
            self._drops[:0] = drops
        return ok

    async def _run(self, loop: asyncio.AbstractEventLoop, call: Callable[..., Any],
                   *args: Any, proves_writable: bool = True) -> bool:
        """Run one database call on the writer thread; False (logged once) when it failed."""
        try:
            result = await loop.run_in_executor(self._writer_thread, call, *args)
        except (sqlite3.Error, OSError) as exc:  # OSError: the seq marks could not be written
            if self.writable:
                log.error("outbox write failed (%s): %s; new readings are refused until it "
                          "recovers, nothing accepted is lost", self.path, exc)
            self.writable = False
            self.commit_failures += 1
            metrics.OUTBOX_COMMIT_FAILURES.inc()
            self.retry_delay_s = min(RETRY_MAX_S, self.retry_delay_s * 2 or RETRY_FIRST_S)
            self._retry_at = time.monotonic() + self.retry_delay_s
            metrics.OUTBOX_WRITABLE.set(0)
            self._signal_change()
            return False
        if proves_writable and not self.writable:
            log.warning("outbox %s is writable again", self.path)
            self.writable = True
            self.retry_delay_s = 0.0
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
            why = "; ".join(f"{reason}: {DROP_REASONS.get(reason, reason)}"
                            for reason in sorted(self._unlogged_drops))
            log.warning("outbox dropped %s since the last report (%s); data_dropped events "
                        "announce it upstream", dict(self._unlogged_drops), why)
            self._unlogged_drops.clear()

    def _signal_change(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)
        self._changed = asyncio.get_running_loop().create_future()

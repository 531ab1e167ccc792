"""A write that keeps failing (a lock held elsewhere, a full disk): paced retries, bounded close."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from gateway import events
from gateway.config import StoreSection
from gateway.errors import StoreError
from gateway.frames import Frame
from gateway.outbox_writer import RETRY_FIRST_S
from gateway.store import Outbox
from simulators.wait import until
from tests.test_outbox_open import tiny_filesystem

T0 = 1_790_000_000.0


def frames(n: int, start: int = 0) -> list[events.Event]:
    return [events.telemetry(Frame("a", T0 + i, {"p": float(i)}, T0 + i))
            for i in range(start, start + n)]


async def test_a_persistent_write_failure_backs_off_and_close_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, StoreSection(), source_prefix="/plant/gw", busy_timeout_ms=20)
    await outbox.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await outbox.append(frames(10))
        positions = [row.pos for row in await outbox.fetch(0, 100)]
        other.execute("BEGIN IMMEDIATE")  # every write transaction of the outbox now fails
        outbox.ack(positions)
        await until(lambda: outbox.commit_failures >= 4, 30, "four failed commits")
        # Each failure in a row doubles the pause: the writer is not retrying at once.
        assert not outbox.writable
        assert outbox.retry_delay_s >= RETRY_FIRST_S * 2 ** 3
        with pytest.raises(StoreError):
            await outbox.append(frames(1, 100))
        # close() gives up on what it cannot commit and returns (the bound, with room).
        await asyncio.wait_for(outbox.close(timeout_s=1.0), 30)
    finally:
        other.close()
    outbox = Outbox(path, StoreSection(), source_prefix="/plant/gw")
    await outbox.open()
    try:
        assert outbox.stats().depth == 10  # acks not recorded: the rows are simply sent again
    finally:
        await outbox.close()


async def test_writes_resume_and_the_pause_resets_once_the_lock_is_gone(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    outbox = Outbox(path, StoreSection(), source_prefix="/plant/gw", busy_timeout_ms=20)
    await outbox.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await outbox.append(frames(3))
        positions = [row.pos for row in await outbox.fetch(0, 100)]
        other.execute("BEGIN IMMEDIATE")
        outbox.ack(positions)
        await until(lambda: outbox.commit_failures >= 2, 30, "two failed commits")
        other.execute("ROLLBACK")
        await until(lambda: outbox.writable and outbox.stats().depth == 0, 30,
                    "the acks committed once the lock went")
        assert outbox.retry_delay_s == 0.0
        await outbox.append(frames(1, 50))
    finally:
        other.close()
        await outbox.close()


async def test_a_full_disk_with_acks_pending_backs_off_and_close_is_bounded(
        tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path / "small") as small:
        path = small / "outbox.db"
        outbox = Outbox(path, StoreSection(), source_prefix="/plant/gw")
        await outbox.open()
        filler = small / "filler"
        try:
            await outbox.append(frames(200))
            positions = [row.pos for row in await outbox.fetch(0, 1000)]
            with contextlib.suppress(OSError), filler.open("wb") as out:
                while True:
                    out.write(bytes(4096))
                    out.flush()
            outbox.ack(positions)
            # Nothing happens on the disk while its pause runs: the writer does not spin.
            await until(lambda: outbox.commit_failures >= 3, 30, "three failed commits")
            assert not outbox.writable and outbox.retry_delay_s >= RETRY_FIRST_S * 2 ** 2
            await asyncio.wait_for(outbox.close(timeout_s=1.0), 30)
        finally:
            filler.unlink(missing_ok=True)
        outbox = Outbox(path, StoreSection(), source_prefix="/plant/gw")
        await outbox.open()
        try:
            assert outbox.stats().depth == 200 and outbox.moved_aside is None
        finally:
            await outbox.close()

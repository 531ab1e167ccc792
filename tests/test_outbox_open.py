"""Opening the outbox: a damaged file is moved aside and salvaged; a passing fault leaves it be."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import events
from gateway.config import StoreSection
from gateway.errors import StoreError
from gateway.frames import Frame
from gateway.outbox_db import OutboxDb
from gateway.outbox_open import is_damaged, open_error
from gateway.store import Outbox

T0 = 1_790_000_000.0
PAGE = 4096


def frames(n: int) -> list[events.Event]:
    return [events.telemetry(Frame("a", T0 + i, {f"k{i:05d}": float(i)}, T0 + i))
            for i in range(n)]


def outbox_db(path: Path, busy_timeout_ms: int = 5000) -> OutboxDb:
    return OutboxDb(path, source_prefix="/plant/gw", max_bytes=1 << 30, ttl_s=1e9,
                    durability="process", busy_timeout_ms=busy_timeout_ms)


def written(path: Path, n: int) -> list[str]:
    """An outbox holding n readings, cleanly closed; their ids in order."""
    db = outbox_db(path)
    db.open()
    batch = frames(n)
    db.commit(batch, [], T0)
    db.close()
    return [e.id for e in batch]


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


async def open_outbox(path: Path) -> Outbox:
    outbox = Outbox(path, StoreSection(), source_prefix="/plant/gw")
    await outbox.open()
    return outbox


async def test_a_damaged_page_is_moved_aside_and_its_readable_rows_salvaged(
        tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    ids = written(path, 2000)
    data = bytearray(path.read_bytes())
    page = data.index(b'"k01000"') // PAGE
    data[page * PAGE:(page + 1) * PAGE] = bytes(PAGE)  # one leaf page of rows zeroed
    path.write_bytes(bytes(data))
    outbox = await open_outbox(path)
    try:
        assert outbox.moved_aside and Path(outbox.moved_aside).exists()
        rows = await outbox.fetch(0, 10_000)
        salvaged = [json.loads(r.body) for r in rows if r.kind == "telemetry"]
        [notice] = [json.loads(r.body)["data"] for r in rows if r.kind == "data_dropped"]
        got = [e["id"] for e in salvaged]
        assert ids[1000] not in got
        assert got == [i for i in ids if i in set(got)]  # same ids, same order
        lost = 2000 - len(got)
        assert 0 < lost < 100
        assert notice["by_reason"] == {"corrupt": lost}
        assert notice["salvaged"] == len(got) and notice["unreadable"] == lost
        assert notice["moved_to"] == outbox.moved_aside
        await outbox.append(frames(2001)[2000:])
        newest = json.loads((await outbox.fetch(rows[-1].pos, 10))[0].body)
        assert newest["seq"] == 2001  # seqs the old file gave out are never given again
    finally:
        await outbox.close()


async def test_a_file_that_is_not_a_database_is_moved_aside_and_announced(
        tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(os.urandom(64 * 1024))
    outbox = await open_outbox(path)
    try:
        assert outbox.moved_aside
        [row] = await outbox.fetch(0, 10)
        notice = json.loads(row.body)["data"]
        assert notice["moved_to"] == outbox.moved_aside and notice["salvaged"] == 0
    finally:
        await outbox.close()


def test_a_lock_held_by_another_process_fails_the_start_and_leaves_the_file(
        tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    written(path, 50)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("PRAGMA locking_mode=EXCLUSIVE")
        other.execute("BEGIN EXCLUSIVE")
        before = files(tmp_path)
        with pytest.raises(StoreError) as raised:
            outbox_db(path, busy_timeout_ms=50).open()
        assert str(path) in str(raised.value) and "lock" in str(raised.value)
        assert files(tmp_path) == before  # nothing moved aside, nothing changed
    finally:
        other.close()
    db = outbox_db(path)
    assert db.open() is None and db.totals.depth == 50
    db.close()


async def test_a_path_that_cannot_be_opened_fails_the_start_and_is_left_alone(
        tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.mkdir()  # root ignores permission bits; a directory cannot be opened by anyone
    with pytest.raises(StoreError) as raised:
        await open_outbox(path)
    assert str(path) in str(raised.value) and "cannot be opened" in str(raised.value)
    assert path.is_dir() and [p.name for p in tmp_path.iterdir()] == ["outbox.db"]


def test_a_full_disk_is_a_passing_fault_not_damage(tmp_path: Path) -> None:
    # A real SQLITE_FULL: the page limit stands in for the disk's end.
    conn = sqlite3.connect(tmp_path / "scratch.db")
    conn.execute("CREATE TABLE t (b BLOB)")
    conn.execute("PRAGMA max_page_count=4")
    with pytest.raises(sqlite3.OperationalError) as raised:
        conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
    conn.close()
    assert not is_damaged(raised.value)
    assert "the disk is full" in str(open_error(tmp_path / "outbox.db", raised.value))


@contextlib.contextmanager
def tiny_filesystem(where: Path) -> Iterator[Path]:
    where.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {exc}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def test_a_full_disk_at_start_never_moves_the_outbox_aside(tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path / "small") as small:
        path = small / "outbox.db"
        written(path, 500)
        filler = small / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as out:
            while True:
                out.write(bytes(16 * 1024))
                out.flush()
        try:
            outbox = await open_outbox(path)
        except StoreError as exc:
            assert "the disk is full" in str(exc) or str(path) in str(exc)
        else:
            assert outbox.moved_aside is None
            await outbox.close()
        assert not [p for p in small.iterdir() if ".corrupt-" in p.name]
        filler.unlink()
        outbox = await open_outbox(path)
        try:
            assert outbox.moved_aside is None and outbox.stats().depth == 500
        finally:
            await outbox.close()


async def test_a_read_only_file_system_fails_the_start_and_leaves_the_outbox(
        tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path / "small") as small:
        path = small / "outbox.db"
        written(path, 20)
        await asyncio.to_thread(subprocess.run, ["mount", "-o", "remount,ro", str(small)],
                                check=True)
        before = files(small)
        with pytest.raises(StoreError) as raised:
            await open_outbox(path)
        assert str(path) in str(raised.value) and "writ" in str(raised.value)
        assert files(small) == before

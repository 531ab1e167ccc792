"""A WAL tail lost in an unclean stop: the seqs it took are skipped and announced, never silent."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from gateway import events
from gateway.frames import Frame
from gateway.outbox_db import OutboxDb
from gateway.outbox_rows import fetch
from tests.test_outbox_open import tiny_filesystem

T0 = 1_790_000_000.0
SOURCE = "/plant/gw/a"


def frames(n: int, start: int = 0) -> list[events.Event]:
    return [events.telemetry(Frame("a", T0 + i, {"p": float(i)}, T0 + i))
            for i in range(start, start + n)]


def outbox_db(path: Path) -> OutboxDb:
    return OutboxDb(path, source_prefix="/plant/gw", max_bytes=1 << 30, ttl_s=1e9,
                    durability="process")


def stored(db: OutboxDb) -> list[dict[str, object]]:
    return [json.loads(row[3]) for row in fetch(db.conn, 0, 100_000)]


def test_seqs_of_a_lost_wal_tail_are_announced_and_new_events_follow(tmp_path: Path) -> None:
    live, crashed = tmp_path / "live", tmp_path / "crashed"
    live.mkdir()
    crashed.mkdir()
    path = live / "outbox.db"
    db = outbox_db(path)
    db.open()
    db.commit(frames(100), [], T0)
    kept = (live / "outbox.db-wal").stat().st_size
    db.commit(frames(50, 100), [], T0)  # these frames are the tail the crash damages
    # The files as a kill -9 leaves them (nothing checkpointed, connection still open),
    # with the WAL's last frames torn: cut back to the first commit, then garbage.
    for name in ("outbox.db", "outbox.db.seq"):
        shutil.copyfile(live / name, crashed / name)
    wal = (live / "outbox.db-wal").read_bytes()
    assert len(wal) > kept
    (crashed / "outbox.db-wal").write_bytes(wal[:kept] + bytes(range(256)) * 20)
    db.close()

    db = outbox_db(crashed / "outbox.db")
    db.open()
    try:
        assert db.unrecovered == {SOURCE: (101, 150)}
        rows = stored(db)
        assert [r["seq"] for r in rows if r["source"] == SOURCE] == list(range(1, 101))
        [notice] = [r["data"] for r in rows if r["type"].endswith("data_dropped")]
        assert notice["by_reason"] == {"unrecovered": 50}
        assert notice["unrecovered"] == [{"source": SOURCE, "first_seq": 101, "last_seq": 150}]
        assert notice["devices"] == ["a"]
        db.commit(frames(1, 500), [], T0)
        assert stored(db)[-1]["seq"] == 151  # the hole lines up with the announcement
    finally:
        db.close()


def test_a_clean_stop_announces_nothing(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    db = outbox_db(path)
    db.open()
    db.commit(frames(100), [], T0)
    db.close()
    db = outbox_db(path)
    db.open()
    try:
        assert db.unrecovered == {}
        assert not [r for r in stored(db) if r["type"].endswith("data_dropped")]
        db.commit(frames(1, 100), [], T0)
        assert stored(db)[-1]["seq"] == 101
    finally:
        db.close()


def test_a_commit_that_fails_leaves_the_marks_as_they_were(tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path / "small") as small:
        path = small / "outbox.db"
        db = outbox_db(path)
        db.open()
        db.commit(frames(100), [], T0)
        filler = small / "filler"
        with contextlib.suppress(OSError), filler.open("wb") as out:
            while True:
                out.write(bytes(4096))
                out.flush()
        with pytest.raises(sqlite3.Error):  # the disk is full: this commit cannot happen
            db.commit(frames(2000, 100), [], T0)
        db.close()
        filler.unlink()
        db = outbox_db(path)
        db.open()
        try:
            assert db.unrecovered == {}  # nothing was lost, so nothing is announced
            db.commit(frames(1, 5000), [], T0)
            assert stored(db)[-1]["seq"] == 101
        finally:
            db.close()


def test_a_damaged_file_moved_aside_still_announces_the_seqs_it_took(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"not a database" * 1000)
    (tmp_path / "outbox.db.seq").write_bytes(json.dumps({SOURCE: 40}).encode())
    db = outbox_db(path)
    assert db.open() is not None
    try:
        assert db.unrecovered == {SOURCE: (1, 40)}
        db.commit(frames(1), [], T0)
        assert [r["seq"] for r in stored(db) if r["source"] == SOURCE] == [41]
    finally:
        db.close()

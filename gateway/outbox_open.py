"""Opening an outbox that fails: tell a damaged file from a passing fault, and salvage the damaged.

Only a file that is not a database (SQLITE_NOTADB) or fails integrity (SQLITE_CORRUPT, or
`PRAGMA quick_check` not "ok") is moved aside. Everything else (a full disk, a lock held by
another process, a read-only or unreadable file) is a fault of the moment: the file is
left exactly as it is and the start fails with a line naming the path, the cause and the fix.
A file moved aside gives up every row that still reads and verifies, in order, same ids
and bodies; the rest are counted.
"""

from __future__ import annotations

import os
import sqlite3
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.errors import StoreError
from gateway.outbox_rows import body_text, verified_text

# Primary result codes (sqlite3.h); extended codes carry them in their low byte.
SQLITE_PERM, SQLITE_BUSY, SQLITE_LOCKED, SQLITE_READONLY, SQLITE_IOERR = 3, 5, 6, 8, 10
SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_AUTH, SQLITE_NOTADB = 11, 13, 14, 23, 26
DAMAGED = {SQLITE_CORRUPT, SQLITE_NOTADB}
SALVAGE_CHUNK = 1000

_FIXES = {
    SQLITE_FULL: ("the disk is full", "free space on its file system, then start again"),
    SQLITE_BUSY: ("another process holds a lock on it",
                  "stop the other process using it (a second gateway, or a sqlite3 shell), "
                  "then start again"),
    SQLITE_READONLY: ("it cannot be written", "make the file, its -wal and -shm and their "
                      "directory writable by the gateway's user, on a read-write mount"),
    SQLITE_CANTOPEN: ("it cannot be opened", "check that its directory exists and the "
                      "gateway's user may read and write the file and the directory"),
    SQLITE_IOERR: ("the disk reported an I/O error", "check the disk (dmesg), then start again"),
}
_FIXES[SQLITE_LOCKED] = _FIXES[SQLITE_BUSY]
_FIXES[SQLITE_PERM] = _FIXES[SQLITE_AUTH] = _FIXES[SQLITE_READONLY]


class CorruptFile(Exception):
    """The file opened, but `PRAGMA quick_check` found damage."""


def primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def is_damaged(exc: BaseException) -> bool:
    """Whether the failure means the file itself is damaged (not a fault of the moment)."""
    if isinstance(exc, CorruptFile):
        return True
    return isinstance(exc, sqlite3.DatabaseError) and primary_code(exc) in DAMAGED


def open_error(path: Path, exc: BaseException) -> StoreError:
    """The StoreError for a fault of the moment, naming the path, the cause and the fix."""
    code = primary_code(exc) if isinstance(exc, sqlite3.Error) else None
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    cause, fix = _FIXES.get(code or -1, ("it cannot be opened", "see the error, fix it, "
                                          "then start again"))
    return StoreError(f"cannot open the outbox {path}: {cause} ({name}: {exc}); {fix}. "
                      "The file was left untouched: nothing in it is lost")


def move_aside(path: Path) -> Path:
    """Rename the file (and its -wal and -shm, which belong to it) to `<name>.corrupt-<t>`."""
    moved = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
    os.replace(path, moved)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, moved.with_name(moved.name + suffix))
    return moved


@dataclass(slots=True)
class Salvage:
    """What a damaged file gave up: readable rows in order, and what could not be read."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)  # (id, ..., readings, crc)
    lost: int = 0
    first: float | None = None
    last: float | None = None
    sequences: dict[str, int] = field(default_factory=dict)
    drops: dict[str, dict[str, int]] = field(default_factory=dict)


def salvage(moved: Path) -> Salvage:
    """Every row of `moved` that reads and verifies; never raises for damage in the file."""
    found = Salvage()
    try:
        conn = sqlite3.connect(f"file:{moved}?mode=ro", uri=True)
    except sqlite3.Error:
        return found
    try:
        total = _try(conn, "SELECT count(*) FROM outbox")
        for table in ("drops", "dropped_readings"):
            rows = _try_all(conn, f"SELECT reason, count FROM {table}")
            found.drops[table] = {str(r): int(c) for r, c in rows}
        found.sequences = {str(s): int(n) for s, n in
                           _try_all(conn, "SELECT source, last FROM sequences")}
        crc = "crc" in {r[1] for r in _try_all(conn, "PRAGMA table_info(outbox)")}
        skipped = 0
        for row in _readable_rows(conn, crc):
            if row is None:
                skipped += 1
                continue
            found.rows.append(row)
            _note_seq(found.sequences, row[6])
            created = row[4]
            found.first = created if found.first is None else min(found.first, created)
            found.last = created if found.last is None else max(found.last, created)
        found.lost = total - len(found.rows) if total is not None else skipped
    finally:
        conn.close()
    return found


def _readable_rows(conn: sqlite3.Connection, crc: bool) -> Iterator[tuple[Any, ...] | None]:
    """Rows in order, each verified; None for each row (or run of rows) that cannot be read.

    A damaged b-tree page fails every read that touches it: after a failed chunk, rows
    are tried one position at a time, then positions further and further on, until
    reading works again."""
    select = ("SELECT pos, id, CAST(device AS BLOB), CAST(kind AS BLOB), priority, created,"
              " size, CAST(body AS BLOB), typeof(body), readings"
              f"{', crc' if crc else ', NULL'} FROM outbox")
    after = 0
    while True:
        try:
            chunk = conn.execute(f"{select} WHERE pos > ? ORDER BY pos LIMIT ?",
                                 (after, SALVAGE_CHUNK)).fetchall()
        except sqlite3.DatabaseError:
            resume = _next_readable(conn, after)
            if resume is None:
                yield None
                return
            yield None
            after = resume - 1
            continue
        if not chunk:
            return
        for raw in chunk:
            yield _verified(raw)
        after = chunk[-1][0]


def _next_readable(conn: sqlite3.Connection, after: int) -> int | None:
    """The first position past the damage after `after` that reads, or None."""
    step = 1
    while step < 1 << 62:
        try:
            row = conn.execute("SELECT min(pos) FROM outbox WHERE pos > ?",
                               (after + step,)).fetchone()
            return None if row[0] is None else int(row[0])
        except sqlite3.DatabaseError:
            step *= 2
    return None


def _verified(row: tuple[Any, ...]) -> tuple[Any, ...] | None:
    _pos, event_id, device, kind, priority, created, size, body, stored_as, readings, crc = row
    try:
        device_text, kind_text = bytes(device).decode(), bytes(kind).decode()
    except UnicodeDecodeError:
        return None
    raw = bytes(body)
    text = verified_text(raw, stored_as == "text", crc)
    if text is None:
        return None
    stored: str | bytes = text if stored_as == "text" else raw
    return (event_id, device_text, kind_text, priority, created, size, stored, readings,
            zlib.crc32(raw))


def _note_seq(sequences: dict[str, int], stored: str | bytes) -> None:
    """Seqs given out stay given out, even when the sequences table did not survive."""
    event = orjson.loads(body_text(stored))
    source, seq = event.get("source"), event.get("seq")
    if isinstance(source, str) and isinstance(seq, int) and seq > sequences.get(source, 0):
        sequences[source] = seq


def _try(conn: sqlite3.Connection, query: str) -> int | None:
    try:
        return int(conn.execute(query).fetchone()[0])
    except sqlite3.DatabaseError:
        return None


def _try_all(conn: sqlite3.Connection, query: str) -> list[Any]:
    try:
        return conn.execute(query).fetchall()
    except sqlite3.DatabaseError:
        return []

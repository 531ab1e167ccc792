"""Opening the outbox file: checks, upgrades, a damaged file's salvage, a lost WAL tail's seqs.

A base of OutboxDb (gateway/outbox_db.py), kept apart so each stays small: it runs once,
on the writer thread, before any commit. Telling damage from a passing fault and
reading a damaged file: gateway/outbox_open.py.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from gateway.outbox_open import (
    CorruptFile,
    Salvage,
    is_damaged,
    move_aside,
    open_error,
    salvage,
)
from gateway.outbox_rows import INSERT_ROW, SCHEMA, UPGRADE_V1, UPGRADE_V2
from gateway.outbox_seq import SeqMarks

CACHE_KIB = 32 * 1024
MIN_SQLITE = (3, 35, 0)  # DELETE ... RETURNING


class Startup:
    """`open` and what it does before the first commit (OutboxDb provides the rest)."""

    path: Path
    busy_timeout_ms: int
    durability: str
    source_prefix: str
    unrecovered: dict[str, tuple[int, int]]
    _conn: sqlite3.Connection | None
    _seq: dict[str, int]
    _dirty_seq: set[str]
    _marks: SeqMarks
    _notice: Any

    if TYPE_CHECKING:
        @property
        def conn(self) -> sqlite3.Connection: ...
        def close(self) -> None: ...
        def _transaction(self) -> contextlib.AbstractContextManager[None]: ...
        def _reload_totals(self) -> None: ...
        def _announce(self, now: float) -> None: ...
        def _account_lost(self, reason: str, count: int, first: float, last: float,
                          extra: dict[str, Any]) -> None: ...

    def open(self) -> str | None:
        """Open (creating if needed). A damaged file is moved aside, its readable rows
        salvaged into a fresh one and the move announced; returns its new name then.

        Any other failure (full disk, a lock, permissions) raises StoreError naming the
        cause and the fix, and leaves the file as it was."""
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise RuntimeError(f"SQLite {sqlite3.sqlite_version} is too old; 3.35+ is needed")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        moved = None
        marks = self._marks.read()  # before anything here commits (and rewrites them)
        try:
            self._connect()
        except (sqlite3.Error, CorruptFile) as exc:
            self.close()
            if not is_damaged(exc):
                raise open_error(self.path, exc) from exc
            moved = move_aside(self.path)
        try:
            if moved is not None:
                self._connect()
                self._take_salvage(moved, salvage(moved))
            self._take_marks(marks)
        except (sqlite3.Error, OSError) as exc:
            self.close()
            raise open_error(self.path, exc) from exc
        return None if moved is None else str(moved)

    def _connect(self) -> None:
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self.durability == 'power' else 'NORMAL'}")
        # The id index takes inserts at random places: with SQLite's default 2 MB page cache
        # a large backlog makes every insert a cache miss.
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise CorruptFile(check)
        conn.executescript(SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
        if "readings" not in columns:
            conn.executescript(f"BEGIN IMMEDIATE; {UPGRADE_V1} COMMIT;")
        if "crc" not in columns:
            conn.executescript(f"BEGIN IMMEDIATE; {UPGRADE_V2} COMMIT;")
        self._reload_totals()

    def _take_marks(self, marks: dict[str, int]) -> None:
        """Skip and announce the seqs a lost WAL tail took (their marks outlived them)."""
        lost = {source: (self._seq.get(source, 0) + 1, mark)
                for source, mark in marks.items() if mark > self._seq.get(source, 0)}
        self.unrecovered = lost
        if not lost:
            return
        now = time.time()
        with self._transaction():
            for source, (_first, last) in lost.items():
                self._seq[source] = last
                self._dirty_seq.add(source)
            ranges = [{"source": source, "first_seq": first, "last_seq": last}
                      for source, (first, last) in sorted(lost.items())]
            self._account_lost("unrecovered", sum(b - a + 1 for a, b in lost.values()), now, now,
                               {"unrecovered": ranges})
            self._notice.devices.update(self._device_of(s) for s in lost)
            self._announce(now)

    def _device_of(self, source: str) -> str:
        head, _, tail = source.rpartition("/")
        return unquote(tail) if head == self.source_prefix else source

    def _take_salvage(self, moved: Path, found: Salvage) -> None:
        """Copy what a damaged file gave up into the fresh one, and announce the move: the
        rows that could not be read as a `corrupt` drop (their seqs stay unused)."""
        now = time.time()
        with self._transaction():
            self.conn.executemany(INSERT_ROW, found.rows)
            for table, counts in found.drops.items():
                self.conn.executemany(f"INSERT INTO {table} (reason, count) VALUES (?, ?)",
                                      counts.items())
            for source, last in found.sequences.items():
                if last > self._seq.get(source, 0):
                    self._seq[source] = last
                    self._dirty_seq.add(source)
            self._account_lost("corrupt", found.lost, found.first or now, found.last or now,
                               {"moved_to": str(moved), "salvaged": len(found.rows),
                                "unreadable": found.lost})
            self._announce(now)
        self._reload_totals()

"""The outbox's SQLite layer: schema, group commits, eviction and TTL, all run on one writer thread.

Everything here is synchronous and runs on the outbox's own thread (gateway/store.py
owns the asyncio side). One call = one transaction, so a group commit of thousands of
events costs one thread hop, not one per statement.

The file's layout and how a row's body is stored: gateway/outbox_rows.py; opening it
(checks, upgrades, salvage, lost WAL tails): gateway/outbox_startup.py; drops, eviction
and their announcement: gateway/outbox_drops.py.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

from gateway.events import CLOCK_SANE_AFTER, PRIORITY, Event
from gateway.outbox_drops import EVICT_CHUNK, Drops, Notice
from gateway.outbox_rows import INSERT_ROW, BodyPacker
from gateway.outbox_seq import SeqMarks
from gateway.outbox_startup import Startup
from gateway.outbox_stats import IngestRate

# Rows cost more than their JSON on disk (key, index entries, page slack).
ROW_OVERHEAD_BYTES = 96
@dataclass(slots=True)
class Totals:
    """What the outbox holds, kept exact in memory so eviction needs no table scans."""

    depth: int = 0
    bytes: int = 0
    readings: int = 0
    max_pos: int = 0
    oldest_created: float | None = None
    dropped: Counter[str] = field(default_factory=Counter)
    dropped_readings: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class CommitResult:
    inserted: int
    deleted: int
    dropped: Counter[str]


class OutboxDb(Startup, Drops):
    """One SQLite connection, used only from the thread that calls `open`."""

    def __init__(self, path: Path, *, source_prefix: str, max_bytes: int, ttl_s: float,
                 durability: str, busy_timeout_ms: int = 5000) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        self.source_prefix = source_prefix.rstrip("/")
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.durability = durability
        self.totals = Totals()
        self.rate = IngestRate()
        self._seq: dict[str, int] = {}
        self._dirty_seq: set[str] = set()
        self._notice = Notice()
        self._sources: dict[str, str] = {}
        self._conn: sqlite3.Connection | None = None
        self._packer = BodyPacker()
        self._marks = SeqMarks(path, fsync=durability == "power")
        self.unrecovered: dict[str, tuple[int, int]] = {}  # seqs a lost WAL tail took, at open

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    @property
    def conn(self) -> sqlite3.Connection:
        assert self._conn is not None, "outbox database is not open"
        return self._conn

    def close(self) -> None:
        self._marks.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def source(self, device: str) -> str:
        source = self._sources.get(device)
        if source is None:
            source = self._sources[device] = f"{self.source_prefix}/{quote(device, safe='')}"
        return source

    def commit(self, events: Sequence[Event], acked: Sequence[int], now: float,
               drops: Sequence[tuple[int, str]] = ()) -> CommitResult:
        """One transaction: delete acked rows, drop undeliverable ones (counted, announced),
        insert new events, enforce the byte cap."""
        with self._transaction():
            deleted = self._delete(acked) if acked else 0
            undeliverable = self._drop_rows(drops, now) if drops else Counter()
            refused_before = self.totals.dropped["unencodable"]
            inserted = self._insert(events, now) if events else 0
            dropped = self._evict_over_cap(now) if self.totals.bytes > self.max_bytes else Counter()
            refused = self.totals.dropped["unencodable"] - refused_before
            if refused:
                dropped["unencodable"] += refused
            dropped += undeliverable
            self._announce(now)
        if deleted or inserted or dropped:
            self._refresh_oldest()
        return CommitResult(inserted, deleted, dropped)

    def housekeeping(self, now: float) -> Counter[str]:
        """Once a second: drop what outlived the TTL; measure (and now and then save) the
        ingest rate."""
        dropped = self.expire(now)
        self.rate.tick(now)
        if self.rate.save_due(now):
            with self._transaction():
                self.rate.save(self.conn, now)
        return dropped

    def expire(self, now: float) -> Counter[str]:
        """Drop rows older than the TTL (rows stamped by an unset clock are kept)."""
        cutoff = now - self.ttl_s
        if self.totals.oldest_created is None or self.totals.oldest_created >= cutoff:
            return Counter()
        dropped: Counter[str] = Counter()
        with self._transaction():
            while True:
                rows = self.conn.execute(
                    "DELETE FROM outbox WHERE pos IN (SELECT pos FROM outbox ORDER BY pos LIMIT ?)"
                    " AND created < ? AND created >= ? RETURNING device, created, size, readings",
                    (EVICT_CHUNK, cutoff, CLOCK_SANE_AFTER),
                ).fetchall()
                if rows:
                    dropped += self._account_drop("ttl", rows, now)
                if len(rows) < EVICT_CHUNK:
                    break
            self._announce(now)
        self._refresh_oldest()
        return dropped

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction; on any failure, roll back and make memory match the file."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        marks_before = None
        try:
            yield
            if self._dirty_seq:
                self._save_sequences()
                # Before the commit: if the WAL loses this transaction, the marks survive.
                marks_before = self._marks.last
                self._marks.write(self._seq)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._notice = Notice()
            self._reload_totals()
            if marks_before is not None:  # as they were: no loss to announce, none forgotten
                with contextlib.suppress(OSError):
                    self._marks.write(marks_before)
            raise

    def open_reader(self) -> sqlite3.Connection:
        """A second connection for the uplink's reads; WAL lets it read while the writer writes."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        return conn


    def _insert(self, events: Sequence[Event], now: float) -> int:
        """Insert the events not already stored; only those take a `seq`.

        So the per-source seq of stored events has no gaps, and a consumer that sees
        a gap knows something committed was lost (the chaos run checks exactly that).
        The common case (nothing stored yet) costs one INSERT; only when the INSERT
        finds a stored id is the batch redone with an id lookup first.
        """
        conn = self.conn
        rows, refused, seq_before = self._rows(events, now, known=set())
        conn.execute("SAVEPOINT insert_batch")
        changes = conn.total_changes
        conn.executemany(INSERT_ROW, rows)
        if conn.total_changes - changes != len(rows):
            conn.execute("ROLLBACK TO insert_batch")
            self._seq.update(seq_before)
            known = self._stored_ids([event.id for event in events])
            rows, refused, _ = self._rows(events, now, known)
            conn.executemany(INSERT_ROW, rows)
        conn.execute("RELEASE insert_batch")
        for event in refused:
            # Data no JSON can carry: counted and announced, never a stuck writer.
            self._account_drop("unencodable", [(event.device, now, 0, event.readings)], now,
                               stored=False)
        if rows:
            self.totals.depth += len(rows)
            self.totals.bytes += sum(r[5] for r in rows)
            self.totals.readings += sum(r[7] for r in rows)
            self.rate.add(sum(r[5] for r in rows), sum(r[7] for r in rows))
            self.totals.max_pos = conn.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()[0]
        return len(rows)

    def _rows(self, events: Sequence[Event], now: float, known: set[str],
              ) -> tuple[list[tuple[Any, ...]], list[Event], dict[str, int]]:
        """Encoded rows for the events not in `known`, each taking its source's next seq;
        also the events no JSON can carry, and each touched source's seq before."""
        rows: list[tuple[Any, ...]] = []
        refused: list[Event] = []
        seq_before: dict[str, int] = {}
        seq = self._seq
        for event in events:
            if event.id in known:
                continue
            known.add(event.id)
            source = self.source(event.device)
            previous = seq.get(source, 0)
            seq_before.setdefault(source, previous)
            try:
                text = event.encode(source, previous + 1)
            except (orjson.JSONEncodeError, TypeError, ValueError):
                refused.append(event)
                continue
            body, crc = self._packer.pack(text)
            seq[source] = previous + 1
            self._dirty_seq.add(source)
            rows.append((event.id, event.device, event.kind, PRIORITY[event.kind], now,
                         len(body) + len(event.id) + ROW_OVERHEAD_BYTES, body, event.readings,
                         crc))
        return rows, refused, seq_before

    def _stored_ids(self, ids: list[str]) -> set[str]:
        """Which of `ids` the outbox holds already (one indexed lookup each, one statement)."""
        return {row[0] for row in self.conn.execute(
            "SELECT id FROM outbox WHERE id IN (SELECT value FROM json_each(?))",
            (orjson.dumps(ids).decode(),))}

    def _delete(self, positions: Sequence[int]) -> int:
        """Delete acknowledged rows; acks come mostly in order, so as ranges of positions."""
        deleted = freed = values = 0
        for first, last in _ranges(positions):
            rows = self.conn.execute(
                "DELETE FROM outbox WHERE pos BETWEEN ? AND ? RETURNING size, readings",
                (first, last)).fetchall()
            deleted += len(rows)
            freed += sum(r[0] for r in rows)
            values += sum(r[1] for r in rows)
        self.totals.depth -= deleted
        self.totals.bytes -= freed
        self.totals.readings -= values
        return deleted

    def _save_sequences(self) -> None:
        if self._dirty_seq:
            self.conn.executemany(
                "INSERT INTO sequences (source, last) VALUES (?, ?)"
                " ON CONFLICT(source) DO UPDATE SET last = excluded.last",
                [(s, self._seq[s]) for s in self._dirty_seq],
            )
            self._dirty_seq.clear()

    def _refresh_oldest(self) -> None:
        row = self.conn.execute("SELECT created FROM outbox ORDER BY pos LIMIT 1").fetchone()
        self.totals.oldest_created = row[0] if row else None

    def _reload_totals(self) -> None:
        """Totals from the file: at open, and after a failed transaction."""
        conn = self.conn
        self.totals.depth, self.totals.bytes, self.totals.readings = conn.execute(
            "SELECT count(*), coalesce(sum(size), 0), coalesce(sum(readings), 0) FROM outbox"
        ).fetchone()
        self._seq = dict(conn.execute("SELECT source, last FROM sequences"))
        self._dirty_seq.clear()
        self.totals.dropped = Counter(dict(conn.execute("SELECT reason, count FROM drops")))
        self.totals.dropped_readings = Counter(dict(conn.execute(
            "SELECT reason, count FROM dropped_readings")))
        self.totals.max_pos = conn.execute(
            "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'outbox'"
        ).fetchone()[0]
        self._refresh_oldest()


def _ranges(positions: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted, de-duplicated positions as inclusive (first, last) runs of consecutive numbers."""
    runs: list[tuple[int, int]] = []
    for pos in sorted(set(positions)):
        if runs and pos == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], pos)
        else:
            runs.append((pos, pos))
    return runs

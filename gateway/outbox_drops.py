"""What leaves the outbox undelivered: rows dropped, quarantined, evicted over the cap, and
the one `data_dropped` announcement per transaction that accounts for them.

A base of OutboxDb (gateway/outbox_db.py), kept apart so each stays small; like it, it runs
only on the outbox's writer thread, inside a transaction OutboxDb opened.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from gateway.events import PRIORITY, Event, data_dropped
from gateway.outbox_rows import QUARANTINE_KEEP

if TYPE_CHECKING:
    from gateway.outbox_db import Totals

EVICT_CHUNK = 5000  # rows deleted per statement when evicting or expiring


@dataclass(slots=True)
class Notice:
    """Drops gathered during one transaction, announced together at its end."""

    counts: Counter[str] = field(default_factory=Counter)
    readings: Counter[str] = field(default_factory=Counter)
    first: float = float("inf")
    last: float = float("-inf")
    devices: set[str] = field(default_factory=set)
    extra: dict[str, Any] = field(default_factory=dict)


class Drops:
    """Dropping rows and accounting for it (OutboxDb provides the connection and totals)."""

    totals: Totals
    max_bytes: int
    _notice: Notice

    @property
    def conn(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _insert(self, events: Sequence[Event], now: float) -> int:
        raise NotImplementedError

    def _drop_rows(self, drops: Sequence[tuple[int, str]], now: float) -> Counter[str]:
        """Delete rows the cloud can never take, accounted per reason (rows already gone,
        e.g. acknowledged meanwhile, are skipped)."""
        by_reason: dict[str, list[int]] = {}
        for pos, reason in drops:
            by_reason.setdefault(reason, []).append(pos)
        dropped: Counter[str] = Counter()
        for reason, positions in by_reason.items():
            listed = orjson.dumps(sorted(set(positions))).decode()
            if reason == "corrupt":
                self._quarantine(listed, now)
            # Bytes, not text: a damaged row's device may not be UTF-8.
            rows = self.conn.execute(
                "DELETE FROM outbox WHERE pos IN (SELECT value FROM json_each(?))"
                " RETURNING CAST(device AS BLOB), created, size, readings", (listed,)).fetchall()
            if rows:
                dropped += self._account_drop(reason, [
                    (bytes(d).decode(errors="replace"), c, s, r) for d, c, s, r in rows], now)
        return dropped

    def _quarantine(self, listed: str, now: float) -> None:
        """Keep the raw bytes of rows that no longer verify (the last QUARANTINE_KEEP)."""
        conn = self.conn
        conn.execute(
            "INSERT OR IGNORE INTO quarantine (pos, id, device, at, body)"
            " SELECT pos, CAST(id AS BLOB), CAST(device AS BLOB), ?, CAST(body AS BLOB)"
            " FROM outbox WHERE pos IN (SELECT value FROM json_each(?))", (now, listed))
        conn.execute("DELETE FROM quarantine WHERE pos NOT IN"
                     " (SELECT pos FROM quarantine ORDER BY pos DESC LIMIT ?)", (QUARANTINE_KEEP,))

    def _evict_over_cap(self, now: float) -> Counter[str]:
        """Lowest priority first, oldest first, until the events fit under the cap."""
        conn = self.conn
        dropped: Counter[str] = Counter()
        for priority in sorted(set(PRIORITY.values())):
            while self.totals.bytes > self.max_bytes:
                rows = conn.execute(
                    "DELETE FROM outbox WHERE pos IN (SELECT pos FROM outbox WHERE priority = ?"
                    " ORDER BY pos LIMIT ?) RETURNING device, created, size, readings",
                    (priority, self._rows_to_free()),
                ).fetchall()
                if not rows:
                    break
                dropped += self._account_drop("capacity", rows, now)
        return dropped

    def _rows_to_free(self) -> int:
        # Free 5% of the cap beyond the excess, so a full outbox does not evict on every commit.
        excess = self.totals.bytes - self.max_bytes + self.max_bytes // 20
        average = max(1, self.totals.bytes // max(1, self.totals.depth))
        return max(1, min(EVICT_CHUNK, excess // average + 1))

    def _account_drop(self, reason: str, rows: list[tuple[str, float, int, int]],
                      now: float, stored: bool = True) -> Counter[str]:
        """Count a drop (events and the readings they held), in memory and in the file,
        for the next announcement. Rows are (device, created, size, readings)."""
        values = sum(r[3] for r in rows)
        if stored:
            self.totals.depth -= len(rows)
            self.totals.bytes -= sum(r[2] for r in rows)
            self.totals.readings -= values
        self.totals.dropped[reason] += len(rows)
        self.totals.dropped_readings[reason] += values
        for table, count in (("drops", len(rows)), ("dropped_readings", values)):
            self.conn.execute(
                f"INSERT INTO {table} (reason, count) VALUES (?, ?)"
                " ON CONFLICT(reason) DO UPDATE SET count = count + excluded.count",
                (reason, count),
            )
        notice = self._notice
        notice.counts[reason] += len(rows)
        notice.readings[reason] += values
        notice.first = min(notice.first, min(r[1] for r in rows))
        notice.last = max(notice.last, max(r[1] for r in rows))
        notice.devices.update(r[0] for r in rows)
        return Counter({reason: len(rows)})

    def _account_lost(self, reason: str, count: int, first: float, last: float,
                      extra: dict[str, Any]) -> None:
        """Count events lost before they could be read (no row to account them by)."""
        self.totals.dropped[reason] += count
        self.conn.execute("INSERT INTO drops (reason, count) VALUES (?, ?)"
                          " ON CONFLICT(reason) DO UPDATE SET count = count + excluded.count",
                          (reason, count))
        notice = self._notice
        notice.counts[reason] += count
        notice.first, notice.last = min(notice.first, first), max(notice.last, last)
        notice.extra.update(extra)

    def _announce(self, now: float) -> None:
        """One data_dropped event per transaction that dropped anything: never a silent loss."""
        notice, self._notice = self._notice, Notice()
        if notice.counts:
            self._insert([data_dropped(dict(notice.counts), notice.first, notice.last,
                                       sorted(notice.devices), at=now,
                                       readings=dict(notice.readings),
                                       extra=notice.extra or None)], now)

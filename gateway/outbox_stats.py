"""Outbox figures: the ingest rate the writer measures, and what `millwright queue stats` reads.

The writer keeps an exponentially weighted rate of what enters the outbox (bytes and
readings per second over about a minute) and writes it into the file every few
seconds, so any process reading the file (`queue stats`, from a shell) can say how
many hours of outage `max_bytes` holds at the rate the gateway last measured.
"""

from __future__ import annotations

import math
import sqlite3
import time
from pathlib import Path
from typing import Any

RATE_WINDOW_S = 60.0
SAVE_EVERY_S = 10.0

RATES_SCHEMA = ("CREATE TABLE IF NOT EXISTS rates"
                " (name TEXT PRIMARY KEY, value REAL NOT NULL, at REAL NOT NULL)")


class IngestRate:
    """Bytes and readings per second entering the outbox, averaged over about a minute."""

    def __init__(self) -> None:
        self.bytes_per_s = 0.0
        self.readings_per_s = 0.0
        self.measured = False
        self._bytes = 0
        self._readings = 0
        self._since: float | None = None
        self._saved = -math.inf

    def add(self, size: int, readings: int) -> None:
        self._bytes += size
        self._readings += readings

    def tick(self, now: float) -> None:
        """Fold what entered since the last tick into the averages."""
        if self._since is None:
            self._since = now
            return
        elapsed = now - self._since
        if elapsed <= 0:
            return
        # The first interval is the first estimate; later ones move it, weighted by age.
        weight = 1.0 - math.exp(-elapsed / RATE_WINDOW_S) if self.measured else 1.0
        self.measured = True
        self.bytes_per_s += weight * (self._bytes / elapsed - self.bytes_per_s)
        self.readings_per_s += weight * (self._readings / elapsed - self.readings_per_s)
        self._bytes = self._readings = 0
        self._since = now

    def save_due(self, now: float) -> bool:
        if not self.measured or now - self._saved < SAVE_EVERY_S:
            return False
        self._saved = now
        return True

    def save(self, conn: sqlite3.Connection, now: float) -> None:
        conn.executemany(
            "INSERT INTO rates (name, value, at) VALUES (?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET value = excluded.value, at = excluded.at",
            [("bytes_per_s", self.bytes_per_s, now), ("readings_per_s", self.readings_per_s, now)])


def read_stats(path: Path, max_bytes: int | None = None) -> dict[str, Any]:
    """Outbox figures read from the file itself (for `millwright queue stats`, any process).

    `bytes_per_reading` is what the outbox holds per reading now, or, when it is empty,
    what entered it lately; `hours_at_current_rate` is how long an outage `max_bytes`
    rides out at the ingest rate the gateway last measured.
    """
    if not path.exists():
        return {"path": str(path), "exists": False}
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}
        readings_sql = "coalesce(sum(readings), 0)" if "readings" in columns else \
            "coalesce(sum(kind = 'telemetry'), 0)"  # an outbox from before frames
        depth, size, readings = conn.execute(
            f"SELECT count(*), coalesce(sum(size), 0), {readings_sql} FROM outbox").fetchone()
        oldest = conn.execute("SELECT created FROM outbox ORDER BY pos LIMIT 1").fetchone()
        by_kind = dict(conn.execute("SELECT kind, count(*) FROM outbox GROUP BY kind"))
        dropped = dict(conn.execute("SELECT reason, count FROM drops"))
        rates = _optional(conn, "SELECT name, value, at FROM rates")
        dropped_readings = dict(_optional(conn, "SELECT reason, count FROM dropped_readings"))
    finally:
        conn.close()
    rate = {name: (value, at) for name, value, at in rates}
    bytes_per_s = rate.get("bytes_per_s", (0.0, None))[0]
    readings_per_s = rate.get("readings_per_s", (0.0, None))[0]
    if readings:
        per_reading: float | None = size / readings
    elif readings_per_s > 0:
        per_reading = bytes_per_s / readings_per_s
    else:
        per_reading = None
    hours = None
    if max_bytes is not None and bytes_per_s > 0:
        hours = round(max_bytes / bytes_per_s / 3600, 1)
    measured = rate.get("bytes_per_s", (0.0, None))[1]
    return {
        "path": str(path), "exists": True, "depth": depth, "readings": readings, "bytes": size,
        "bytes_per_reading": None if per_reading is None else round(per_reading, 1),
        "oldest_age_s": round(time.time() - oldest[0], 3) if oldest else None,
        "by_kind": by_kind, "dropped": dropped, "dropped_readings": dropped_readings,
        "ingest": {"bytes_per_s": round(bytes_per_s, 1), "readings_per_s": round(readings_per_s, 1),
                   "measured_at": measured},
        "max_bytes": max_bytes, "hours_at_current_rate": hours,
    }


def _optional(conn: sqlite3.Connection, sql: str) -> list[Any]:
    """Rows of a table an older outbox may not have (none then)."""
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []

"""The outbox file's layout: its tables, the upgrade of older files, and how a row's body is kept.

A row holds its event's JSON, zstd-compressed when that saves space (bodies from
COMPRESS_FROM bytes: a 100-point frame's ~2 KB become ~0.9 KB, so an outbox of a given
size rides out about twice the outage). `body_text` reads either form, in any process.
"""

from __future__ import annotations

import sqlite3
import threading

import zstandard

from gateway.outbox_stats import RATES_SCHEMA

# Smaller bodies (a few values) gain a third at most, for CPU the writer thread needs more:
# measured, compressing every row cut small-event ingest from 81k to 56k events/s.
COMPRESS_FROM = 1024

INSERT_ROW = ("INSERT OR IGNORE INTO outbox"
              " (id, device, kind, priority, created, size, body, readings)"
              " VALUES (?, ?, ?, ?, ?, ?, ?, ?)")

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    pos      INTEGER PRIMARY KEY AUTOINCREMENT,  -- commit order; never reused
    id       TEXT    NOT NULL UNIQUE,            -- the CloudEvent id: duplicates stop here
    device   TEXT    NOT NULL,
    kind     TEXT    NOT NULL,
    priority INTEGER NOT NULL,
    created  REAL    NOT NULL,
    size     INTEGER NOT NULL,
    body     BLOB    NOT NULL,                   -- JSON text, or zstd of it (body_text)
    readings INTEGER NOT NULL DEFAULT 0            -- values in a telemetry frame
);
CREATE TABLE IF NOT EXISTS sequences (source TEXT PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS drops (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dropped_readings (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
""" + RATES_SCHEMA + ";\n"

# An outbox written before frames (one reading per telemetry row) has no `readings` column.
UPGRADE_V1 = """
ALTER TABLE outbox ADD COLUMN readings INTEGER NOT NULL DEFAULT 0;
UPDATE outbox SET readings = 1 WHERE kind = 'telemetry';
"""


class BodyPacker:
    """Compresses bodies for the writer thread (zstandard objects serve one thread)."""

    def __init__(self) -> None:
        self._compressor = zstandard.ZstdCompressor(level=1)

    def pack(self, text: str) -> str | bytes:
        """The body to store: `text`, or its zstd when that is smaller."""
        if len(text) < COMPRESS_FROM:
            return text
        packed = self._compressor.compress(text.encode())
        return packed if len(packed) < len(text) else text


def fetch(reader: sqlite3.Connection, after_pos: int,
          limit: int) -> list[tuple[int, str, str, str, float]]:
    """Rows after `after_pos` in commit order: (pos, device, kind, body as JSON text, created)."""
    return [(pos, device, kind, body_text(body), created)
            for pos, device, kind, body, created in reader.execute(
                "SELECT pos, device, kind, body, created FROM outbox WHERE pos > ?"
                " ORDER BY pos LIMIT ?", (after_pos, limit))]


_local = threading.local()


def body_text(stored: str | bytes) -> str:
    """An event's JSON from its stored body (plain text, or zstd of it)."""
    if isinstance(stored, str):
        return stored
    decompressor = getattr(_local, "decompressor", None)
    if decompressor is None:  # zstandard objects are for one thread at a time
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return str(decompressor.decompress(stored).decode())

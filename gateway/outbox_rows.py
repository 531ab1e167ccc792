"""The outbox file's layout: its tables, the upgrade of older files, and how a row's body is kept.

A row holds its event's JSON, zstd-compressed when that saves space (bodies from
COMPRESS_FROM bytes: a 100-point frame's ~2 KB become ~0.9 KB, so an outbox of a given
size rides out about twice the outage). `body_text` reads either form, in any process.
Each row carries the crc32 of its stored body: `read_batch` hands out only rows that
verify (older rows, without one, must decode and parse as JSON) and names the others.
"""

from __future__ import annotations

import sqlite3
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson
import zstandard

from gateway.outbox_stats import RATES_SCHEMA

# Smaller bodies (a few values) gain a third at most, for CPU the writer thread needs more:
# measured, compressing every row cut small-event ingest from 81k to 56k events/s.
COMPRESS_FROM = 1024

INSERT_ROW = ("INSERT OR IGNORE INTO outbox"
              " (id, device, kind, priority, created, size, body, readings, crc)"
              " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
QUARANTINE_KEEP = 100  # damaged rows kept (raw) for forensics; older ones are forgotten

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
    readings INTEGER NOT NULL DEFAULT 0,           -- values in a telemetry frame
    crc      INTEGER                             -- crc32 of body's bytes (NULL: older row)
);
CREATE TABLE IF NOT EXISTS quarantine (pos INTEGER PRIMARY KEY, id BLOB, device BLOB,
    at REAL NOT NULL, body BLOB);
CREATE TABLE IF NOT EXISTS sequences (source TEXT PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS drops (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dropped_readings (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
""" + RATES_SCHEMA + ";\n"

# An outbox written before frames (one reading per telemetry row) has no `readings` column.
UPGRADE_V1 = """
ALTER TABLE outbox ADD COLUMN readings INTEGER NOT NULL DEFAULT 0;
UPDATE outbox SET readings = 1 WHERE kind = 'telemetry';
"""
# An outbox written before row checksums: its rows are verified by decoding them.
UPGRADE_V2 = "ALTER TABLE outbox ADD COLUMN crc INTEGER;"


class BodyPacker:
    """Compresses bodies for the writer thread (zstandard objects serve one thread)."""

    def __init__(self) -> None:
        self._compressor = zstandard.ZstdCompressor(level=1)

    def pack(self, text: str) -> tuple[str | bytes, int]:
        """The body to store (`text`, or its zstd when that is smaller) and its crc32."""
        raw = text.encode()
        if len(raw) >= COMPRESS_FROM:
            packed = self._compressor.compress(raw)
            if len(packed) < len(raw):
                return packed, zlib.crc32(packed)
        return text, zlib.crc32(raw)


@dataclass(slots=True)
class Batch:
    """What one read found: good rows, the positions of rows that do not verify, and (when
    no good row was found) the last position the file had given out at that moment."""

    # (pos, device, kind, JSON text, created, id); the outbox makes them OutboxRows
    rows: list[Any] = field(default_factory=list)
    bad: list[int] = field(default_factory=list)
    end: int | None = None


_SELECT = ("SELECT pos, device, kind, CAST(body AS BLOB), created, crc, id FROM outbox"
           " WHERE pos > ? ORDER BY pos LIMIT ?")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Text columns as bytes, decoded here: invalid UTF-8 in one row then costs that row only.
_SELECT_RAW = ("SELECT pos, CAST(device AS BLOB), CAST(kind AS BLOB), CAST(body AS BLOB),"
               " typeof(body) = 'text', created, crc, CAST(id AS BLOB) FROM outbox"
               " WHERE pos > ? ORDER BY pos LIMIT ?")


def read_batch(reader: sqlite3.Connection, after_pos: int, limit: int) -> Batch:
    """Up to `limit` rows after `after_pos` that verify, in commit order, read past bad ones.

    One read transaction, so `end` matches the rows seen."""
    batch = Batch()
    reader.execute("BEGIN")
    try:
        while len(batch.rows) < limit:
            want = limit - len(batch.rows)
            try:
                seen = _read_chunk(reader, after_pos, want, batch)
            except sqlite3.OperationalError:  # text that is not UTF-8: the slower, exact way
                seen = _read_chunk_raw(reader, after_pos, want, batch)
            if seen is None:
                break
            after_pos = seen
        if not batch.rows:
            batch.end = reader.execute("SELECT coalesce(max(seq), 0) FROM sqlite_sequence"
                                       " WHERE name = 'outbox'").fetchone()[0]
    finally:
        reader.execute("COMMIT")
    return batch


def _read_chunk(reader: sqlite3.Connection, after_pos: int, want: int,
                batch: Batch) -> int | None:
    """Read up to `want` rows into `batch`; the last position read, or None at the end."""
    chunk = reader.execute(_SELECT, (after_pos, want)).fetchall()
    good, bad, crc32 = batch.rows.append, batch.bad.append, zlib.crc32
    for pos, device, kind, body, created, crc, event_id in chunk:
        # A text body is JSON ("{..."); a compressed one starts with zstd's magic number.
        if crc is not None and crc32(body) == crc and body[:1] == b"{":
            good((pos, device, kind, body.decode(), created, event_id))  # as written: UTF-8
            continue
        text = verified_text(body, not body.startswith(ZSTD_MAGIC), crc)
        if text is None:
            bad(pos)
        else:
            good((pos, device, kind, text, created, event_id))
    return chunk[-1][0] if len(chunk) == want else None


def _read_chunk_raw(reader: sqlite3.Connection, after_pos: int, want: int,
                    batch: Batch) -> int | None:
    chunk = reader.execute(_SELECT_RAW, (after_pos, want)).fetchall()
    for pos, device, kind, body, is_text, created, crc, event_id in chunk:
        text = verified_text(body, is_text, crc)
        try:
            if text is None:
                raise ValueError
            batch.rows.append((pos, device.decode(), kind.decode(), text, created,
                               event_id.decode(errors="replace")))
        except ValueError:  # UnicodeDecodeError included
            batch.bad.append(pos)
    return chunk[-1][0] if len(chunk) == want else None


def fetch(reader: sqlite3.Connection, after_pos: int,
          limit: int) -> list[tuple[int, str, str, str, float, str]]:
    """Rows after `after_pos` that verify: (pos, device, kind, body as JSON text, created,
    id)."""
    return read_batch(reader, after_pos, limit).rows


def verified_text(raw: bytes, is_text: bool, crc: int | None) -> str | None:
    """A stored body's JSON text, or None when it fails its checksum or (older rows, with
    no checksum) does not decode to JSON."""
    if crc is not None and zlib.crc32(raw) != crc:
        return None
    try:
        text = raw.decode() if is_text else body_text(raw)
        if crc is None:
            orjson.loads(text)
    except (UnicodeDecodeError, zstandard.ZstdError, orjson.JSONDecodeError):
        return None
    return text


_local = threading.local()


def body_text(stored: str | bytes) -> str:
    """An event's JSON from its stored body (plain text, or zstd of it)."""
    if isinstance(stored, str):
        return stored
    decompressor = getattr(_local, "decompressor", None)
    if decompressor is None:  # zstandard objects are for one thread at a time
        decompressor = _local.decompressor = zstandard.ZstdDecompressor()
    return str(decompressor.decompress(stored).decode())

"""The seq high-water marks kept beside the outbox file, so seqs a lost WAL tail took are announced.

The sequences table commits with the rows, so when a kill damages the WAL's last frames
the rows and their seqs vanish together and the consumer's gap check sees nothing. The
marks live in their own small file (`<outbox>.seq`), written before each transaction that
gives out seqs commits: at open, a source whose mark is above its stored seq lost the
seqs in between (or they were never committed: then their events were never accepted
either), and the outbox skips them and announces the range.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import orjson

log = logging.getLogger(__name__)


class SeqMarks:
    """The file of marks: rewritten in place before each commit that gives out seqs."""

    def __init__(self, db_path: Path, *, fsync: bool) -> None:
        self.path = db_path.with_name(db_path.name + ".seq")
        self.fsync = fsync  # durability "power": the mark must reach the disk before the rows
        self._fd: int | None = None
        self._size = 0
        self.last: dict[str, int] = {}  # what the file holds (as read, or last written)

    def read(self) -> dict[str, int]:
        """The marks last written; {} when there is no file or it is unreadable (logged)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("cannot read the outbox seq marks %s (%s): a lost WAL tail would go "
                        "unannounced this once", self.path, exc)
            return {}
        try:
            marks = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            marks = None
        if not isinstance(marks, dict) or not all(
                isinstance(k, str) and isinstance(v, int) for k, v in marks.items()):
            log.warning("the outbox seq marks %s are damaged; ignored (a lost WAL tail would "
                        "go unannounced this once)", self.path)
            return {}
        self.last = marks
        return marks

    def write(self, seq: dict[str, int]) -> None:
        """Replace the marks (raises OSError, e.g. a full disk: the commit must not happen)."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            self._size = os.fstat(self._fd).st_size
        # Padded with spaces, never truncated: one write, and the file always parses.
        data = orjson.dumps(seq).ljust(self._size)
        os.pwrite(self._fd, data, 0)
        self._size = len(data)
        self.last = dict(seq)
        if self.fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

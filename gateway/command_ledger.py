"""The command ledger: every command id seen, its intent and its one result, in SQLite.

`commands.db` in `gateway.data_dir`, WAL, `synchronous` as `store.durability` says
(NORMAL survives kill -9, FULL power loss). Each command's life is one row:
- `intent` is committed BEFORE the driver is asked to write;
- `result` (the result event's data) is committed after, before the result goes to
  the outbox; `sent` once the outbox has committed it.
A row with an intent and no result after a restart is a command interrupted between
its write and its result: it is never retried, its result is `uncertain`. A row with
a result not yet `sent` is appended to the outbox again (same event id: the outbox
keeps one). Rows are kept `keep_s` (at least twice `commands.max_age_s`): a
duplicate arriving later than that is older than `max_age_s` and refused as expired.

The calls block (sqlite3), so they run on one worker thread of their own, off the loop.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    device TEXT NOT NULL,
    received REAL NOT NULL,
    intent TEXT,            -- JSON of the values about to be written, or NULL
    result TEXT,            -- JSON of the result event's data, or NULL
    result_time REAL,
    sent INTEGER NOT NULL DEFAULT 0
)
"""


@dataclass(frozen=True, slots=True)
class Entry:
    """One command id as the ledger knows it."""

    id: str
    device: str
    intent: dict[str, Any] | None
    result: dict[str, Any] | None
    result_time: float | None
    sent: bool


class CommandLedger:
    """`await ledger.open()`, then look up, record intents and results; `close()` at the end."""

    def __init__(self, path: Path, *, keep_s: float, durability: str = "process") -> None:
        self.path = path
        self.keep_s = keep_s
        self.durability = durability
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def _run(self, call: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RuntimeError("the command ledger is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, call, *args)

    async def open(self) -> None:
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="command-ledger")
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if self.durability == 'power' else 'NORMAL'}")
        db.execute(_SCHEMA)
        self._db = db

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._run(self._close)
        self._executor.shutdown(wait=False)
        self._executor = None

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the command ledger is not open")
        return self._db

    async def lookup(self, command_id: str) -> Entry | None:
        return await self._run(self._lookup, command_id)

    def _lookup(self, command_id: str) -> Entry | None:
        row = self._conn().execute(
            "SELECT id, device, intent, result, result_time, sent FROM commands WHERE id = ?",
            (command_id,)).fetchone()
        return None if row is None else _entry(row)

    async def unfinished(self) -> list[Entry]:
        """Rows whose result is missing (interrupted) or not yet in the outbox."""
        return await self._run(self._unfinished)

    def _unfinished(self) -> list[Entry]:
        rows = self._conn().execute(
            "SELECT id, device, intent, result, result_time, sent FROM commands "
            "WHERE result IS NULL OR sent = 0 ORDER BY received").fetchall()
        return [_entry(row) for row in rows]

    async def record_intent(self, command_id: str, device: str, values: dict[str, Any]) -> bool:
        """Durably record that `values` are about to be written; False when the id is known
        already (then nothing is written: the id runs at most once)."""
        return await self._run(self._record_intent, command_id, device, values)

    def _record_intent(self, command_id: str, device: str, values: dict[str, Any]) -> bool:
        cursor = self._conn().execute(
            "INSERT OR IGNORE INTO commands (id, device, received, intent) VALUES (?, ?, ?, ?)",
            (command_id, device, time.time(), json.dumps(values)))
        return cursor.rowcount == 1

    async def record_result(self, command_id: str, device: str, result: dict[str, Any],
                            at: float) -> None:
        """The command's one result (a refusal, which had no intent, too)."""
        await self._run(self._record_result, command_id, device, result, at)

    def _record_result(self, command_id: str, device: str, result: dict[str, Any],
                       at: float) -> None:
        # One statement, so one transaction: a refusal is never left as a bare row.
        self._conn().execute(
            "INSERT INTO commands (id, device, received, result, result_time) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET result = excluded.result, "
            "result_time = excluded.result_time WHERE commands.result IS NULL",
            (command_id, device, time.time(), json.dumps(result), at))

    async def mark_sent(self, command_id: str) -> None:
        await self._run(self._mark_sent, command_id)

    def _mark_sent(self, command_id: str) -> None:
        self._conn().execute("UPDATE commands SET sent = 1 WHERE id = ?", (command_id,))

    async def prune(self, now: float | None = None) -> int:
        """Forget finished commands received more than `keep_s` ago; how many."""
        return await self._run(self._prune, time.time() if now is None else now)

    def _prune(self, now: float) -> int:
        cursor = self._conn().execute(
            "DELETE FROM commands WHERE sent = 1 AND received < ?", (now - self.keep_s,))
        return cursor.rowcount


def _entry(row: tuple[Any, ...]) -> Entry:
    command_id, device, intent, result, result_time, sent = row
    return Entry(command_id, device, None if intent is None else json.loads(intent),
                 None if result is None else json.loads(result), result_time, bool(sent))

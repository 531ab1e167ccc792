"""The chaos run's books: the CloudEvents the cloud received, checked against what was committed.

The outbox gives each event it stores the next `seq` of its source, in commit order,
with no gaps, and commits the sequences table with the rows (gateway/outbox_db.py).
So a committed event is lost exactly when its (source, seq) never reaches the cloud:
at the end, every source's seqs at the cloud must be 1..last, `last` read from the
outbox file. The ledger also checks that copies of one id agree, that no (source, seq)
was given to two ids (a commit lost and its seq reused), and that every row seen in
the outbox right after a SIGKILL arrived, body for body. Seqs the gateway itself
announced as lost (a data_dropped naming `unrecovered` seq ranges, after a kill tore
the WAL's tail) are not silent losses: they are counted apart, as `announced`.

`Ledger.on_event` runs on the cloud listener's paho thread: it only records, under a lock.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from gateway.outbox_rows import body_text


def _canonical(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event, option=orjson.OPT_SORT_KEYS)


def _reading_part(event: dict[str, Any]) -> bytes:
    """What a frame read twice must repeat: all but its seq."""
    return _canonical({k: v for k, v in event.items() if k != "seq"})


def epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339).timestamp()


@dataclass
class Watch:
    """Set when telemetry sampled at or after `since` reaches the cloud."""

    device: str
    since: float
    arrived_at: float | None = None


@dataclass
class Verdict:
    """The end-of-run check; `ok` only when nothing committed went missing or disagreed."""

    produced: int
    delivered: int
    copies: int
    duplicates: int
    replayed: int  # same id and seq again: a row resent after a reconnect or a kill
    reingested: int  # same id, new seq: the device gave the same reading again
    lost: int
    holes: dict[str, list[int]]  # silent: no announcement covers them
    announced: dict[str, list[int]]  # seqs missing, but announced as unrecovered
    snapshot_rows: int
    snapshot_missing: int
    conflicts: list[str]
    beyond_committed: int
    by_kind: dict[str, int]

    @property
    def ok(self) -> bool:
        return not (self.lost or self.snapshot_missing or self.conflicts or self.beyond_committed)


@dataclass
class Ledger:
    """Everything the cloud subscriber received, indexed for the checks."""

    first_copy: dict[str, tuple[str, int, bytes]] = field(default_factory=dict)  # id -> src, seq
    by_seq: dict[tuple[str, int], str] = field(default_factory=dict)  # (source, seq) -> id
    seqs: dict[str, set[int]] = field(default_factory=dict)
    low_water: dict[str, int] = field(default_factory=dict)  # 1..n all seen, per source
    copies: int = 0
    replayed: int = 0
    reingested: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    conflicts: list[str] = field(default_factory=list)
    statuses: list[tuple[str, str, float]] = field(default_factory=list)  # device, status, time
    unrecovered: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # announced
    _watches: list[Watch] = field(default_factory=list)
    _on_next: list[Callable[[], object]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- the listener's thread ------------------------------------------------------------

    def on_event(self, topic: str, event: dict[str, Any]) -> None:
        now = time.time()
        source, seq, event_id = event.get("source"), event.get("seq"), event.get("id")
        if not (isinstance(source, str) and isinstance(seq, int) and isinstance(event_id, str)):
            with self._lock:
                self.conflicts.append(f"event without source/seq/id on {topic}: {event!r:.200}")
            return
        if self._on_next:
            with self._lock:
                triggers, self._on_next = self._on_next, []
            for trigger in triggers:
                trigger()
        body = _canonical(event)
        with self._lock:
            self.copies += 1
            self._record(source, seq, event_id, body, event)
            kind = event.get("type", "")
            if self._watches and kind.endswith(".telemetry"):
                self._check_watches(event, now)
            elif kind.endswith(".data_dropped"):
                self._note_unrecovered(event.get("data") or {})
            elif kind.endswith(".device_status"):
                data = event.get("data") or {}
                self.statuses.append((str(data.get("device")), str(data.get("status")),
                                      epoch(str(event.get("time")))))

    def _record(self, source: str, seq: int, event_id: str, body: bytes,
                event: dict[str, Any]) -> None:
        first = self.first_copy.get(event_id)
        if first is not None:
            first_source, first_seq, first_body = first
            if (first_source, first_seq) == (source, seq):
                self.replayed += 1
                if body != first_body:
                    self.conflicts.append(f"id {event_id} at {source} seq {seq} arrived twice "
                                          "with different contents")
                return
            self.reingested += 1
            if _reading_part(orjson.loads(first_body)) != _reading_part(event):
                self.conflicts.append(f"id {event_id} arrived as {first_source} seq {first_seq} "
                                      f"and {source} seq {seq} with different readings")
        else:
            self.first_copy[event_id] = (source, seq, body)
            self.by_kind[event.get("type", "?").rsplit(".", 1)[-1]] += 1
        holder = self.by_seq.setdefault((source, seq), event_id)
        if holder != event_id:
            self.conflicts.append(f"{source} seq {seq} was given to two events: {holder} and "
                                  f"{event_id} (a committed event was lost and its seq reused)")
            return
        self.seqs.setdefault(source, set()).add(seq)
        self._advance(source)

    def _advance(self, source: str) -> None:
        """Move the source's low-water mark over seqs seen or announced as lost."""
        seen = self.seqs.get(source, set())
        low = self.low_water.get(source, 0)
        while low + 1 in seen or self._is_announced(source, low + 1):
            low += 1
        self.low_water[source] = low

    def _note_unrecovered(self, data: dict[str, Any]) -> None:
        for lost in data.get("unrecovered") or []:
            source, first, last = lost.get("source"), lost.get("first_seq"), lost.get("last_seq")
            if isinstance(source, str) and isinstance(first, int) and isinstance(last, int):
                self.unrecovered.setdefault(source, []).append((first, last))
                self._advance(source)

    def _is_announced(self, source: str, seq: int) -> bool:
        return any(a <= seq <= b for a, b in self.unrecovered.get(source, []))

    def _check_watches(self, event: dict[str, Any], now: float) -> None:
        data = event.get("data") or {}
        device, sampled = data.get("device"), data.get("time")
        pending = [w for w in self._watches if w.device == device]
        if not pending or not isinstance(sampled, str):
            return
        at = epoch(sampled)
        for watch in pending:
            if at >= watch.since:
                watch.arrived_at = now
                self._watches.remove(watch)

    # -- the harness ---------------------------------------------------------------------

    def on_next_event(self, trigger: Callable[[], object]) -> None:
        """Call `trigger` (on the listener's thread) as soon as the next event arrives."""
        with self._lock:
            self._on_next.append(trigger)

    def disarm(self) -> None:
        with self._lock:
            self._on_next.clear()

    def watch(self, device: str, since: float) -> Watch:
        watch = Watch(device, since)
        with self._lock:
            self._watches.append(watch)
        return watch

    def caught_up(self, committed: dict[str, int]) -> bool:
        """True when every source has all its seqs up to `committed[source]` at the cloud."""
        with self._lock:
            return all(self.low_water.get(source, 0) >= last for source, last in committed.items())

    def went_offline(self, device: str, start: float, end: float) -> bool:
        """Whether the gateway reported `device` offline between `start` and `end`."""
        with self._lock:
            return any(d == device and status == "offline" and start <= at <= end
                       for d, status, at in self.statuses)

    def verify(self, committed: dict[str, int], snapshots: list[list[dict[str, Any]]]) -> Verdict:
        """Check the cloud's events against the outbox's final sequences and the kill snapshots."""
        with self._lock:
            holes: dict[str, list[int]] = {}
            announced: dict[str, list[int]] = {}
            delivered = beyond = 0
            for source, last in committed.items():
                seen = self.seqs.get(source, set())
                missing = [n for n in range(1, last + 1) if n not in seen]
                told = [n for n in missing if self._is_announced(source, n)]
                silent = [n for n in missing if not self._is_announced(source, n)]
                if silent:
                    holes[source] = silent
                if told:
                    announced[source] = told
                delivered += last - len(missing)
            for source, seen in self.seqs.items():
                beyond += sum(1 for n in seen if n > committed.get(source, 0))
            lost_keys = {(s, n) for s, ns in holes.items() for n in ns}
            conflicts = list(self.conflicts)
            rows = missing_rows = 0
            for snapshot in snapshots:
                for row in snapshot:
                    rows += 1
                    first = self.first_copy.get(row["id"])
                    if first is None:
                        missing_rows += 1
                        lost_keys.add((row["source"], row["seq"]))
                    elif first[:2] == (row["source"], row["seq"]) and \
                            first[2] != _canonical(row):
                        conflicts.append(f"id {row['id']} reached the cloud differing from "
                                         "the outbox row")
            return Verdict(
                produced=sum(committed.values()), delivered=delivered, copies=self.copies,
                duplicates=self.copies - len(self.first_copy), replayed=self.replayed,
                reingested=self.reingested, lost=len(lost_keys), holes=holes,
                announced=announced,
                snapshot_rows=rows, snapshot_missing=missing_rows, conflicts=conflicts,
                beyond_committed=beyond, by_kind=dict(self.by_kind))


# -- the outbox file, read-only, from outside the gateway ---------------------------------

def _read(path: Path, query: str) -> list[tuple[Any, ...]]:
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def outbox_rows(path: Path) -> list[dict[str, Any]]:
    """Every event the outbox holds (accepted, not yet acknowledged by the cloud broker)."""
    return [orjson.loads(body_text(body))
            for (body,) in _read(path, "SELECT body FROM outbox ORDER BY pos")]


def committed_sequences(path: Path) -> dict[str, int]:
    """The last seq the outbox gave each source: every event it ever stored, per source."""
    return {source: last for source, last in _read(path, "SELECT source, last FROM sequences")}


def outbox_depth(path: Path) -> int | None:
    """Rows in the outbox now; None when the file cannot be read at this moment."""
    try:
        rows = _read(path, "SELECT count(*) FROM outbox")
    except sqlite3.Error:
        return None
    return rows[0][0] if rows else 0


def outbox_drops(path: Path) -> dict[str, int]:
    return {reason: count for reason, count in _read(path, "SELECT reason, count FROM drops")}

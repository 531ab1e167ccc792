"""The outbox under hostile events: odd, huge and control-character strings are stored and read
back byte for byte, seq stays contiguous, and SQLite's integrity check passes after every round.

The fuzzing runs on the outbox's synchronous SQLite layer (gateway/outbox_db.py, the
code every commit goes through); the asyncio face is exercised with the largest cases.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import tempfile
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import events
from gateway.cloudevents import decode
from gateway.config import StoreSection
from gateway.frames import Frame
from gateway.outbox_db import OutboxDb
from gateway.outbox_rows import body_text, fetch
from gateway.outbox_stats import read_stats
from gateway.store import Outbox

T0 = 1_790_000_000.0
PREFIX = "/plant/gw"
# Strings a device, a broker or a config could carry: anything that is valid Unicode text.
hostile_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=50) | st.sampled_from(
    ["", "\x00", "a\x00b", "\x1b[2J", "\u202eevil", "'; DROP TABLE outbox; --", "%s%n", "../..",
     "+/#", "\ufeff", "\U0001f600" * 10, "x" * 5000])
values = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
          | hostile_text)


@st.composite
def hostile_events(draw: st.DrawFn) -> events.Event:
    device = draw(hostile_text)
    kind = draw(st.sampled_from(["telemetry", "telemetry", "status", "maintenance"]))
    at = draw(st.floats(0, 4e9))
    if kind == "telemetry":
        points = draw(st.dictionaries(hostile_text, values, min_size=1, max_size=6))
        odd_times = {p: draw(st.floats(0, 4e9)) for p in points if draw(st.booleans())}
        quality = {p: draw(st.sampled_from(["bad", "uncertain"]))
                   for p in points if draw(st.booleans())}
        return events.telemetry(Frame(device, at, points, at, quality, odd_times))
    if kind == "status":
        return events.device_status(device, draw(hostile_text), draw(hostile_text), at=at)
    data = draw(st.dictionaries(hostile_text, values, max_size=4))
    return events.maintenance_needed(device, data, draw(hostile_text), at=at)


def integrity(conn: sqlite3.Connection) -> str:
    return conn.execute("PRAGMA integrity_check").fetchone()[0]


def check_stored(db: OutboxDb, committed: list[events.Event]) -> None:
    """Every distinct event is stored once, intact, with a gap-free seq per source."""
    rows = fetch(db.conn, 0, 1_000_000)
    expected: dict[str, events.Event] = {}
    for event in committed:
        expected.setdefault(event.id, event)  # the first with an id is stored, later ones dropped
    assert len(rows) == len(expected)
    seqs: dict[str, list[int]] = defaultdict(list)
    for _pos, device, kind, body, _created, _id in rows:
        [event] = decode(body.encode())
        original = expected[event["id"]]
        assert device == original.device and kind == original.kind
        assert event["data"] == orjson.loads(orjson.dumps(original.data))  # NaN -> null
        assert event["source"] == db.source(original.device)
        assert event["subject"] == original.subject
        seqs[event["source"]].append(event["seq"])
    for source, numbers in seqs.items():
        assert numbers == list(range(1, len(numbers) + 1)), source
    # Each row counts the values its frame holds (other kinds hold none).
    assert dict(db.conn.execute("SELECT id, readings FROM outbox")) == {
        id_: len(event.data["values"]) if event.kind == "telemetry" else 0
        for id_, event in expected.items()}
    assert integrity(db.conn) == "ok"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(hostile_events(), max_size=20), min_size=1, max_size=5))
def test_hostile_events_are_stored_and_read_back_intact(batches: list[list[events.Event]]
                                                        ) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "outbox.db"
        db = OutboxDb(path, source_prefix=PREFIX, max_bytes=1 << 30, ttl_s=1e9,
                      durability="process")
        db.open()
        committed: list[events.Event] = []
        try:
            for batch in batches:
                db.commit(batch + batch[:2], [], now=T0)  # duplicates in the same commit too
                committed += batch
                check_stored(db, committed)
            depth, size, readings = db.totals.depth, db.totals.bytes, db.totals.readings
            assert readings == sum(len(e.data["values"]) for e in
                                   {e.id: e for e in committed}.values() if e.kind == "telemetry")
        finally:
            db.close()
        again = OutboxDb(path, source_prefix=PREFIX, max_bytes=1 << 30, ttl_s=1e9,
                         durability="process")
        again.open()
        try:
            assert (again.totals.depth, again.totals.bytes, again.totals.readings) == (
                depth, size, readings)
            check_stored(again, committed)
        finally:
            again.close()
        assert read_stats(path)["depth"] == depth  # `millwright queue stats` reads it too


@settings(max_examples=100, deadline=None)
@given(st.lists(hostile_events(), min_size=1, max_size=40), st.integers(4096, 40_000))
def test_hostile_events_under_a_tiny_byte_cap_evict_cleanly(batch: list[events.Event],
                                                            cap: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        db = OutboxDb(Path(directory) / "outbox.db", source_prefix=PREFIX, max_bytes=cap,
                      ttl_s=1e9, durability="process")
        db.open()
        accepted = 0  # the readings of the telemetry the outbox took in
        try:
            for event in batch:
                if db.commit([event], [], now=T0).inserted:
                    accepted += event.readings
            stored = db.conn.execute("SELECT count(*), coalesce(sum(size), 0),"
                                     " coalesce(sum(readings), 0) FROM outbox").fetchone()
            assert stored == (db.totals.depth, db.totals.bytes, db.totals.readings)
            # Nothing leaves without being counted: every row ever stored is still there or
            # was evicted, and so is every reading.
            assert db.totals.max_pos - db.totals.depth == db.totals.dropped["capacity"]
            assert accepted == db.totals.readings + db.totals.dropped_readings["capacity"]
            assert set(db.totals.dropped) <= {"capacity"}
            assert set(db.totals.dropped_readings) <= {"capacity"}
            assert integrity(db.conn) == "ok"
            for (body,) in db.conn.execute("SELECT body FROM outbox"):
                decode(body_text(body).encode())
        finally:
            db.close()


async def test_huge_and_control_character_events_through_the_async_outbox(
        tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", StoreSection(), source_prefix=PREFIX)
    await outbox.open()
    names = ["\x00", "nul\x00inside", "\x1b[31mred", "line\nbreak", "tab\t", "\u202eevil",
             "Presse S\u00fcd", "+", "#", "/", "../../etc", "\U0001f600", "x" * 10_000]
    made = [events.telemetry(Frame(name, T0 + i, {name: name}, T0 + i))
            for i, name in enumerate(names)]
    made.append(events.telemetry(Frame("big", T0, {"blob": "\u00e9" * (4 << 20)}, T0)))
    try:
        await outbox.append(made)
        rows = await outbox.fetch(0, 1000)
        assert len(rows) == len(made)
        for row, event in zip(rows, made, strict=True):
            [back] = decode(row.body.encode())
            assert back["data"] == event.data and row.device == event.device
    finally:
        await outbox.close()
    conn = sqlite3.connect(tmp_path / "outbox.db")
    try:
        assert integrity(conn) == "ok"
    finally:
        conn.close()


@pytest.mark.parametrize("bad", [
    events.telemetry(Frame("d", T0, {"p": 2**64}, T0)),
    events.device_status("d", "offline", "server said \udcff", at=T0),
], ids=["integer-past-64-bits", "lone-surrogate-in-a-status-reason"])
async def test_broken_text_and_huge_integers_are_stored_representably(
        tmp_path: Path, bad: events.Event) -> None:
    outbox = Outbox(tmp_path / "outbox.db", StoreSection(), source_prefix=PREFIX)
    await outbox.open()
    try:
        await asyncio.wait_for(outbox.append([bad]), 2)
        [row] = await outbox.fetch(0, 10)
        body = json.loads(row.body)  # valid JSON and valid Unicode
        assert body["id"] == bad.id
        assert body["data"].get("values") == {"p": float(2**64)} or \
            "\ufffd" in body["data"]["reason"]
    finally:
        await asyncio.wait_for(outbox.close(), 5)


async def test_data_no_json_can_carry_is_counted_and_the_outbox_goes_on(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", StoreSection(), source_prefix=PREFIX)
    await outbox.open()
    bad = events.maintenance_needed("a", {"inputs": object()}, "k", at=T0)
    # A frame holding one such value is refused whole, and its readings are counted with it.
    bad_frame = events.telemetry(Frame("d", T0 + 1, {"p": object(), "q": 2, "r": 3}, T0))
    good = events.telemetry(Frame("d", T0, {"p": 1}, T0))
    try:
        await asyncio.wait_for(outbox.append([bad, bad_frame, good]), 2)
        await asyncio.wait_for(outbox.append([good]), 2)
        bodies = [json.loads(r.body) for r in await outbox.fetch(0, 10)]
        kinds = [b["type"].rsplit(".", 1)[1] for b in bodies]
        assert kinds.count("telemetry") == 1 and kinds.count("data_dropped") == 1
        assert "maintenance_needed" not in kinds
        assert outbox.stats().dropped == {"unencodable": 2}
        assert outbox.stats().readings == 1
        [notice] = [b["data"] for b in bodies if b["type"].endswith("data_dropped")]
        assert notice["dropped"] == 2 and notice["by_reason"] == {"unencodable": 2}
        assert notice["readings"] == 3 and notice["readings_by_reason"] == {"unencodable": 3}
    finally:
        await asyncio.wait_for(outbox.close(), 5)
    assert read_stats(tmp_path / "outbox.db")["dropped_readings"] == {"unencodable": 3}

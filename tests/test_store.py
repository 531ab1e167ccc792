"""The outbox on a real SQLite file: order, dedup, acks, restarts, eviction, TTL, corruption."""

from __future__ import annotations

import json
import time
from pathlib import Path

from gateway import events
from gateway.config import StoreSection
from gateway.frames import Frame
from gateway.outbox_db import OutboxDb
from gateway.outbox_rows import body_text
from gateway.outbox_stats import read_stats
from gateway.store import Outbox

T0 = 1_790_000_000.0


def readings(device: str, n: int, start: int = 0, points: int = 1) -> list[events.Event]:
    """n telemetry events (frames) numbered from `start`, each of `points` values."""
    return [events.telemetry(Frame(device, T0 + i, {f"p{k}": float(i) for k in range(points)},
                                   T0 + i)) for i in range(start, start + n)]


async def open_outbox(path: Path, **store: object) -> Outbox:
    outbox = Outbox(path, StoreSection(**store), source_prefix="/plant/gw")
    await outbox.open()
    return outbox


async def test_rows_come_back_in_commit_order_with_contiguous_seq(tmp_path: Path):
    outbox = await open_outbox(tmp_path / "o.db")
    try:
        await outbox.append(readings("a", 3) + readings("b", 2))
        await outbox.append(readings("a", 2, start=3))
        rows = await outbox.fetch(0, 100)
        bodies = [json.loads(r.body) for r in rows]
        assert [r.device for r in rows] == ["a", "a", "a", "b", "b", "a", "a"]
        assert [b["seq"] for b in bodies if b["source"] == "/plant/gw/a"] == [1, 2, 3, 4, 5]
        assert [b["data"]["values"]["p0"] for b in bodies if b["data"]["device"] == "a"] == [
            0.0, 1.0, 2.0, 3.0, 4.0]
        assert [r.pos for r in await outbox.fetch(rows[2].pos, 2)] == [rows[3].pos, rows[4].pos]
    finally:
        await outbox.close()


async def test_the_same_event_is_stored_once(tmp_path: Path):
    path = tmp_path / "o.db"
    outbox = await open_outbox(path)
    try:
        await outbox.append(readings("a", 5))
        await outbox.append(readings("a", 5) + readings("a", 1, start=5))
        stats = outbox.stats()
        assert stats.depth == 6
        assert stats.bytes == read_stats(path)["bytes"]  # the byte count ignores the duplicates
        assert stats.readings == 6 == read_stats(path)["readings"]  # and so do the readings
    finally:
        await outbox.close()


async def test_acked_rows_leave_and_the_rest_survive_a_restart(tmp_path: Path):
    path = tmp_path / "o.db"
    outbox = await open_outbox(path)
    await outbox.append(readings("a", 10))
    rows = await outbox.fetch(0, 100)
    outbox.ack(r.pos for r in rows[:4])
    await outbox.close()  # close commits pending acks

    outbox = await open_outbox(path)
    try:
        left = await outbox.fetch(0, 100)
        assert [r.pos for r in left] == [r.pos for r in rows[4:]]
        assert outbox.stats().depth == 6
        assert outbox.stats().readings == 6  # the acked rows' readings left with them
        await outbox.append(readings("a", 1, start=10))
        newest = json.loads((await outbox.fetch(left[-1].pos, 1))[0].body)
        assert newest["seq"] == 11  # seq survives the restart; positions are never reused
    finally:
        await outbox.close()
    assert read_stats(path)["depth"] == 7 and read_stats(path)["readings"] == 7


async def test_wait_new_wakes_on_commit(tmp_path: Path):
    import asyncio

    outbox = await open_outbox(tmp_path / "o.db")
    try:
        waiter = asyncio.create_task(outbox.wait_new(0))
        await asyncio.sleep(0)
        assert not waiter.done()
        await outbox.append(readings("a", 1))
        await asyncio.wait_for(waiter, 5)
        assert await outbox.wait_empty(0.05) is False
        outbox.ack([1])
        assert await outbox.wait_empty(5) is True
    finally:
        await outbox.close()


async def test_dropped_rows_leave_counted_and_announced_with_their_reason(tmp_path: Path):
    path = tmp_path / "o.db"
    outbox = await open_outbox(path)
    try:
        await outbox.append(readings("a", 4, points=3))
        rows = await outbox.fetch(0, 100)
        outbox.drop([rows[1].pos, rows[2].pos], "refused")
        assert await outbox.wait_empty(0.05) is False
        left = await outbox.fetch(0, 100)
        assert [r.pos for r in left[:2]] == [rows[0].pos, rows[3].pos]
        notice = json.loads(left[2].body)
        assert notice["type"] == "io.millwright.data_dropped"
        assert notice["data"]["by_reason"] == {"refused": 2}
        assert notice["data"]["readings_by_reason"] == {"refused": 6}
        assert notice["data"]["devices"] == ["a"]
        assert outbox.stats().dropped == {"refused": 2}
        assert outbox.stats().readings == 6  # the two rows left, 3 values each
    finally:
        await outbox.close()
    assert read_stats(path)["dropped"] == {"refused": 2}


async def test_full_outbox_evicts_oldest_telemetry_and_keeps_maintenance(tmp_path: Path):
    path = tmp_path / "o.db"
    outbox = await open_outbox(path, max_bytes=1 << 16)
    alarm = events.maintenance_needed("press-1", {"probability": 0.97}, "inputs-1", at=T0)
    try:
        await outbox.append(readings("a", 10, points=3))
        await outbox.append([alarm])
        for start in range(10, 400, 30):
            await outbox.append(readings("a", 30, start=start, points=3))
        stats = outbox.stats()
        assert stats.bytes <= 1 << 16
        assert stats.dropped["capacity"] > 0
        rows = [json.loads(r.body) for r in await outbox.fetch(0, 10_000)]
    finally:
        await outbox.close()
    kinds = [r["type"].rsplit(".", 1)[1] for r in rows]
    assert "maintenance_needed" in kinds
    frames = [r["data"]["values"] for r in rows if r["type"].endswith("telemetry")]
    values = [f["p0"] for f in frames]
    assert values == sorted(values) and values[-1] == 399.0 and values[0] > 0  # oldest went
    # Readings are counted as well as events: each dropped frame held three, and every one
    # of the 400 frames committed is either still held or counted as dropped.
    assert stats.readings == 3 * len(frames)
    assert len(frames) + stats.dropped["capacity"] == 400
    notices = [r["data"] for r in rows if r["type"].endswith("data_dropped")]
    assert sum(n["by_reason"]["capacity"] for n in notices) == stats.dropped["capacity"]
    assert sum(n["readings_by_reason"]["capacity"] for n in notices) == \
        3 * stats.dropped["capacity"] == sum(n["readings"] for n in notices)
    assert notices[0]["devices"] == ["a"]
    on_file = read_stats(path)
    assert on_file["dropped"] == {"capacity": stats.dropped["capacity"]}
    assert on_file["dropped_readings"] == {"capacity": 3 * stats.dropped["capacity"]}
    assert on_file["readings"] == stats.readings


def test_ttl_drops_expired_rows_and_announces_it(tmp_path: Path):
    db = OutboxDb(tmp_path / "o.db", source_prefix="/p/g", max_bytes=1 << 30, ttl_s=3600,
                  durability="process")
    db.open()
    try:
        db.commit(readings("a", 5, points=2), [], now=T0)
        db.commit(readings("b", 3, points=2), [], now=T0 + 1800)
        dropped = db.expire(now=T0 + 3700)
        assert dropped == {"ttl": 5}
        assert db.totals.dropped_readings == {"ttl": 10} and db.totals.readings == 6
        rows = db.conn.execute("SELECT device, kind FROM outbox ORDER BY pos").fetchall()
        assert rows == [("b", "telemetry")] * 3 + [("_gateway", "data_dropped")]
        [(body,)] = db.conn.execute("SELECT body FROM outbox WHERE kind = 'data_dropped'")
        notice = json.loads(body_text(body))["data"]
        assert (notice["dropped"], notice["by_reason"]) == (5, {"ttl": 5})
        assert (notice["readings"], notice["readings_by_reason"]) == (10, {"ttl": 10})
        assert notice["devices"] == ["a"]
        assert db.expire(now=T0 + 3700) == {}
        assert db.totals.dropped_readings == {"ttl": 10}
    finally:
        db.close()


def test_rows_stamped_by_an_unset_clock_are_not_expired(tmp_path: Path):
    db = OutboxDb(tmp_path / "o.db", source_prefix="/p/g", max_bytes=1 << 30, ttl_s=60,
                  durability="power")
    db.open()
    try:
        db.commit(readings("a", 2), [], now=1000.0)  # a Pi booted without RTC: 1970
        assert db.expire(now=time.time()) == {}
        assert db.totals.depth == 2 and db.totals.readings == 2
        assert not db.totals.dropped and not db.totals.dropped_readings
    finally:
        db.close()


async def test_a_corrupt_outbox_is_moved_aside_and_replaced(tmp_path: Path):
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not a database" * 100)
    outbox = await open_outbox(path)
    try:
        assert outbox.moved_aside and Path(outbox.moved_aside).exists()
        await outbox.append(readings("a", 1))
        assert outbox.stats().depth == 2  # the reading, and the announcement of the move
    finally:
        await outbox.close()

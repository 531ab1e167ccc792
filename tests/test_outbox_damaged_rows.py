"""A row damaged on disk is quarantined, counted and announced; the rows around it still flow."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from gateway import events
from gateway.config import StoreSection
from gateway.frames import Frame
from gateway.outbox_rows import body_text
from gateway.runtime import Gateway
from gateway.store import Outbox
from simulators.cloud_listener import CloudListener
from simulators.mosquitto import Mosquitto
from simulators.wait import until
from tests.support import configs

T0 = 1_790_000_000.0
MARK = b"marker_abcdef"
UPGRADE_FIXTURE = Path(__file__).parent / "cases" / "upgrade" / "outbox-v1.db"


def frame(i: int, key: str = "p") -> events.Event:
    return events.telemetry(Frame("a", T0 + i, {key: float(i)}, T0 + i))


async def open_outbox(path: Path) -> Outbox:
    outbox = Outbox(path, StoreSection(), source_prefix="/plant/gw")
    await outbox.open()
    return outbox


async def damaged_outbox(path: Path, replacement: bytes, *, old_rows: bool = False) -> None:
    """Five rows, the third one's body changed by one byte in the file itself."""
    outbox = await open_outbox(path)
    await outbox.append([frame(0), frame(1), frame(2, MARK.decode()), frame(3), frame(4)])
    await outbox.close()  # the last connection checkpoints: every row is in the main file
    if old_rows:  # rows of a file from before checksums
        conn = sqlite3.connect(path)
        conn.execute("UPDATE outbox SET crc = NULL")
        conn.commit()
        conn.close()
    data = path.read_bytes()
    assert data.count(MARK) == 1
    path.write_bytes(data.replace(MARK, replacement))


@pytest.mark.parametrize(("replacement", "old_rows"), [
    (MARK[:-1] + b"\xff", False),  # invalid UTF-8
    (MARK[:-1] + b'"', False),  # one changed ASCII character: no longer JSON
    (MARK[:-1] + b"g", False),  # still JSON, but not what was stored: the checksum sees it
    (MARK[:-1] + b'"', True),  # an older row without checksum: parsed to be verified
])
async def test_a_damaged_row_is_quarantined_announced_and_the_rest_flow(
        tmp_path: Path, replacement: bytes, old_rows: bool) -> None:
    path = tmp_path / "outbox.db"
    await damaged_outbox(path, replacement, old_rows=old_rows)
    outbox = await open_outbox(path)
    try:
        rows = await outbox.fetch(0, 100)
        bodies = [json.loads(row.body) for row in rows]  # every body handed out is JSON
        assert [b["data"]["values"] for b in bodies] == [{"p": 0.0}, {"p": 1.0}, {"p": 3.0},
                                                          {"p": 4.0}]
        await until(lambda: outbox.stats().dropped.get("corrupt") == 1, 10,
                    "the damaged row dropped as corrupt")
        rows = await outbox.fetch(0, 100)
        announced = [json.loads(r.body)["data"] for r in rows if r.kind == "data_dropped"]
        assert announced and announced[0]["by_reason"] == {"corrupt": 1}
        assert announced[0]["devices"] == ["a"]
        assert len([r for r in rows if r.kind == "telemetry"]) == 4
    finally:
        await outbox.close()
    conn = sqlite3.connect(path)
    try:
        [(raw,)] = conn.execute("SELECT body FROM quarantine").fetchall()
        assert replacement in bytes(raw)
    finally:
        conn.close()


async def test_rows_written_now_carry_a_checksum_that_verifies(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    outbox = await open_outbox(path)
    try:
        big = events.telemetry(Frame("a", T0, {f"p{k}": float(k) for k in range(200)}, T0))
        await outbox.append([frame(0), big])
        assert len(await outbox.fetch(0, 10)) == 2
    finally:
        await outbox.close()
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT typeof(body), crc, body FROM outbox ORDER BY pos").fetchall()
    finally:
        conn.close()
    assert [r[0] for r in rows] == ["text", "blob"]  # both forms are covered
    assert all(r[1] is not None for r in rows)
    assert json.loads(body_text(rows[1][2]))["data"]["values"]["p199"] == 199.0


async def test_a_damaged_row_in_an_old_outbox_stops_nothing_at_the_cloud(
        tmp_path: Path, mosquitto: Mosquitto, cloud: CloudListener) -> None:
    data = tmp_path / "data"
    data.mkdir()
    path = data / "outbox.db"
    shutil.copy(UPGRADE_FIXTURE, path)
    conn = sqlite3.connect(path)
    try:
        ids = [i for (i,) in conn.execute("SELECT id FROM outbox ORDER BY pos")]
    finally:
        conn.close()
    victim = ids[50]
    raw = path.read_bytes()
    needle = b'"id":"' + victim.encode()
    assert raw.count(needle) == 1
    path.write_bytes(raw.replace(needle, b'"id";"' + victim.encode()))  # no longer JSON
    async with Gateway(configs.validate(configs.base(tmp_path, mosquitto.url))):
        await cloud.until(lambda c: set(ids) - {victim} <= c.ids(), timeout_s=30,
                          what="every other row at the cloud")
        await cloud.until(lambda c: any(e["data"]["by_reason"] == {"corrupt": 1}
                                        for e in c.of_type("data_dropped")),
                          what="the corrupt row announced")
    assert victim not in cloud.ids()

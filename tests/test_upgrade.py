"""An outbox written by the version before frames is drained, row for row, by this one.

tests/cases/upgrade/outbox-v1.db was written by the first data plane (commit 00c64bd,
tests/cases/upgrade/make_v1_outbox.py): 200 telemetry events of one reading each
(schemaversion 1), a device_status and a maintenance_needed. The new gateway opens it,
adds the `readings` column, counts each old telemetry row as one reading, and sends
every row as it was stored: same ids, same seqs, same bytes.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import orjson

from gateway.outbox_rows import body_text
from gateway.outbox_stats import read_stats
from gateway.runtime import Gateway
from simulators.cloud_listener import CloudListener
from simulators.mosquitto import Mosquitto
from simulators.wait import until
from tests.support import configs

FIXTURE = Path(__file__).parent / "cases" / "upgrade" / "outbox-v1.db"


def stored_events(path: Path) -> dict[str, dict[str, object]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {e["id"]: e for e in (orjson.loads(body_text(b)) for (b,) in
                                     conn.execute("SELECT body FROM outbox"))}
    finally:
        conn.close()


async def test_an_outbox_from_before_frames_is_drained_unchanged(
        tmp_path: Path, mosquitto: Mosquitto, cloud: CloudListener) -> None:
    data = tmp_path / "data"
    data.mkdir()
    outbox = data / "outbox.db"
    shutil.copy(FIXTURE, outbox)
    before = stored_events(outbox)
    assert len(before) == 202 and {e["schemaversion"] for e in before.values()} == {"1"}
    assert read_stats(outbox)["readings"] == 200  # read before the upgrade, too

    raw = configs.base(tmp_path, mosquitto.url)
    async with Gateway(configs.validate(raw)) as gw:
        assert gw.outbox.stats().depth == 202
        await cloud.until(lambda c: set(before) <= c.ids(), timeout_s=30,
                          what="every row of the old outbox at the cloud")
        await until(lambda: gw.outbox.stats().depth == 0, 10, "the old rows acknowledged")
    for event_id, event in before.items():
        assert cloud.by_id[event_id] == event  # as stored: seq, schemaversion 1, data
    readings = cloud.readings("press-1")
    assert [r.value for r in readings] == [20 + i / 10 for i in range(100)]
    assert {r.point for r in readings} == {"spindle_temp_c"}
    stats = read_stats(outbox)
    assert stats["depth"] == 0 and stats["readings"] == 0 and stats["dropped"] == {}


def test_the_upgrade_counts_old_telemetry_as_one_reading_each(tmp_path: Path) -> None:
    from gateway.config import StoreSection
    from gateway.outbox_db import OutboxDb

    path = tmp_path / "outbox.db"
    shutil.copy(FIXTURE, path)
    store = StoreSection()
    db = OutboxDb(path, source_prefix="/plant-a/line-1", max_bytes=store.max_bytes,
                  ttl_s=store.ttl_s, durability=store.durability)
    db.open()
    try:
        assert (db.totals.depth, db.totals.readings) == (202, 200)
        by_kind = dict(db.conn.execute(
            "SELECT kind, sum(readings) FROM outbox GROUP BY kind").fetchall())
        assert by_kind == {"telemetry": 200, "device_status": 0, "maintenance_needed": 0}
    finally:
        db.close()

"""The chaos run's short mode: nothing the outbox committed is lost under kills and outages.

bench/chaos.py runs the real thing for ~45 s of faults: the gateway as a child process
(`millwright run`) reading the Modbus, OPC UA and MQTT simulators of one accelerated
plant, with the bundled predictor, while a seeded schedule SIGKILLs it, stops and
restarts the cloud Mosquitto (seed 29: once with a SIGKILL during the outage, so the
gateway dies with a backlog in its outbox), restarts the OPC UA server and silences
the Modbus unit. Then the gateway drains and is stopped with SIGTERM.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.chaos import ChaosSettings, run
from bench.chaos_faults import KINDS
from bench.chaos_ledger import (
    Ledger,
    committed_sequences,
    outbox_depth,
    outbox_drops,
    outbox_rows,
)
from gateway import events
from gateway.frames import Frame
from gateway.outbox_db import OutboxDb

SEED = 29  # its first round of faults puts a SIGKILL inside the cloud outage


@pytest.mark.slow
async def test_every_committed_event_reaches_the_cloud_through_chaos() -> None:
    report = await run(ChaosSettings(duration_s=45.0, seed=SEED, verbose=False))
    explain = f"{report.summary()}\n--- gateway log (tail) ---\n{report.log_tail}"

    verdict = report.verdict
    # The outbox numbers each source's stored events 1, 2, 3... in commit order, and the
    # numbering survives SIGKILL: a missing number at the cloud is a committed event lost.
    assert verdict.lost == 0, explain
    assert verdict.holes == {}, explain
    # Every row that sat unacknowledged in the outbox at a SIGKILL arrived, body for body.
    assert verdict.snapshot_missing == 0, explain
    # Copies of one id agree; no seq was handed to two events; nothing beyond what was stored.
    assert verdict.conflicts == [] and verdict.beyond_committed == 0, explain
    assert verdict.delivered == verdict.produced > 0, explain

    # Each kind of fault happened, and left evidence that it bit.
    for kind in KINDS:
        assert any(f.effect for f in report.faults if f.kind == kind), f"{kind}\n{explain}"
    assert any(f.kind == "cloud_outage" and f.kills for f in report.faults), explain
    assert verdict.snapshot_rows > 0, explain  # that kill found a backlog to check
    # After each fault the affected flow came back, and every backlog was delivered.
    assert all(f.recovery_s is not None for f in report.faults), explain
    assert report.drains_pending == 0, explain

    # The end: drained, stopped cleanly, nothing dropped, nothing left behind.
    assert report.gateway_exit == 0, explain
    assert report.left_in_outbox == 0 and report.dropped == {}, explain
    assert report.problems() == [], explain


# -- the books themselves: each kind of trouble is seen (a check that cannot fail proves nothing)

T0 = 1_790_000_000.0
SOURCE = "/lab/gw/press-1"


def event(seq: int, value: float = 1.0, *, source: str = SOURCE, event_id: str | None = None,
          sampled: float = T0, received: float | None = None) -> dict[str, Any]:
    frame = Frame("press-1", sampled, {"temp": value},
                  sampled if received is None else received)
    body = json.loads(events.telemetry(frame).encode(source, seq))
    if event_id is not None:
        body["id"] = event_id
    return body


def ledger_of(*bodies: dict[str, Any]) -> Ledger:
    ledger = Ledger()
    for body in bodies:
        ledger.on_event("t", body)
    return ledger


def test_a_missing_seq_is_a_lost_event() -> None:
    verdict = ledger_of(event(1, 1.0), event(2, 2.0), event(4, 4.0)).verify({SOURCE: 4}, [])
    assert (verdict.lost, verdict.holes, verdict.delivered, verdict.produced) == (
        1, {SOURCE: [3]}, 3, 4)
    assert not verdict.ok
    # A source the cloud never heard of at all: every one of its events is lost.
    assert ledger_of(event(1)).verify({SOURCE: 1, "/lab/gw/other": 2}, []).lost == 2


def test_seqs_announced_as_unrecovered_are_reported_apart_not_lost() -> None:
    notice = json.loads(events.data_dropped(
        {"unrecovered": 2}, T0, T0, ["press-1"], at=T0,
        extra={"unrecovered": [{"source": SOURCE, "first_seq": 2, "last_seq": 3}]},
    ).encode("/lab/gw/_gateway", 1))
    ledger = ledger_of(event(1, 1.0), event(4, 4.0), notice, event(5, 5.0))
    assert ledger.caught_up({SOURCE: 5})
    verdict = ledger.verify({SOURCE: 5, "/lab/gw/_gateway": 1}, [])
    assert (verdict.lost, verdict.holes, verdict.announced) == (0, {}, {SOURCE: [2, 3]})
    assert verdict.ok
    # An announcement covers only its range: a seq beyond it is still a silent loss.
    assert ledger_of(event(1), notice, event(5)).verify({SOURCE: 5}, []).holes == {SOURCE: [4]}


def test_a_resent_row_is_a_duplicate_and_must_be_identical() -> None:
    ok = ledger_of(event(1), event(1)).verify({SOURCE: 1}, [])
    assert (ok.duplicates, ok.replayed, ok.conflicts, ok.ok) == (1, 1, [], True)
    changed = event(1)
    changed["data"]["quality"] = {"temp": "bad"}
    bad = ledger_of(event(1), changed).verify({SOURCE: 1}, [])
    assert len(bad.conflicts) == 1 and not bad.ok


def test_a_frame_read_again_takes_a_new_seq_and_must_repeat_the_frame() -> None:
    again = event(2, received=T0 + 5)  # the same frame, read again later: same id, a new seq
    assert again["id"] == event(1)["id"]
    ok = ledger_of(event(1), again).verify({SOURCE: 2}, [])
    assert (ok.reingested, ok.lost, ok.conflicts) == (1, 0, [])
    other = event(2, 9.0, event_id=event(1)["id"])  # same id, a different value
    assert len(ledger_of(event(1), other).verify({SOURCE: 2}, []).conflicts) == 1


def test_one_seq_given_to_two_events_is_a_conflict() -> None:
    verdict = ledger_of(event(1, 1.0), event(1, 2.0)).verify({SOURCE: 1}, [])
    assert any("given to two events" in c for c in verdict.conflicts)
    assert ledger_of(event(1), event(2, 2.0)).verify({SOURCE: 1}, []).beyond_committed == 1


def test_a_row_seen_in_the_outbox_after_a_kill_must_arrive() -> None:
    snapshot = [event(1, 1.0), event(2, 2.0)]
    verdict = ledger_of(event(1, 1.0)).verify({SOURCE: 2}, [snapshot])
    assert (verdict.snapshot_rows, verdict.snapshot_missing, verdict.lost) == (2, 1, 1)


def test_a_watch_fires_only_for_telemetry_sampled_after_its_time() -> None:
    ledger = Ledger()
    watch = ledger.watch("press-1", T0 + 10)
    ledger.on_event("t", event(1, sampled=T0 + 9))
    # Received after the watch's time, but sampled before it: still not what it waits for.
    ledger.on_event("t", event(2, 3.0, sampled=T0 + 9.5, received=T0 + 11))
    assert watch.arrived_at is None
    ledger.on_event("t", event(3, 2.0, sampled=T0 + 10.5))
    assert watch.arrived_at is not None


def test_the_outbox_file_is_read_from_outside(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    db = OutboxDb(path, source_prefix="/lab/gw", max_bytes=1 << 30, ttl_s=3600,
                  durability="process")
    db.open()
    try:
        batch = [events.telemetry(Frame(d, T0 + i, {"p": float(i)}, T0 + i))
                 for d in ("a", "b") for i in range(3)]
        db.commit(batch, [], T0)
        db.commit(batch[:1], [], T0)  # a duplicate is not stored again
        db.commit([], [1], T0)  # row 1 acknowledged: it leaves
    finally:
        db.close()
    assert committed_sequences(path) == {"/lab/gw/a": 3, "/lab/gw/b": 3}
    assert outbox_depth(path) == 5
    assert [(r["source"], r["seq"]) for r in outbox_rows(path)] == [
        ("/lab/gw/a", 2), ("/lab/gw/a", 3), ("/lab/gw/b", 1), ("/lab/gw/b", 2), ("/lab/gw/b", 3)]
    assert outbox_drops(path) == {}
    assert outbox_depth(tmp_path / "absent.db") == 0

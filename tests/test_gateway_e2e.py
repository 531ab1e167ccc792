"""The core end to end, against a real Mosquitto: outages, kill -9, a full outbox, SIGTERM.

The source is the counter driver (tests/support): readings numbered 0, 1, 2, …
Everything after it — runtime, outbox, uplink, broker — is the real thing.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway import events
from gateway.outbox_rows import body_text
from gateway.runtime import Gateway
from simulators.cloud_listener import CloudListener
from simulators.wait import until, wait_for
from tests.support import configs, counter_driver

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("counter_protocol")



def telemetry_values(cloud: CloudListener, device: str) -> list[float]:
    return sorted(cloud.values(device))


def seqs(cloud: CloudListener, source_suffix: str) -> list[int]:
    with cloud._lock:
        return sorted(e["seq"] for e in cloud.by_id.values()
                      if e["source"].endswith(source_suffix))


def unrecovered(cloud: CloudListener, source_suffix: str) -> set[int]:
    """The seqs of the source that data_dropped events announced as `unrecovered`."""
    with cloud._lock:
        notices = [e for e in cloud.by_id.values() if e["type"].endswith(".data_dropped")]
    return {seq for notice in notices
            for lost in (notice.get("data") or {}).get("unrecovered") or []
            if lost["source"].endswith(source_suffix)
            for seq in range(lost["first_seq"], lost["last_seq"] + 1)}


def outbox_ids(path: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {json.loads(body_text(body))["id"]
                for (body,) in conn.execute("SELECT body FROM outbox")}
    finally:
        conn.close()


async def test_broker_outage_loses_nothing_and_keeps_ids(tmp_path, mosquitto, cloud):
    raw = configs.base(tmp_path, mosquitto.url,
                       [counter_driver.table(rate_hz=1000, batch=20, limit=3000)])
    async with Gateway(configs.validate(raw)) as gw:
        await cloud.until(lambda c: len(telemetry_values(c, "c")) >= 300, what="first events")
        mosquitto.stop()
        # Readings keep being accepted while the cloud is away.
        await until(lambda: gw.outbox.stats().depth >= 500, 20, "backlog during the outage")
        held = {json.loads(r.body)["id"] for r in await gw.outbox.fetch(0, 100_000)}
        mosquitto.start()
        await cloud.until(lambda c: len(telemetry_values(c, "c")) == 3000, timeout_s=60,
                          what="all 3000 readings")
        await cloud.until(lambda c: gw.outbox.stats().depth == 0, what="outbox drained")
    assert telemetry_values(cloud, "c") == [float(i) for i in range(3000)]
    assert held <= cloud.ids(), "an event held during the outage arrived with another id"
    # No gaps in the device's sequence: nothing committed was lost on the way.
    device_seqs = seqs(cloud, "/lab/gw-test/c")
    assert device_seqs == list(range(1, len(device_seqs) + 1))


def start_gateway(config_path: Path) -> subprocess.Popen[bytes]:
    """`millwright run` in a child process; its log goes to gateway.log beside the config."""
    with open(config_path.with_name("gateway.log"), "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.run_gateway", "run", "--config",
             str(config_path)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )


def log_of(config_path: Path) -> str:
    return config_path.with_name("gateway.log").read_text(errors="replace")[-3000:]


def test_kill_9_mid_flow_loses_nothing_accepted(tmp_path, mosquitto, cloud):
    raw = configs.base(tmp_path, mosquitto.url, [counter_driver.table(rate_hz=2000, batch=50)])
    path = configs.write(tmp_path / "gw.toml", raw)
    outbox = tmp_path / "data" / "outbox.db"
    accepted: set[str] = set()
    for round_ in range(3):
        proc = start_gateway(path)
        try:
            arrived = len(cloud.ids())
            wait_for(lambda n=arrived: len(cloud.ids()) > n + 500, 30, f"flow in round {round_}")
            if round_ == 1:  # one round kills while the broker is away, with a backlog
                mosquitto.stop()
                wait_for(lambda: len(outbox_ids(outbox)) > 1000, 30, "backlog")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        accepted |= outbox_ids(outbox)  # committed but not yet acknowledged by the broker
        mosquitto.start()
    proc = start_gateway(path)
    try:
        arrived = len(cloud.ids())
        wait_for(lambda: len(cloud.ids()) > arrived + 500, 30, "flow after the last restart")
        wait_for(lambda: accepted <= cloud.ids(), 60, "every accepted event at the cloud")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_of(path)
    # Per-device seq has no holes up to what the cloud saw: nothing committed went missing
    # (unless the broker lost what it had accepted: it was killed, not stopped). A kill
    # between the seq marks' write and the COMMIT leaves seqs that no row holds: the next
    # start skips them and says so (data_dropped, `unrecovered`), so only those may miss.
    assert mosquitto.forced_stops == 0, "the broker had to be killed: its queue was lost"
    device_seqs = sorted(set(seqs(cloud, "/lab/gw-test/c")))
    announced = unrecovered(cloud, "/lab/gw-test/c")
    missing = sorted(set(range(1, device_seqs[-1] + 1)) - set(device_seqs) - announced)
    assert not missing, (f"seqs {missing[:3]}..{missing[-3:]} ({len(missing)}) never arrived; "
                         f"broker log: {mosquitto.log_tail()}; gateway log: {log_of(path)}")
    with cloud._lock:
        copies = len(cloud.events) - len(cloud.by_id)
        same_ids = all(e == cloud.by_id[e["id"]] for e in cloud.events)
    assert same_ids, "a duplicate differed from the first copy with its id"
    print(f"kill -9 x3: {len(cloud.by_id)} events, {copies} duplicates (same ids), "
          f"{len(announced)} seqs announced as unrecovered")


async def test_full_outbox_drops_oldest_telemetry_keeps_alarms_and_says_so(tmp_path, mosquitto,
                                                                           cloud):
    mosquitto.stop()
    raw = configs.base(tmp_path, mosquitto.url,
                       [counter_driver.table(rate_hz=5000, batch=100, limit=4000)],
                       store={"max_bytes": 1 << 18})
    alarm = events.maintenance_needed("press-1", {"probability": 0.99}, "window-7",
                                      at=time.time())
    async with Gateway(configs.validate(raw)) as gw:
        await gw.outbox.append([alarm])
        await until(lambda: gw.accepted["c"] == 4000, 30, "all readings accepted")
        assert gw.outbox.stats().dropped.get("capacity", 0) >= 1000
        mosquitto.start()
        await cloud.until(lambda c: c.of_type("maintenance_needed"), what="the alarm")
        await cloud.until(lambda c: gw.outbox.stats().depth == 0, timeout_s=30, what="drained")
        dropped = gw.outbox.stats().dropped["capacity"]
    notices = cloud.of_type("data_dropped")
    assert notices and sum(n["data"]["by_reason"].get("capacity", 0) for n in notices) == dropped
    values = telemetry_values(cloud, "c")
    assert values[-1] == 3999.0 and values[0] > 0.0  # the oldest went first
    assert len(values) + dropped == 4000


def test_sigterm_flushes_and_exits_0(tmp_path, mosquitto, cloud):
    raw = configs.base(tmp_path, mosquitto.url, [counter_driver.table(rate_hz=2000, batch=100)])
    path = configs.write(tmp_path / "gw.toml", raw)
    proc = start_gateway(path)
    try:
        wait_for(lambda: len(cloud.ids()) > 1000, 30, "flow")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0, log_of(path)
    stored = outbox_ids(tmp_path / "data" / "outbox.db")
    assert not stored, f"{len(stored)} events left undelivered after a clean stop"
    statuses = [e["data"] for e in cloud.of_type("device_status")]
    assert statuses[-1]["status"] == "offline"


@pytest.mark.skipif(os.geteuid() != 0, reason="checks the refusal to run as root")
def test_refuses_to_run_as_root_unless_told(tmp_path, mosquitto):
    raw = configs.base(tmp_path, mosquitto.url, [counter_driver.table()])
    raw["gateway"]["allow_root"] = False
    path = configs.write(tmp_path / "gw.toml", raw)
    assert start_gateway(path).wait(30) == 2
    assert "refusing to run as root" in log_of(path)

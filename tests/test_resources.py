"""Resources: memory stays bounded under a flood, a full disk is reported and recovered from with
nothing accepted lost, and a corrupt outbox found at start is announced to the cloud.

The outbox at its byte cap is covered elsewhere: tests/test_store.py
(test_full_outbox_evicts_oldest_telemetry_and_keeps_maintenance) and
tests/test_gateway_e2e.py (test_full_outbox_drops_oldest_telemetry_keeps_alarms_and_says_so).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

import pytest
from prometheus_client import REGISTRY

import drivers
from gateway.driver import Batch
from gateway.runtime import Gateway
from simulators.cloud_listener import CloudListener
from simulators.mosquitto import Mosquitto, free_port
from simulators.wait import until, wait_for
from tests.support import configs, counter_driver
from tests.support.outbox_file import row_count

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("counter_protocol")


def counter(name: str = "c", **options: object) -> dict[str, object]:
    return counter_driver.table(name, **{"reconnect_max_s": 0.2, **options})


def device_errors(device: str) -> float:
    return REGISTRY.get_sample_value("millwright_device_errors_total", {"device": device}) or 0.0


def readings_refused(device: str) -> float:
    return REGISTRY.get_sample_value("millwright_device_readings_refused_total",
                                     {"device": device}) or 0.0


def telemetry_values(cloud: CloudListener, device: str) -> set[int]:
    return set(cloud.values(device))


# -- a flood with the cloud away: memory levels off, the outbox grows on disk ----------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def on_disk(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.glob("outbox.db*"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/PID/status")
def test_a_flood_with_the_cloud_away_keeps_memory_flat_while_the_outbox_grows(
        tmp_path: Path) -> None:
    # Nothing listens on the cloud port: the uplink drains nothing, everything piles up.
    devices = [counter(f"flood-{i}", rate_hz=200_000, batch=2000) for i in range(4)]
    raw = configs.base(tmp_path, f"mqtt://127.0.0.1:{free_port()}", devices)
    config_path = configs.write(tmp_path / "gw.toml", raw)
    data = tmp_path / "data"
    with open(tmp_path / "gateway.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.run_gateway", "run", "--config",
             str(config_path)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: row_count(data / "outbox.db") > 0 or proc.poll() is not None, 30,
                 "the first commit")
        assert proc.poll() is None, (tmp_path / "gateway.log").read_text()
        samples: list[tuple[float, int, int]] = []  # (seconds, RSS KiB, outbox bytes on disk)
        started = time.monotonic()
        next_sample = started
        while (elapsed := time.monotonic() - started) < 24.0:
            # Sampling at a fixed period is the measurement itself, not synchronisation.
            if time.monotonic() >= next_sample:
                samples.append((elapsed, rss_kib(proc.pid), on_disk(data)))
                next_sample += 0.5
            time.sleep(0.05)
        rows = row_count(data / "outbox.db")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        shutil.rmtree(data, ignore_errors=True)  # hundreds of MiB: do not leave them behind
    assert code == 0, (tmp_path / "gateway.log").read_text()[-2000:]
    third = len(samples) // 3
    first, last = samples[:third], samples[-third:]
    first_max = max(s[1] for s in first)
    last_max = max(s[1] for s in last)
    grown = last[-1][2] - first[0][2]
    print(f"\nflood: {rows} events stored in {samples[-1][0]:.0f} s "
          f"({rows / samples[-1][0]:.0f}/s); RSS first third max {first_max / 1024:.1f} MiB, "
          f"last third max {last_max / 1024:.1f} MiB; outbox on disk "
          f"{first[0][2] / 2**20:.1f} -> {last[-1][2] / 2**20:.0f} MiB")
    assert grown > 20 * 2**20, "the outbox did not grow: the flood did not happen"
    # Levels off: the last third may be at most 10% (and 4 MiB) above the first third.
    assert last_max <= first_max * 1.10 + 4096, samples


# -- a full disk -----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs mounted for this test (root only), unmounted after."""
    mountpoint = tmp_path / "disk"
    mountpoint.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs as the data_dir needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs",
                           str(mountpoint)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(directory: Path) -> Path:
    """Write a filler file until the file system says it is full (ENOSPC)."""
    filler = directory / "filler"
    chunk = b"\0" * (256 * 1024)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
        # Whatever fits in the last gap, byte by byte in halving chunks.
        size = len(chunk) // 2
        while size:
            try:
                f.write(b"\0" * size)
            except OSError:
                size //= 2
    return filler


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = raw.decode().partition("\r\n\r\n")
    return int(head.split(" ")[1]), body


async def ready_again(port: int) -> None:
    async def ready() -> bool:
        return (await http_get(port, "/readyz"))[0] == 200

    await until(ready, 30, "/readyz 200 again")


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


class AckedCounterConfig(counter_driver.CounterConfig):
    protocol: Literal["acked_counter"]  # type: ignore[assignment]


class AckedCounter(counter_driver.CounterDriver):
    """The counter, noting which numbers the runtime acknowledged (`Batch.ack`: committed)."""

    config_model = AckedCounterConfig
    acked: ClassVar[set[int]] = set()

    async def read(self) -> Batch:
        batch = await super().read()
        values = [int(v) for f in batch.frames for v in f.values.values()]  # type: ignore[arg-type]
        return Batch(batch.frames, ack=lambda: self.acked.update(values))


async def test_a_full_disk_is_reported_and_recovered_from_with_nothing_accepted_lost(
        tmp_path: Path, small_disk: Path, mosquitto: Mosquitto, cloud: CloudListener,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setitem(drivers.REGISTRY, "acked_counter", f"{__name__}:AckedCounter")
    monkeypatch.setattr(AckedCounter, "acked", set())
    raw = configs.base(tmp_path, mosquitto.url,
                       [counter(protocol="acked_counter", rate_hz=3000, batch=50)],
                       health={"enabled": True, "port": 0})
    raw["gateway"]["data_dir"] = str(small_disk / "data")
    async with Gateway(configs.validate(raw)) as gw:
        port = gw.health.port
        await cloud.until(lambda c: len(telemetry_values(c, "c")) > 500, what="first events")

        # The cloud goes away, so the outbox must grow, and the disk fills up.
        mosquitto.stop()
        filler = await asyncio.to_thread(fill, small_disk)

        async def reported() -> bool:
            # Polled together: see test_a_disk_that_stays_full_stays_not_writable below.
            code, body = await http_get(port, "/readyz")
            _, text = await http_get(port, "/metrics")
            return (code == 503 and not json.loads(body)["outbox_writable"]
                    and any(p.startswith("outbox is not writable")
                            for p in json.loads(body)["problems"])
                    and metric(text, "millwright_outbox_writable") == 0)

        await until(reported, 30, "/readyz 503 and millwright_outbox_writable 0")
        failed = [r.getMessage() for r in caplog.records if "outbox write failed" in r.getMessage()]
        assert failed and "new readings are refused until it recovers" in failed[0]
        assert "database or disk is full" in failed[0]
        refused_at = len(AckedCounter.acked)

        # Space comes back: the outbox takes readings again, and the cloud gets every one.
        freed, before = time.monotonic(), len(AckedCounter.acked)
        filler.unlink()
        await until(lambda: len(AckedCounter.acked) > before, 30, "a reading accepted again")
        recovered_s = time.monotonic() - freed
        await until(lambda: len(AckedCounter.acked) > before + 500, 30, "readings flow again")
        mosquitto.start()
        await ready_again(port)
    acked = set(AckedCounter.acked)
    await cloud.until(lambda c: acked <= telemetry_values(c, "c"), timeout_s=60,
                      what="every acknowledged reading at the cloud")
    extra = telemetry_values(cloud, "c") - acked
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "is writable again" in logged
    conn = sqlite3.connect(small_disk / "data" / "outbox.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()
    print(f"\nfull disk: {refused_at} readings accepted before the disk filled, {len(acked)} in "
          f"all, every one at the cloud ({len(extra)} more: committed while stopping, after the "
          f"device task was cancelled); the first reading accepted {recovered_s:.2f} s after "
          f"space returned")


async def test_a_disk_that_stays_full_stays_not_writable(
        tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    raw = configs.base(tmp_path, f"mqtt://127.0.0.1:{free_port()}",
                       [counter(rate_hz=3000, batch=50)])
    raw["gateway"]["data_dir"] = str(small_disk / "data")
    async with Gateway(configs.validate(raw)) as gw:
        await until(lambda: gw.accepted["c"] > 500, 30, "first readings")
        await asyncio.to_thread(fill, small_disk)
        await until(lambda: not gw.status().outbox_writable, 30, "outbox not writable")
        # The device's readings keep coming and are refused (the device stays online):
        # five more failed commits span several housekeeping periods, and the outbox
        # must stay not writable throughout.
        failures, refused = gw.outbox.commit_failures, readings_refused("c")
        seen = set()

        def five_more_failures() -> bool:
            seen.add(gw.status().outbox_writable)
            return (gw.outbox.commit_failures >= failures + 5
                    and readings_refused("c") > refused + 500)

        await until(five_more_failures, 60, "five more failed commits", interval_s=0.01)
        assert gw.online["c"]
    failed = [r for r in caplog.records if "outbox write failed" in r.getMessage()]
    assert seen == {False} and len(failed) == 1, (seen, len(failed))


# -- a corrupt outbox at start ---------------------------------------------------------------


async def test_a_corrupt_outbox_found_at_start_is_announced_to_the_cloud(
        tmp_path: Path, mosquitto: Mosquitto, cloud: CloudListener) -> None:
    raw = configs.base(tmp_path, mosquitto.url, [counter(rate_hz=100, batch=10)])
    data = tmp_path / "data"
    data.mkdir()
    (data / "outbox.db").write_bytes(b"SQLite format 3\0" + os.urandom(8192))
    async with Gateway(configs.validate(raw)):
        await cloud.until(lambda c: any(e["data"]["status"] == "outbox_replaced"
                                        for e in c.of_type("device_status")),
                          what="the outbox_replaced event")
        await cloud.until(lambda c: len(telemetry_values(c, "c")) >= 50, what="readings flow")
    [notice] = [e for e in cloud.of_type("device_status")
                if e["data"]["status"] == "outbox_replaced"]
    assert notice["subject"] == "_gateway" and notice["data"]["device"] == "_gateway"
    assert notice["source"] == "/lab/gw-test/_gateway"
    moved = notice["data"]["reason"].removeprefix("corrupt outbox moved aside to ")
    assert Path(moved).parent == data and Path(moved).read_bytes().startswith(b"SQLite format 3")
    topics = {t for t in cloud.topics if t.endswith("/device_status/_gateway")}
    assert topics == {"millwright/lab/gw-test/device_status/_gateway"}
    with contextlib.suppress(FileNotFoundError):
        conn = sqlite3.connect(data / "outbox.db")
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            conn.close()

"""One gateway per data_dir: a second `millwright run` on the same config refuses to start.

Real processes (`millwright run` with the test counter registered) against a real
cloud broker: the second one exits non-zero with one line naming the data_dir and
the PID of the first, which runs on undisturbed. The lock dies with its holder: after
a kill -9 the next start takes it.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.lock import LOCK_NAME, AlreadyRunning
from gateway.runtime import Gateway
from simulators.mosquitto import Mosquitto
from simulators.wait import wait_for
from tests.support import configs, counter_driver


def row_count(outbox: Path) -> int:
    """Rows ever committed (acknowledged ones are deleted, their positions are not reused)."""
    try:
        conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return 0
    try:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    except sqlite3.Error:
        return 0
    finally:
        conn.close()
    return row[0] if row else 0

ROOT = Path(__file__).resolve().parents[1]
COMMAND = [sys.executable, "-m", "tests.support.run_gateway", "run", "--config"]


def gateway_config(tmp_path: Path, cloud_url: str) -> Path:
    raw = configs.base(tmp_path, cloud_url, [counter_driver.table("c", rate_hz=200, batch=10)])
    return configs.write(tmp_path / "gw.toml", raw)


def start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen([*COMMAND, str(config)], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)


def committing(proc: subprocess.Popen[bytes], outbox: Path, log: Path, above: int = 0) -> None:
    wait_for(lambda: row_count(outbox) > above or proc.poll() is not None, 30,
             "the gateway's first commit")
    assert proc.poll() is None, log.read_text()


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


def test_a_second_gateway_on_the_same_data_dir_refuses_to_start(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = gateway_config(tmp_path, mosquitto.url)
    data = tmp_path / "data"
    first = start(config, tmp_path / "first.log")
    try:
        committing(first, data / "outbox.db", tmp_path / "first.log")
        second = subprocess.run([*COMMAND, str(config)], cwd=ROOT, capture_output=True,
                                text=True, timeout=30)
        assert second.returncode == 1, second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"data_dir {data} " in lines[0] and f"PID {first.pid} holds" in lines[0]
        assert "already running" in lines[0] and "gateway.data_dir" in lines[0]
        # The first one was not disturbed: it is still running and still committing.
        committing(first, data / "outbox.db", tmp_path / "first.log",
                   above=row_count(data / "outbox.db"))
    finally:
        code = stop(first)
    assert code == 0, (tmp_path / "first.log").read_text()[-2000:]


def test_the_lock_dies_with_its_holder(tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = gateway_config(tmp_path, mosquitto.url)
    data = tmp_path / "data"
    first = start(config, tmp_path / "first.log")
    try:
        committing(first, data / "outbox.db", tmp_path / "first.log")
    finally:
        first.kill()  # kill -9: no clean-up ran, the lock file with its PID stays behind
        first.wait(30)
    assert (data / LOCK_NAME).read_text().strip() == str(first.pid)
    second = start(config, tmp_path / "second.log")
    try:
        committing(second, data / "outbox.db", tmp_path / "second.log",
                   above=row_count(data / "outbox.db"))
        assert (data / LOCK_NAME).read_text().strip() == str(second.pid)
    finally:
        code = stop(second)
    assert code == 0, (tmp_path / "second.log").read_text()[-2000:]


@pytest.mark.usefixtures("counter_protocol")
async def test_two_gateways_in_one_process_cannot_share_a_data_dir(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    config = configs.validate(configs.base(tmp_path, mosquitto.url,
                                           [counter_driver.table("c")]))
    async with Gateway(config):
        with pytest.raises(AlreadyRunning, match="already running on data_dir"):
            await Gateway(config).start()
    # Released at stop: the next one starts.
    async with Gateway(config):
        pass

"""gateway.sd_notify against a real unix datagram socket standing in for systemd."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import sd_notify
from simulators.mosquitto import Mosquitto
from tests.support import configs

REPO = Path(__file__).resolve().parents[1]

TIMEOUT_S = 5.0


@pytest.fixture(autouse=True)
def _no_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts outside systemd, whatever the environment running pytest."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket at a filesystem path, as systemd would create it."""
    # A short directory: unix socket paths are limited to 108 bytes.
    with tempfile.TemporaryDirectory(prefix="mw-") as directory:
        path = str(Path(directory) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        yield sock, path
        sock.close()


@pytest.fixture
def systemd_socket(notify_socket: tuple[socket.socket, str],
                   monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    """The notify socket, announced in this process's $NOTIFY_SOCKET."""
    sock, path = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    return sock


async def receive(sock: socket.socket) -> str:
    data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 4096), TIMEOUT_S)
    return data.decode()


def stall_the_loop(seconds: float) -> None:
    """A blocking call made from a coroutine: the fault the watchdog exists to catch."""
    time.sleep(seconds)


def drain(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


async def test_outside_systemd_everything_is_a_no_op() -> None:
    assert sd_notify.notify("READY=1") is False
    assert sd_notify.ready() is False
    assert sd_notify.stopping() is False
    assert sd_notify.watchdog() is False
    assert sd_notify.watchdog_interval_s() is None
    # Returns at once instead of looping forever.
    await asyncio.wait_for(sd_notify.watchdog_loop(), TIMEOUT_S)


async def test_ready_status_and_stopping_reach_the_socket(systemd_socket: socket.socket) -> None:
    assert sd_notify.ready("3 devices\nconfigured") is True
    assert await receive(systemd_socket) == "READY=1\nSTATUS=3 devices configured"
    assert sd_notify.status("flushing outbox") is True
    assert await receive(systemd_socket) == "STATUS=flushing outbox"
    assert sd_notify.stopping() is True
    assert await receive(systemd_socket) == "STOPPING=1"


async def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"millwright-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify.ready() is True
        assert await receive(sock) == "READY=1"


def test_unreachable_socket_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/millwright/notify")
    assert sd_notify.ready() is False
    assert "sd_notify 'READY' to /nonexistent/millwright/notify failed" in caplog.text


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 30.0),
        ("30000000", "self", 30.0),
        ("30000000", "other", None),  # inherited from a parent: not ours to ping
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval_from_environment(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + (0 if pid == "self" else 1)))
    assert sd_notify.watchdog_interval_s() == expected


async def test_watchdog_pings_from_the_loop_and_stops_when_the_loop_is_stuck(
    systemd_socket: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # 0.1 s: a ping every 0.05 s
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    task = asyncio.create_task(sd_notify.watchdog_loop())
    try:
        for _ in range(3):
            assert await receive(systemd_socket) == "WATCHDOG=1"

        # A stuck loop: a blocking call holds it for three whole watchdog intervals.
        # Nothing can be sent meanwhile, so systemd would see the pings stop.
        drain(systemd_socket)
        stall_the_loop(0.3)
        assert drain(systemd_socket) == []

        # Once the loop runs again the pings resume.
        assert await receive(systemd_socket) == "WATCHDOG=1"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_millwright_run_speaks_sd_notify(
    notify_socket: tuple[socket.socket, str], tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """`millwright run` as systemd starts it: READY once started, pings, STOPPING on SIGTERM."""
    systemd_socket, path = notify_socket
    raw = configs.base(tmp_path, mosquitto.url, [{"name": "c", "protocol": "counter"}])
    config = configs.write(tmp_path / "gw.toml", raw)
    # Only the gateway's environment names the socket (Mosquitto speaks sd_notify too).
    # systemd also sets WATCHDOG_PID; without it the variables are taken as ours.
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    with (tmp_path / "gateway.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.run_gateway", "run", "--config", str(config)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        systemd_socket.setblocking(True)
        systemd_socket.settimeout(30)
        ready = systemd_socket.recv(4096).decode()
        assert ready.startswith("READY=1\nSTATUS=1 devices"), ready
        assert [systemd_socket.recv(4096) for _ in range(3)] == [b"WATCHDOG=1"] * 3
        proc.send_signal(signal.SIGTERM)
        while (message := systemd_socket.recv(4096).decode()) == "WATCHDOG=1":
            pass
        assert message == "STOPPING=1\nSTATUS=flushing the outbox"
        assert proc.wait(30) == 0, (tmp_path / "gateway.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)

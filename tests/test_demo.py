"""`millwright demo` as a user runs it: telemetry reaches the printer, Ctrl-C leaves nothing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

from simulators.wait import wait_for

ROOT = Path(__file__).resolve().parents[1]
SUMMARY = re.compile(r" cloud received (\d+) readings in the last ")


def children(pid: int) -> set[int]:
    """Every descendant process of `pid` (from /proc), e.g. the demo's private Mosquitto."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = {int(k) for k in (task / "children").read_text().split()}
            except (OSError, ValueError):
                continue
            todo.extend(kids - found)
            found |= kids
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone in every way that matters here.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "\nState:\tZ" not in status.read_text()


def test_demo_shows_telemetry_and_ctrl_c_stops_everything() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "demo"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        wait_for(lambda: any(" telemetry press-1: " in line for line in lines)
                 and any(" telemetry mill-2: " in line for line in lines)
                 and any(" telemetry pump-3: " in line for line in lines)
                 and any(int(m[1]) > 0 for line in lines
                         if (m := SUMMARY.search(line))), 60,
                 "telemetry from all three machines at the demo's cloud printer, and a "
                 "count of the readings (values) it received")
        spawned = children(proc.pid)
        assert spawned, "the demo should have started its own Mosquitto"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, "".join(lines[-20:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    proc.stdout.close()
    wait_for(lambda: not any(alive(pid) for pid in spawned), 10, "demo's child processes gone")
    assert any(line.startswith("demo: stopped") for line in lines)
    assert any("status   press-1: online" in line for line in lines)


def test_demo_as_sparkplug_shows_the_same_plant() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "demo", "--format",
                             "sparkplug"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        wait_for(lambda: all(any(f" telemetry {name}: " in line for line in lines)
                             for name in ("press-1", "mill-2", "pump-3")), 60,
                 "telemetry from all three machines, read from Sparkplug DDATA")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0, "".join(lines[-20:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(5)
    proc.stdout.close()
    assert any("events under spBv1.0/plant-a/" in line for line in lines)
    assert any("status   press-1: online DBIRTH" in line for line in lines)

"""`millwright demo` as a user runs it: telemetry reaches the printer, Ctrl-C leaves nothing."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
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


@contextlib.contextmanager
def running_demo(*args: str) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """`millwright demo ARGS` with its output lines collected as they come; the body must end
    it (SIGINT), and whatever is left running is killed on the way out."""
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "demo", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),
                              daemon=True)
    reader.start()
    try:
        yield proc, lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
        proc.stdout.close()


def stop(proc: subprocess.Popen[str], lines: list[str]) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0, "".join(lines[-20:])


def test_demo_shows_telemetry_and_ctrl_c_stops_everything() -> None:
    with running_demo() as (proc, lines):
        wait_for(lambda: any(" telemetry press-1: " in line for line in lines)
                 and any(" telemetry mill-2: " in line for line in lines)
                 and any(" telemetry pump-3: " in line for line in lines)
                 and any(int(m[1]) > 0 for line in lines
                         if (m := SUMMARY.search(line))), 60,
                 "telemetry from all three machines at the demo's cloud printer, and a "
                 "count of the readings (values) it received")
        spawned = children(proc.pid)
        assert spawned, "the demo should have started its own Mosquitto"
        stop(proc, lines)
    wait_for(lambda: not any(alive(pid) for pid in spawned), 10, "demo's child processes gone")
    assert any(line.startswith("demo: stopped") for line in lines)
    assert any("status   press-1: online" in line for line in lines)
    assert any(line.startswith("demo: the gateway's page is at http://127.0.0.1:")
               for line in lines)


def test_demo_as_sparkplug_shows_the_same_plant() -> None:
    with running_demo("--format", "sparkplug") as (proc, lines):
        wait_for(lambda: all(any(f" telemetry {name}: " in line for line in lines)
                             for name in ("press-1", "mill-2", "pump-3")), 60,
                 "telemetry from all three machines, read from Sparkplug DDATA")
        stop(proc, lines)
    assert any("events under spBv1.0/plant-a/" in line for line in lines)
    assert any("status   press-1: online DBIRTH" in line for line in lines)


def test_demo_answers_the_press_alarm_by_slowing_it() -> None:
    # 600x: press-1 wears out in 18 s of real time, so its alarm comes within seconds.
    with running_demo("--answer-alarms", "--speed", "600") as (proc, lines):
        wait_for(lambda: any(" COMMAND  press-1: done" in line for line in lines), 90,
                 "press-1's alarm answered by a command that the gateway carried out")
        wait_for(lambda: any("speed_setpoint_rpm=900" in line and " telemetry press-1: " in line
                             for line in lines), 30, "the new setpoint in the press's telemetry")
        stop(proc, lines)
    alarm = next(i for i, line in enumerate(lines) if "MAINTENANCE NEEDED press-1" in line)
    done = next(i for i, line in enumerate(lines) if " COMMAND  press-1: done" in line)
    assert alarm < done
    assert "read back speed_setpoint_rpm=900" in lines[done]
    assert any(line.split(" ", 1)[1].startswith("failure probability: press-1 ")
               for line in lines)

"""`millwright demo` as a user runs it: telemetry reaches the printer, Ctrl-C leaves nothing."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.demo import Printer
from simulators.plant import MachineSpec, Plant
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


def printed_command(lines: list[str], name: str) -> list[str]:
    """The banner's `millwright NAME ...` command, to run with this checkout's code."""
    line = next(line for line in lines if f" {name} --" in line)
    words = shlex.split(line)
    start = words.index(name.split()[0])
    assert words[start - 1].endswith("millwright"), line
    return [sys.executable, "-m", "gateway.cli", *words[start:]]


def test_the_banner_names_a_health_url_status_reaches_and_an_outbox_queue_stats_reads() -> None:
    with running_demo() as (proc, lines):
        wait_for(lambda: any(" queue stats --config " in line for line in lines), 60,
                 "the banner naming how to inspect the running gateway")
        [banner] = [line for line in lines if line.startswith("demo: the gateway's page is at ")]
        url = re.search(r"page is at (http://\S+)/ ", banner)[1]
        outbox = re.search(r"outbox (\S+);", banner)[1]
        status = printed_command(lines, "status")
        assert status[-2:] == ["--url", url] and not url.endswith(":0")

        def answer() -> subprocess.CompletedProcess[str]:
            return subprocess.run(status, cwd=ROOT, capture_output=True, text=True, timeout=30)

        wait_for(lambda: answer().returncode == 0, 60, "millwright status: READY",
                 interval_s=0.5)
        shown = answer().stdout
        assert shown.startswith(f"plant-a/line-1 at {url}: READY"), shown
        assert "devices  3/3 online" in shown, shown
        stats = subprocess.run(printed_command(lines, "queue stats"), cwd=ROOT,
                               capture_output=True, text=True, timeout=30)
        assert stats.returncode == 0, stats.stderr
        assert stats.stdout.startswith(f"outbox      {outbox}\n"), stats.stdout
        assert re.search(r"^depth       \d+ events", stats.stdout, re.M), stats.stdout
        stop(proc, lines)


def test_the_printer_says_when_a_machine_fails_and_when_it_is_repaired(
        capsys: pytest.CaptureFixture[str]) -> None:
    plant = Plant([MachineSpec("press-1", 1, life_s=3600.0)], failure_hold_s=600.0)
    plant.on_tick(Printer().on_tick)
    press = plant.machines["press-1"]
    for _ in range(200):
        plant.advance(60.0)
        if press.failed:
            break
    assert press.failed
    failed = capsys.readouterr().out.splitlines()
    assert [line.split(" ", 1)[1] for line in failed] == [
        "FAILED   press-1: the machine broke down; the plant repairs it after 10 simulated min"]
    plant.advance(600.0)
    repaired = capsys.readouterr().out.splitlines()
    assert not press.failed
    assert [line.split(" ", 1)[1] for line in repaired] == [
        "REPAIRED press-1: the failure has cleared, the machine runs again as new"]
    plant.advance(600.0)
    assert capsys.readouterr().out == ""  # said once, not at every tick

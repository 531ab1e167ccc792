"""CPU of the gateway at a steady 1,000 plant MQTT messages/s, and where it goes (cProfile).

`python -m bench.mqtt_cpu [--rate 1000] [--seconds 10]`

The gateway runs in a child process (`Gateway` with one MQTT device, a real plant
Mosquitto and a real cloud Mosquitto with a subscriber draining it), so its CPU is
its own: utime + stime from /proc/PID/stat over the measured window, as % of one
core. This process publishes the MQTT simulator's 6-value JSON payloads (QoS 1,
~190 bytes) at the rate, paced, for MQTT 5 and MQTT 3.1.1 devices in turn. A second
run of each is under cProfile (the event loop's thread only: the outbox writer and
reader threads are not in it) and prints the functions with the most own time and
the own time summed by component. Profiling slows the child; its CPU % is not the
figure.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from simulators.cloud_listener import CloudListener
from simulators.machine import SIGNALS
from simulators.mosquitto import Mosquitto
from simulators.mqtt_publisher import MqttSimulator
from simulators.wait import until

ROOT = Path(__file__).resolve().parents[1]
POINTS = [{"name": "seq", "path": "seq", "type": "integer"}] + [
    {"name": name, "path": f"signals.{name}", "type": "number"} for name in SIGNALS]
WARMUP_S = 3.0

# Own time by component: the first prefix found in a profiled function's file wins.
COMPONENTS = [
    ("drivers/mqtt/codec", "mqtt driver: decode"),
    ("drivers/mqtt/", "mqtt driver: session, acks"),
    ("gateway/paho_loop", "paho bridge (ours)"),
    ("paho/", "paho (library)"),
    ("gateway/uplink", "uplink (ours)"),
    ("gateway/store", "outbox, loop side"),
    ("gateway/outbox_writer", "outbox, loop side"),
    ("gateway/events", "events"),
    ("gateway/frames", "events"),
    ("gateway/feed", "events"),
    ("gateway/report", "events"),
    ("gateway/runtime", "runtime"),
    ("prometheus_client", "metrics"),
    ("asyncio/", "asyncio"),
    ("selectors", "asyncio"),
    ("ssl", "sockets"),
    ("socket", "sockets"),
]


def component(filename: str, name: str) -> str:
    for prefix, label in COMPONENTS:
        if prefix in filename:
            return label
    if filename == "~":  # a builtin: name it by what it is
        if any(w in name for w in ("recv", "send", "select", "epoll", "poll")):
            return "sockets"
        if "orjson" in name or "json" in name:
            return "json"
        return "builtins"
    return "other python"


def config(tmp: Path, plant: str, cloud: str, version: str) -> str:
    device = {"name": "plant", "protocol": "mqtt", "url": plant, "topic": "plant/+/telemetry",
              "device_from_topic": True, "timestamp_path": "ts", "mqtt_version": version,
              "points": POINTS}
    from tests.support import configs  # the TOML writer the tests use

    raw = configs.base(tmp, cloud, [device])
    raw["cloud"]["reconnect_min_s"] = 0.5
    return str(configs.write(tmp / f"gw-{version}.toml", raw))


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """CPU seconds (user + system) of process `pid`, or of its thread `tid`."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spawn(argv: list[str]) -> subprocess.Popen[str]:
    """The gateway child, once it says it runs (blocking: called in a thread)."""
    child = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout is not None
    if child.stdout.readline().strip() != "ready":
        child.kill()
        raise RuntimeError("the gateway child did not start")
    return child


async def measure(version: str, rate: float, seconds: float,
                  profile: Path | None) -> tuple[float, float]:
    """(% of a core for the whole child, % for its event loop's thread alone)."""
    with Mosquitto() as plant, Mosquitto() as cloud_broker, \
            CloudListener(cloud_broker.url) as cloud, \
            tempfile.TemporaryDirectory(prefix="mw-cpu-") as tmp:
        path = config(Path(tmp), plant.url, cloud_broker.url, version)
        argv = [sys.executable, "-m", "bench.mqtt_cpu", "--child", path]
        if profile is not None:
            argv += ["--profile", str(profile)]
        child = await asyncio.to_thread(spawn, argv)
        try:
            async with MqttSimulator(url=plant.url, interval_s=None) as sim:

                async def arrived() -> bool:  # sent before the SUBACK, a message is lost
                    await sim.publish("press-1")
                    return bool(cloud.values("press-1"))

                await until(arrived, 30, "a first message through the gateway", interval_s=0.1)
                await sim.publish_numbered(int(rate * WARMUP_S), machine="press-1",
                                           rate_per_s=rate)
                cpu0, wall0 = cpu_seconds(child.pid), time.monotonic()
                loop0 = cpu_seconds(child.pid, child.pid)  # the main thread runs the loop
                await sim.publish_numbered(int(rate * seconds), machine="press-1",
                                           rate_per_s=rate)
                cpu1, wall1 = cpu_seconds(child.pid), time.monotonic()
                loop1 = cpu_seconds(child.pid, child.pid)
        finally:
            if child.stdin is not None:
                child.stdin.close()  # the child stops when its stdin closes
            await asyncio.to_thread(child.wait, 60)
        wall = wall1 - wall0
        return 100.0 * (cpu1 - cpu0) / wall, 100.0 * (loop1 - loop0) / wall


def report_profile(path: Path, top: int = 20) -> None:
    stats = pstats.Stats(str(path))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    by_component: Counter[str] = Counter()
    rows = []
    for (filename, line, name), (_cc, calls, tottime, _cum, _callers) in raw.items():
        short = filename.replace(str(ROOT) + "/", "")
        by_component[component(short, name)] += tottime
        rows.append((tottime, calls, f"{short}:{line}({name})"))
    total = sum(by_component.values()) or 1.0
    print("  own time by component:")
    for label, seconds in by_component.most_common():
        print(f"    {100 * seconds / total:5.1f} %  {label}")
    print(f"  top {top} functions by own time:")
    for tottime, calls, where in sorted(rows, reverse=True)[:top]:
        print(f"    {100 * tottime / total:5.1f} %  {calls:>9}  {where[-90:]}")


async def child_main(path: str, profile: str | None) -> None:
    import logging

    from gateway import config as gateway_config
    from gateway.runtime import Gateway

    logging.basicConfig(level=logging.WARNING)
    # CPU time of this thread, not wall time: waiting in epoll is not work.
    profiler = cProfile.Profile(time.thread_time) if profile else None
    async with Gateway(gateway_config.load(path)):
        print("ready", flush=True)
        if profiler is not None:
            profiler.enable()
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="plant messages per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child_main(args.child, args.profile))
        return
    for version in ("5", "3.1.1"):
        cpu, loop = asyncio.run(measure(version, args.rate, args.seconds, None))
        print(f"MQTT {version}: {args.rate:.0f} plant messages/s -> gateway CPU {cpu:.1f} % "
              f"of one core ({loop:.1f} % the event loop's thread, {cpu - loop:.1f} % the "
              f"outbox's and other threads), over {args.seconds:g} s", flush=True)
        if not args.no_profile:
            with tempfile.TemporaryDirectory(prefix="mw-prof-") as tmp:
                out = Path(tmp) / "gateway.prof"
                asyncio.run(measure(version, args.rate, args.seconds, out))
                print(f"MQTT {version} profile (cProfile, the loop's thread):")
                report_profile(out)


if __name__ == "__main__":
    main()

"""Modbus benchmark: readings per second committed to the outbox, beside a bare pymodbus loop.

Two shapes, each measured twice in the same run against the same simulator:
- one TCP device with 1,000 points (uint16, holding 1000-1999: 8 requests per poll);
- 100 TCP devices x 20 points, each device its own server port (as 100 real
  devices have 100 addresses), so each has its own connection.
The gateway figure counts readings the runtime committed to the outbox
(`Gateway.accepted`), polling as fast as it can (poll_interval_s = 0.001) with no
reachable cloud broker, so nothing leaves the outbox. The raw figure is a bare
pymodbus client loop reading the same registers (per device, concurrently).
Also: the driver alone (decoded readings, no events or outbox) for the 1,000-point
device, and the gateway's CPU use for 100 x 20 points polled once a second.

The simulators run in a child process (`python -m bench.modbus --serve N`) so the
gateway's process measures only the gateway; their plant is not stepped, so the
server does no work besides answering.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pymodbus.client import AsyncModbusTcpClient

from bench.child import ChildServer
from gateway.config import validate
from gateway.runtime import Gateway, build_drivers
from simulators.mosquitto import free_port

DEVICES = 100
POINTS_PER_DEVICE = 20
BIG_DEVICE_POINTS = 1000
SCRATCH = 1000  # simulators.modbus_server.SCRATCH_START: register 1000+i holds i


def main(quick: bool) -> list[dict[str, Any]]:
    return asyncio.run(_run(quick))


async def _run(quick: bool) -> list[dict[str, Any]]:
    window_s = 3.0 if quick else 10.0
    with ChildServer("bench.modbus", DEVICES, "Modbus simulator") as served, \
            tempfile.TemporaryDirectory(prefix="mw-bench-") as tmp:
        ports = list(served["ports"])
        results = []
        raw = await _bare_loop([ports[0]], BIG_DEVICE_POINTS, window_s)
        value = await _gateway_rate(Path(tmp) / "one", [ports[0]], BIG_DEVICE_POINTS,
                                    0.001, window_s)
        results.append(_figure("modbus_tcp_1_device_1000_points", value, raw))
        value = await _driver_rate(Path(tmp) / "alone", ports[0], BIG_DEVICE_POINTS, window_s)
        results.append(_figure("modbus_tcp_1_device_1000_points_driver_only", value, raw))

        raw = await _bare_loop(ports, POINTS_PER_DEVICE, window_s)
        value = await _gateway_rate(Path(tmp) / "many", ports, POINTS_PER_DEVICE,
                                    0.001, window_s)
        results.append(_figure("modbus_tcp_100_devices_20_points", value, raw))

        cpu = await _gateway_cpu(Path(tmp) / "paced", ports, POINTS_PER_DEVICE, 1.0, window_s)
        results.append({"metric": "modbus_tcp_100x20_points_at_1s_cpu", "value": round(cpu, 1),
                        "unit": "% of one core", "raw": None, "ratio": None})
        return results


def _figure(metric: str, value: float, raw: float) -> dict[str, Any]:
    return {"metric": metric, "value": round(value), "unit": "readings/s", "raw": round(raw),
            "ratio": round(value / raw, 3) if raw else None}


async def _bare_loop(ports: list[int], points: int, window_s: float) -> float:
    """Registers per second from plain pymodbus clients, one per port, reading back to back."""
    counts = [0] * len(ports)

    async def one(index: int, port: int) -> None:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, reconnect_delay=0, retries=0)
        await client.connect()
        unit = index % 3 + 1
        deadline = time.perf_counter() + window_s
        try:
            while time.perf_counter() < deadline:
                for start in range(0, points, 125):
                    count = min(125, points - start)
                    response = await client.read_holding_registers(
                        SCRATCH + start, count=count, device_id=unit)
                    counts[index] += len(response.registers)
        finally:
            client.close()

    started = time.perf_counter()
    await asyncio.gather(*(one(i, port) for i, port in enumerate(ports)))
    return sum(counts) / (time.perf_counter() - started)


def _config(data_dir: Path, ports: list[int], points: int, poll_s: float) -> Any:
    devices = [{
        "name": f"dev-{i:03d}", "protocol": "modbus", "host": "127.0.0.1", "port": port,
        "unit_id": i % 3 + 1, "poll_interval_s": poll_s, "timeout_s": 2.0, "max_gap": 0,
        "points": [{"name": f"r{j}", "address": SCRATCH + j} for j in range(points)],
    } for i, port in enumerate(ports)]
    return validate({
        "gateway": {"id": "bench", "site": "bench", "data_dir": str(data_dir),
                    "allow_root": True, "shutdown_timeout_s": 2.0},
        # Nothing listens there: every reading stays in the outbox.
        "cloud": {"url": f"mqtt://127.0.0.1:{free_port()}", "reconnect_min_s": 5.0},
        "health": {"enabled": False},
        "devices": devices,
    })


async def _gateway_rate(data_dir: Path, ports: list[int], points: int, poll_s: float,
                        window_s: float) -> float:
    async with Gateway(_config(data_dir, ports, points, poll_s)) as gw:
        await _all_reporting(gw)
        before, started = sum(gw.accepted.values()), time.perf_counter()
        await asyncio.sleep(window_s)  # the measurement window, not synchronisation
        return (sum(gw.accepted.values()) - before) / (time.perf_counter() - started)


async def _driver_rate(data_dir: Path, port: int, points: int, window_s: float) -> float:
    """Decoded readings per second from the driver alone: no events, no outbox."""
    driver = build_drivers(_config(data_dir, [port], points, 0.001))[0]
    await driver.connect()
    try:
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < window_s:
            count += (await driver.poll()).readings
        return count / (time.perf_counter() - started)
    finally:
        await driver.close()


async def _gateway_cpu(data_dir: Path, ports: list[int], points: int, poll_s: float,
                       window_s: float) -> float:
    async with Gateway(_config(data_dir, ports, points, poll_s)) as gw:
        await _all_reporting(gw)
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.sleep(window_s)
        return 100 * (time.process_time() - cpu) / (time.perf_counter() - wall)


async def _all_reporting(gw: Gateway, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    names = [d.name for d in gw.drivers]
    while not all(gw.accepted[name] for name in names):
        if time.monotonic() > deadline:
            silent = [n for n in names if not gw.accepted[n]]
            raise TimeoutError(f"devices not reporting after {timeout_s}s: {silent[:5]}")
        await asyncio.sleep(0.05)


async def _serve(count: int) -> None:
    from simulators.modbus_server import ModbusSimulator
    from simulators.plant import Plant

    # Clients vanish mid-request when a run ends; pymodbus would log each one.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

    plant = Plant()  # not run: fixed values, so the server only answers
    sims = [ModbusSimulator(plant, scratch_registers=BIG_DEVICE_POINTS) for _ in range(count)]
    for sim in sims:
        await sim.start_serving()
    print(json.dumps({"ports": [sim.port for sim in sims]}), flush=True)
    await asyncio.to_thread(sys.stdin.read)  # until the parent closes our stdin
    for sim in sims:
        await sim.stop_serving()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        asyncio.run(_serve(int(sys.argv[2])))
    else:
        for figure in main(quick="--quick" in sys.argv):
            print(json.dumps(figure))

"""Reconnect benchmark: from the cloud broker accepting connections again to the first delivery.

Each cycle: the uplink is connected and idle; the private Mosquitto stops; events are
appended during the outage (the backlog a plant builds up); after `outage_s` the broker
starts again, and the clock runs from the moment it accepts a TCP connection to the first
PUBACK the uplink reads (the first event delivered). The raw figure is the same path for a
client that is already trying at that instant: a fresh paho connect + one QoS 1 publish
right after the broker is back.

Figures per outage length: p50, p95 and max of the delay, with the number of cycles.
`python -m bench.reconnect --outages 10 100 1000 --repeats 20 10 3` is the long run
behind docs/benchmarks.md (about an hour); `--quick` is three 10 s outages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import REGISTRY

from gateway import events
from gateway.config import CloudSection, StoreSection
from gateway.frames import Frame
from gateway.store import Outbox
from gateway.uplink import Uplink
from simulators.mosquitto import Mosquitto
from simulators.wait import until

PREFIX = "bench/reconnect"
POLL_S = 0.005  # how finely the first acknowledgement is timed


def main(quick: bool, outages: list[float] | None = None, repeats: list[int] | None = None,
         reconnect_max_s: float | None = None) -> list[dict[str, Any]]:
    if outages is None:
        outages, repeats = ([10.0], [3]) if quick else ([10.0, 100.0], [10, 5])
    assert repeats is not None and len(repeats) == len(outages)
    return asyncio.run(_run(outages, repeats, reconnect_max_s))


async def _run(outages: list[float], repeats: list[int],
               reconnect_max_s: float | None) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="millwright-bench-") as scratch, Mosquitto() as broker:
        outbox = Outbox(Path(scratch) / "outbox.db", StoreSection(), source_prefix="/bench")
        await outbox.open()
        # The shipped reconnect settings, unless the run compares with another cap.
        cloud = CloudSection(url=broker.url) if reconnect_max_s is None else CloudSection(
            url=broker.url, reconnect_max_s=reconnect_max_s)
        uplink = Uplink(cloud, outbox, prefix=PREFIX, gateway_id="bench")
        task = asyncio.create_task(uplink.run(), name="uplink")
        try:
            await until(lambda: uplink.connected, 10, "uplink connected")
            serial = 0
            for outage_s, count in zip(outages, repeats, strict=True):
                delays, bare = [], []
                for _ in range(count):
                    serial += 1
                    delay, raw = await _cycle(broker, outbox, uplink, outage_s, serial)
                    delays.append(delay)
                    bare.append(raw)
                    print(json.dumps({"outage_s": outage_s, "first_delivery_s": round(delay, 3),
                                      "bare_s": round(raw, 4)}), flush=True)
                results.append(_figure(outage_s, delays, bare))
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await outbox.close()
    return results


async def _cycle(broker: Mosquitto, outbox: Outbox, uplink: Uplink, outage_s: float,
                 serial: int) -> tuple[float, float]:
    await until(lambda: outbox.stats().depth == 0, 30, "the previous backlog delivered")
    await asyncio.to_thread(broker.stop)
    await until(lambda: not uplink.connected, 10, "the outage noticed")
    ends = time.monotonic() + outage_s
    tick = 0
    while time.monotonic() < ends:  # a backlog builds up: 10 events a second
        tick += 1
        at = 1_790_000_000 + serial * 1e5 + tick
        await outbox.append([events.telemetry(Frame("press-1", at, {"p": float(tick)}, at))])
        await asyncio.sleep(min(0.1, max(0.0, ends - time.monotonic())))  # the outage's pace
    acked = _acked()
    await asyncio.to_thread(broker.start)  # returns once the port accepts a connection
    back = time.monotonic()
    await until(lambda: _acked() > acked, 60, "the first delivery", interval_s=POLL_S)
    delay = time.monotonic() - back
    return delay, await asyncio.to_thread(_bare_first_delivery, broker.port)


def _bare_first_delivery(port: int) -> float:
    """A client already trying when the broker returns: connect, one QoS 1 publish, PUBACK."""
    started = time.monotonic()
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(f"{PREFIX}/bare", b"x", qos=1).wait_for_publish(10)
        return time.monotonic() - started
    finally:
        client.disconnect()
        client.loop_stop()


def _acked() -> float:
    return REGISTRY.get_sample_value("millwright_uplink_acked_events_total") or 0.0


def _percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def _figure(outage_s: float, delays: list[float], bare: list[float]) -> dict[str, Any]:
    p95 = _percentile(delays, 95)
    raw = _percentile(bare, 95)
    return {"metric": f"first_delivery_after_{outage_s:g}_s_outage_p95", "value": round(p95, 3),
            "unit": "s", "raw": round(raw, 4), "ratio": round(p95 / raw, 1),
            "target": "p95 <= 3 s", "p50": round(_percentile(delays, 50), 3),
            "max": round(max(delays), 3), "cycles": len(delays)}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.reconnect",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--outages", type=float, nargs="+", help="outage lengths in seconds")
    parser.add_argument("--repeats", type=int, nargs="+", help="cycles per outage length")
    parser.add_argument("--reconnect-max-s", type=float,
                        help="cloud.reconnect_max_s for this run (60 was the old default)")
    args = parser.parse_args()
    for line in main(args.quick, args.outages, args.repeats, args.reconnect_max_s):
        print(json.dumps(line), flush=True)

"""OPC UA benchmark: notifications per second from 1,000 monitored items into the outbox.

One simulator with 1,000 Double variables (`ns=2;s=Load.V0000`...) runs in a child
process (`python -m bench.opcua --serve N`) and rewrites all of them as fast as it
can, so the server, not a timer, sets the offered load. Against that same server,
in the same run, one after the other:
- raw: a bare asyncua client, one subscription, a do-nothing `datachange_notification`
  handler that only counts (asyncua's documented handler style);
- value: the Gateway with one OPC UA device of 1,000 points, no reachable cloud
  broker, counting readings committed to the outbox (`Gateway.accepted`).
Both subscribe with the same publishing interval, sampling interval 0 and queue
size 1. The second figure is CPU seconds per 1,000 notifications, gateway beside bare
client: with the server setting the pace, this is where the gateway's cost shows.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from asyncua import Client, ua

from bench.child import ChildServer
from gateway.config import validate
from gateway.runtime import Gateway
from simulators.mosquitto import free_port
from simulators.wait import until

ITEMS = 1000
PUBLISHING_MS = 50.0


def main(quick: bool) -> list[dict[str, Any]]:
    return asyncio.run(_run(quick))


async def _run(quick: bool) -> list[dict[str, Any]]:
    window_s = 3.0 if quick else 10.0
    with ChildServer("bench.opcua", ITEMS, "OPC UA simulator") as served, \
            tempfile.TemporaryDirectory(prefix="mw-bench-") as tmp:
        endpoint = str(served["endpoint"])
        raw, raw_cpu = await _bare_client(endpoint, window_s)
        value, cpu = await _gateway_rate(Path(tmp), endpoint, window_s)
    return [
        {"metric": "opcua_1000_items_notifications", "value": round(value),
         "unit": "notifications/s", "raw": round(raw),
         "ratio": round(value / raw, 3) if raw else None},
        # CPU seconds (all threads of this process) per 1,000 notifications taken in.
        {"metric": "opcua_cpu_per_1000_notifications", "value": round(cpu, 4),
         "unit": "CPU s", "raw": round(raw_cpu, 4),
         "ratio": round(cpu / raw_cpu, 2) if raw_cpu else None},
    ]


class _Counter:
    """The do-nothing handler: counts and returns."""

    def __init__(self) -> None:
        self.count = 0

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.count += 1


async def _bare_client(endpoint: str, window_s: float) -> tuple[float, float]:
    """(notifications/s, CPU s per 1,000) for a bare asyncua client."""
    client = Client(endpoint)
    client.session_timeout = 60_000
    await client.connect()
    try:
        handler = _Counter()
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=PUBLISHING_MS, RequestedLifetimeCount=600,
            RequestedMaxKeepAliveCount=100, MaxNotificationsPerPublish=10_000,
            PublishingEnabled=True, Priority=0)
        subscription = await client.create_subscription(params, handler)
        nodes = [client.get_node(f"ns=2;s=Load.V{i:04d}") for i in range(ITEMS)]
        await subscription.subscribe_data_change(nodes, queuesize=1, sampling_interval=0)
        await until(lambda: handler.count >= ITEMS, 30, "bare client notifications")
        return await _measure(lambda: handler.count, window_s)
    finally:
        await client.disconnect()


async def _measure(count: Any, window_s: float) -> tuple[float, float]:
    before, started, cpu = count(), time.perf_counter(), time.process_time()
    await asyncio.sleep(window_s)  # the measurement window, not synchronisation
    taken = count() - before
    rate = taken / (time.perf_counter() - started)
    return rate, (1000 * (time.process_time() - cpu) / taken if taken else 0.0)


def _config(data_dir: Path, endpoint: str) -> Any:
    return validate({
        "gateway": {"id": "bench", "site": "bench", "data_dir": str(data_dir),
                    "allow_root": True, "shutdown_timeout_s": 2.0},
        # Nothing listens there: every reading stays in the outbox.
        "cloud": {"url": f"mqtt://127.0.0.1:{free_port()}", "reconnect_min_s": 5.0},
        "health": {"enabled": False},
        "devices": [{
            "name": "load", "protocol": "opcua", "endpoint": endpoint,
            "publishing_interval_ms": PUBLISHING_MS, "sampling_interval_ms": 0, "queue_size": 1,
            "points": [{"name": f"v{i:04d}", "node_id": f"ns=2;s=Load.V{i:04d}"}
                       for i in range(ITEMS)],
        }],
    })


async def _gateway_rate(data_dir: Path, endpoint: str, window_s: float) -> tuple[float, float]:
    """(readings committed/s, CPU s per 1,000) for the Gateway."""
    async with Gateway(_config(data_dir, endpoint)) as gw:
        await until(lambda: gw.accepted["load"] >= ITEMS, 30, "gateway readings")
        return await _measure(lambda: gw.accepted["load"], window_s)


async def _serve(items: int) -> None:
    import logging

    from simulators.opcua_server import OpcUaSimulator
    from simulators.plant import Plant

    logging.basicConfig(level=logging.CRITICAL)
    # The plant is not run: only the load variables change, as fast as the server can.
    async with OpcUaSimulator(Plant(), load_variables=items) as sim:
        print(json.dumps({"endpoint": sim.endpoint}), flush=True)
        parent_gone = asyncio.ensure_future(asyncio.to_thread(sys.stdin.read))
        value = 0.0
        while not parent_gone.done():
            value += items
            await sim.write_load(value)
            await asyncio.sleep(0)  # let the server answer publish requests between rounds


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        asyncio.run(_serve(int(sys.argv[2])))
    else:
        for figure in main(quick="--quick" in sys.argv):
            print(json.dumps(figure))

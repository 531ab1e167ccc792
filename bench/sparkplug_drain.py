"""Sparkplug B backlog drain: the Sparkplug uplink against bare paho publishing the same payloads.

A backlog of 100-point frames (bench/frames.py's device, its birth first) is committed to
an outbox with no uplink running; then `SparkplugUplink` drains it to a private Mosquitto
(QoS 1, window 64, one DDATA per frame, each translated when it is sent). Measured: frames/s
until the broker had PUBACKed every row, and until the outbox had deleted them. Raw limit,
same run: a bare paho QoS 1 publisher on the event loop with the same window, publishing
the very DDATA payloads (translated beforehand, not timed). Beside them, in the same run,
the CloudEvents uplink draining the same frames, one per message (raw: bare paho with the
same CloudEvents bodies) and in its default batches of 100.

`python -m bench.sparkplug_drain [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.core import figure, time_drain
from bench.frames import SOURCE, Device
from bench.sparkplug_bytes import DRIVER_TYPES
from gateway import events
from gateway.config import CloudSection, StoreSection
from gateway.frames import PointSpec
from gateway.sparkplug.config import SparkplugSection
from gateway.sparkplug.node import BdSeqFile, NodeSession
from gateway.sparkplug.translate import Translator
from gateway.store import Outbox
from gateway.uplink import Uplink
from gateway.uplink_sparkplug import SparkplugUplink
from simulators.mosquitto import Mosquitto

T0 = 1_790_000_000.0
WINDOW = 64


def main(quick: bool) -> list[dict[str, Any]]:
    frames = 2_000 if quick else 10_000
    rounds = 2
    device = Device()
    points = [PointSpec(name, DRIVER_TYPES[kind]) for name, kind in device.points]
    pool = [events.device_birth("press-1", points, at=T0)]
    pool += [events.telemetry(device.frame(T0 + 1 + i)) for i in range(frames)]
    readings = len(device.points)
    results = []
    with tempfile.TemporaryDirectory(prefix="mw-bench-spb-drain-") as tmp, \
            Mosquitto() as broker:
        scratch = Path(tmp)
        ddata = _ddata_payloads(scratch / "bare-node", pool)
        bodies = [("bench/telemetry/press-1", e.encode(SOURCE, i).encode())
                  for i, e in enumerate(pool[1:], 1)]
        spb, spb_deflate, bare_spb, ce_single, ce_batched, bare_ce = [], [], [], [], [], []
        for round_ in range(rounds):  # taking turns, best of each: a busy machine slows both
            bare_spb.append(asyncio.run(_bare(broker.port, ddata, WINDOW)))
            spb.append(asyncio.run(_drain(scratch / f"spb{round_}", broker, pool, "none")))
            spb_deflate.append(asyncio.run(_drain(scratch / f"spbz{round_}", broker, pool,
                                                  "deflate")))
            bare_ce.append(asyncio.run(_bare(broker.port, bodies, WINDOW)))
            ce_single.append(asyncio.run(_drain(scratch / f"ce1{round_}", broker, pool, None, 1)))
            ce_batched.append(asyncio.run(_drain(scratch / f"ce100{round_}", broker, pool, None,
                                                 100)))
        best = max(bare_spb)
        results += [
            figure("sparkplug_uplink_drain_frames_acked", max(a for a, _ in spb), best,
                   "frames/s", ""),
            figure("sparkplug_uplink_drain_frames_outbox_emptied", max(e for _, e in spb), best,
                   "frames/s", ""),
            figure("sparkplug_uplink_drain_readings_acked", max(a for a, _ in spb) * readings,
                   best * readings, "readings/s", ""),
            figure("sparkplug_uplink_drain_deflate_frames_acked", max(a for a, _ in spb_deflate),
                   best, "frames/s", ""),
            figure("cloudevents_uplink_drain_1_per_message_frames_acked",
                   max(a for a, _ in ce_single), max(bare_ce), "frames/s", ""),
            figure("cloudevents_uplink_drain_batched_100_frames_acked",
                   max(a for a, _ in ce_batched), max(bare_ce), "frames/s", ""),
        ]
    return results


def _ddata_payloads(scratch: Path, pool: list[events.Event]) -> list[tuple[str, bytes]]:
    """The DDATA (and birth) messages the node sends for `pool`, made once, untimed."""
    session = NodeSession(BdSeqFile.in_dir(scratch))
    translator = Translator(session, "plant-a", "bench")
    session.begin()
    out = [(m.topic, m.payload) for m in translator.births()]
    for event in pool:
        stored = orjson.loads(event.encode(SOURCE, 1))
        out += [(m.topic, m.payload) for m in translator.translate(stored)]
    return out


async def _drain(path: Path, broker: Mosquitto, pool: list[events.Event],
                 compression: str | None, batch: int = 100) -> tuple[float, float]:
    """Frames/s from an uplink starting on a full outbox (`compression` None: CloudEvents
    in batches of `batch`; else Sparkplug B with that compression)."""
    await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
    outbox = Outbox(path / "outbox.db", StoreSection(max_bytes=1 << 34), source_prefix=SOURCE)
    await outbox.open()
    for start in range(0, len(pool), 1_000):
        await outbox.append(pool[start:start + 1_000])
    uplink: Uplink
    if compression is None:
        uplink = Uplink(CloudSection(url=broker.url, batch_max_events=batch,
                                     max_inflight=WINDOW), outbox, prefix="bench",
                        gateway_id="bench")
    else:
        cloud = CloudSection(url=broker.url, max_inflight=WINDOW, format="sparkplug_b",
                             sparkplug=SparkplugSection(group_id="plant-a",
                                                        compression=compression))
        uplink = SparkplugUplink(cloud, outbox, gateway_id="bench", data_dir=path)
    try:
        acked, emptied = await time_drain(uplink, outbox, len(pool))
    finally:
        await outbox.close()
    frames = len(pool) - 1  # the birth is no frame
    return acked * frames / len(pool), emptied * frames / len(pool)


async def _bare(port: int, messages: list[tuple[str, bytes]], window: int) -> float:
    """Messages/s of a bare paho QoS 1 publisher driven by the event loop, `window` in flight."""
    loop = asyncio.get_running_loop()
    connected, finished = loop.create_future(), loop.create_future()
    room = asyncio.Event()
    acked = 0
    count = len(messages)

    def on_publish(*_: Any) -> None:
        nonlocal acked
        acked += 1
        room.set()
        if acked == count:
            finished.set_result(None)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bare-spb-{window}")
    client.max_inflight_messages_set(0)
    client.on_publish = on_publish
    client.on_connect = lambda *_: connected.set_result(None)
    client.connect("127.0.0.1", port)
    sock = client.socket()
    client.on_socket_close = lambda c, u, s: (loop.remove_reader(s), loop.remove_writer(s))
    client.on_socket_register_write = lambda c, u, s: loop.add_writer(s, client.loop_write)
    client.on_socket_unregister_write = lambda c, u, s: loop.remove_writer(s)
    loop.add_reader(sock, client.loop_read)
    await asyncio.wait_for(connected, 10)
    started, sent = time.perf_counter(), 0
    while sent < count:
        while sent < count and sent - acked < window:
            topic, payload = messages[sent]
            client.publish(topic, payload, qos=1)
            sent += 1
        room.clear()
        await room.wait()
    await asyncio.wait_for(finished, 120)
    rate = count / (time.perf_counter() - started)
    client.disconnect()
    client.loop_write()
    return rate


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    for result in main(parser.parse_args().quick):
        print(json.dumps(result))

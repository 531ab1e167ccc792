"""Frame benchmarks: bytes per reading on the wire and on disk, and durable ingest of frames.

The device is what the frames issue names: 100 points, realistic slowly varying values,
polled once a second. Its points are ISA-style tags (`TI-101`, `PI-204`...): 60 analog
float32 values (random walks of temperatures, pressures, flows, as a Modbus device
gives them), 25 scaled int16 values (x0.1), 10 counters and 5 booleans.

- wire: the frames go through the real path (frames -> telemetry events -> outbox ->
  uplink -> a private Mosquitto), and a subscriber adds up the MQTT PUBLISH packets it
  receives (fixed header, topic, packet id, properties, payload) per reading. Steady
  state (one poll a second: one frame per message) and a backlog drained after an
  outage (100 frames per message), as JSON and with zstd. Raw limit: the values alone
  as packed binary (4 bytes a reading), the floor no self-describing form reaches.
- disk: an hour of outage (3,600 frames) committed to the outbox, then a checkpoint;
  bytes of the database and WAL files per reading, and what a GB holds in hours at
  1,000 readings/s. Raw limit: the same JSON bodies in a bare SQLite table with no id
  index.
- ingest: frames made into telemetry events and committed (durability=process) by ten
  producers, readings/s; raw limit: bare sqlite3 inserting the same encoded rows.

`python -m bench.frames [--quick]` runs this suite alone; `--names long` uses
descriptive point names (`zone_7_temperature_c`) to show what names cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.core import bare_insert_rate, figure
from gateway import events
from gateway.config import CloudSection, StoreSection
from gateway.frames import Frame, Value
from gateway.store import Outbox
from gateway.uplink import Uplink
from simulators.mosquitto import Mosquitto
from simulators.wait import until

PREFIX = "bench/frames"
SOURCE = "/bench/frames"
T0 = 1_790_000_000.0
RAW_BYTES_PER_READING = 4  # a float32 or int32, packed, no name, no time


class Device:
    """A 100-point device whose values drift slowly, sampled like a Modbus poll decodes."""

    def __init__(self, seed: int = 7, names: str = "isa") -> None:
        rng = random.Random(seed)
        self.rng = rng
        kinds = ["analog"] * 60 + ["scaled"] * 25 + ["counter"] * 10 + ["flag"] * 5
        prefixes = ["TI", "PI", "FI", "LI", "AI"]
        self.points: list[tuple[str, str]] = []
        for index, kind in enumerate(kinds):
            if names == "long":
                name = f"zone_{index // 10}_{['temperature_c', 'pressure_bar', 'flow_m3h', 'level_pct', 'speed_rpm'][index % 5]}_{index % 10}"  # noqa: E501
            else:
                name = f"{prefixes[index % 5]}-{101 + index}"
            self.points.append((name, kind))
        self.state = [rng.uniform(10, 90) for _ in kinds]

    def frame(self, at: float) -> Frame:
        values: dict[str, Value] = {}
        for index, (name, kind) in enumerate(self.points):
            if kind == "analog":  # a float32 register: the shortest decimal of that float32
                self.state[index] += self.rng.gauss(0, 0.02)
                values[name] = float(str(np.float32(self.state[index])))
            elif kind == "scaled":  # an int16 register x 0.1
                self.state[index] += self.rng.gauss(0, 0.05)
                values[name] = round(round(self.state[index] * 10) / 10, 1)
            elif kind == "counter":
                self.state[index] += self.rng.random() < 0.3
                values[name] = int(self.state[index])
            else:
                values[name] = self.rng.random() < 0.98
        return Frame("press-1", at, values, at)


def main(quick: bool, names: str = "isa") -> list[dict[str, Any]]:
    frames = 120 if quick else 600
    outage = 600 if quick else 3_600
    ingest = 2_000 if quick else 10_000
    results = []
    with tempfile.TemporaryDirectory(prefix="mw-bench-frames-") as tmp, Mosquitto() as broker:
        scratch = Path(tmp)
        for compression in ("none", "zstd"):
            for label, per_message, linger_s in (("steady_1s_poll", 1, 0.0),
                                                 ("steady_1s_poll_linger_5s", 100, 5.0),
                                                 ("backlog_drain", 100, 0.0)):
                size = asyncio.run(_wire(scratch / f"wire-{compression}-{label}.db", broker,
                                         Device(names=names), frames, per_message,
                                         compression, linger_s))
                results.append(figure(
                    f"wire_bytes_per_reading_{label}_{'json' if compression == 'none' else 'zstd'}",
                    size, RAW_BYTES_PER_READING, "B/reading",
                    "<= 25 B" if compression == "none" else "<= 8 B", 2))
        disk, raw_disk = asyncio.run(_disk(scratch, Device(names=names), outage))
        results.append(figure("outbox_bytes_per_reading_after_checkpoint", disk, raw_disk,
                               "B/reading", "<= 30 B", 2))
        hours = 1e9 / (disk * 1_000) / 3600
        results.append(figure("outage_hours_per_gb_at_1000_readings_s", hours,
                               1e9 / (raw_disk * 1_000) / 3600, "h", ">= 9 h", 1))
        pool = [events.telemetry(Device(seed=3, names=names).frame(T0 + i)) for i in range(10)]
        raw = _bare_sqlite(scratch / "bare.db", pool, ingest)
        rate = asyncio.run(_ingest(scratch / "ingest.db", Device(seed=5, names=names), ingest))
        results.append(figure("durable_ingest_100_point_frames", rate, raw, "readings/s",
                               ">= 500k readings/s"))
    return results


# -- the wire ---------------------------------------------------------------------------


class WireCounter:
    """Adds up the MQTT PUBLISH packets of the frames that reach a subscriber."""

    def __init__(self, port: int) -> None:
        self.bytes = 0
        self.readings = 0
        self._lock = threading.Lock()
        ready = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_connect = lambda c, *_: c.subscribe(f"{PREFIX}/telemetry/#", qos=1)
        self._client.on_subscribe = lambda *_: ready.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not ready.wait(10):
            raise TimeoutError("no subscription")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        from gateway.cloudevents import decode

        properties = msg.properties.pack() if msg.properties is not None else b""
        variable = 2 + len(msg.topic.encode()) + 2 + len(properties) + len(msg.payload)
        fixed = 1 + len(_remaining_length(variable))
        values = sum(len(e["data"]["values"]) for e in decode(msg.payload))
        with self._lock:
            self.bytes += fixed + variable
            self.readings += values

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


async def _wire(path: Path, broker: Mosquitto, device: Device, frames: int, per_message: int,
                compression: str, linger_s: float) -> float:
    outbox = Outbox(path, StoreSection(max_bytes=1 << 34), source_prefix=SOURCE)
    await outbox.open()
    counter = WireCounter(broker.port)
    # Time runs 20x faster than the plant's: a poll every 50 ms and a linger of
    # linger_s / 20 put the same number of frames in each message as 1 s and linger_s.
    cloud = CloudSection(url=broker.url, mqtt_version="5", compression=compression,
                         batch_max_events=per_message, linger_s=linger_s / 20)
    uplink = Uplink(cloud, outbox, prefix=PREFIX, gateway_id="bench")
    try:
        batch = [events.telemetry(device.frame(T0 + i)) for i in range(frames)]
        if per_message == 1:  # a frame a second: each one leaves before the next comes
            task = asyncio.create_task(uplink.run())
            await until(lambda: uplink.connected, 10, "connected")
            for event in batch:
                await outbox.append([event])
                await until(lambda: outbox.stats().depth == 0, 10, "sent")
        elif linger_s:  # a frame a (scaled) second, each message lingering for more
            task = asyncio.create_task(uplink.run())
            await until(lambda: uplink.connected, 10, "connected")
            for event in batch:
                await outbox.append([event])
                await asyncio.sleep(0.05)  # the poll interval, scaled: pacing, not a sync
        else:  # an outage: the backlog waits, then drains in batches
            await outbox.append(batch)
            task = asyncio.create_task(uplink.run())
        readings = frames * len(device.points)
        await until(lambda: counter.readings >= readings, 60, "every frame at the subscriber")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return counter.bytes / counter.readings
    finally:
        counter.close()
        await outbox.close()


# -- the disk ---------------------------------------------------------------------------


async def _disk(scratch: Path, device: Device, frames: int) -> tuple[float, float]:
    path = scratch / "outage.db"
    outbox = Outbox(path, StoreSection(max_bytes=1 << 34), source_prefix=SOURCE)
    await outbox.open()
    batch = [events.telemetry(device.frame(T0 + i)) for i in range(frames)]
    for start in range(0, frames, 100):
        await outbox.append(batch[start:start + 100])
    await outbox.close()
    readings = frames * len(device.points)
    ours = _files_after_checkpoint(path) / readings
    bare = scratch / "bare-bodies.db"
    conn = sqlite3.connect(bare, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (body TEXT)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?)",
                     [(e.encode(SOURCE, i),) for i, e in enumerate(batch)])
    conn.execute("COMMIT")
    conn.close()
    return ours, _files_after_checkpoint(bare) / readings


def _files_after_checkpoint(path: Path) -> int:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal"))
               if p.exists())


# -- ingest -----------------------------------------------------------------------------


def _bare_sqlite(path: Path, pool: list[events.Event], frames: int) -> float:
    """Readings/s for plain sqlite3 inserting encoded 100-point frames, 100 per commit."""
    rows = [(f"{i:032x}", "press-1", "telemetry", 0, 0.0, 0,
             pool[i % len(pool)].encode(SOURCE, i), 100) for i in range(frames)]
    return bare_insert_rate(path, rows, (100,)) * 100


async def _ingest(path: Path, device: Device, frames: int, producers: int = 10) -> float:
    made = [device.frame(T0 + i) for i in range(frames)]
    outbox = Outbox(path, StoreSection(durability="process", max_bytes=1 << 34),
                    source_prefix=SOURCE)
    await outbox.open()
    try:
        async def produce(offset: int) -> None:
            for index in range(offset, frames, producers):
                await outbox.append([events.telemetry(made[index])])

        started = time.perf_counter()
        await asyncio.gather(*(produce(i) for i in range(producers)))
        return frames * len(device.points) / (time.perf_counter() - started)
    finally:
        await outbox.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.frames",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--names", choices=("isa", "long"), default="isa")
    args = parser.parse_args()
    for line in main(args.quick, args.names):
        print(json.dumps(line), flush=True)


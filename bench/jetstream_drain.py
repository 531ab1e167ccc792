"""JetStream backlog drain: the NATS uplink beside a bare nats-py publisher of the same payloads.

A backlog of one-value telemetry events (1,000,000; 50,000 with --quick) is committed
to an outbox with no uplink running. Then `NatsUplink` drains it into a JetStream
stream on a private nats-server (file storage, one replica, 120 s duplicate window):
one publish per event with `Nats-Msg-Id`, its window of 256. Measured: events/s until
JetStream had acknowledged every event, and until the outbox had deleted every row.
Raw limit, same run, same server: nats-py's own `publish_async` publishing the very
bodies the outbox holds (read back beforehand, untimed) to the same kind of stream
with the same ids and the same window, until every PubAck is in. Rounds take turns
(the best of each counts: a busy machine slows both); each round uses fresh streams.

`python -m bench.jetstream_drain [--quick]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import nats

from bench.core import figure, time_drain
from gateway import events
from gateway.config import CloudSection, StoreSection
from gateway.frames import Frame
from gateway.store import Outbox
from gateway.uplink_nats import DEFAULT_WINDOW, NatsUplink
from simulators.nats_server import JetStreamServer

T0 = 1_790_000_000.0
SOURCE = "/bench/js"
CHUNK = 10_000
TARGET = ">= 0.7x bare nats-py publish_async"


def main(quick: bool) -> list[dict[str, Any]]:
    count, rounds = (50_000, 2) if quick else (1_000_000, 2)
    with tempfile.TemporaryDirectory(prefix="mw-bench-js-") as tmp, \
            JetStreamServer() as server:
        results = asyncio.run(_rounds(Path(tmp), server.url, count, rounds))
    ours_acked, ours_emptied, bare = results
    return [
        figure("jetstream_uplink_drain_events_acked", ours_acked, bare, "events/s", TARGET),
        figure("jetstream_uplink_drain_events_outbox_emptied", ours_emptied, bare, "events/s",
               TARGET),
    ]


async def _rounds(scratch: Path, url: str, count: int, rounds: int) -> tuple[float, float, float]:
    template = scratch / "backlog.db"
    bodies = await _fill(template, count)
    acked, emptied, bare = [], [], []
    for round_ in range(rounds):
        bare.append(await _bare(url, bodies, round_))
        copy = scratch / f"outbox{round_}.db"
        await asyncio.to_thread(shutil.copyfile, template, copy)
        a, e = await _drain(copy, url, count, round_)
        acked.append(a)
        emptied.append(e)
        copy.unlink()
    return max(acked), max(emptied), max(bare)


async def _fill(path: Path, count: int) -> list[tuple[bytes, str]]:
    """Commit `count` events with no uplink running; (body, id) of each, as stored."""
    outbox = Outbox(path, StoreSection(max_bytes=1 << 34), source_prefix=SOURCE)
    await outbox.open()
    try:
        for start in range(0, count, CHUNK):
            await outbox.append([events.telemetry(Frame("press-1", T0 + i, {"n": float(i)},
                                                        T0 + i))
                                 for i in range(start, min(count, start + CHUNK))])
        bodies: list[tuple[bytes, str]] = []
        last = 0
        while rows := await outbox.fetch(last, 50_000):
            bodies += [(row.body.encode(), json.loads(row.body)["id"]) for row in rows]
            last = rows[-1].pos
    finally:
        await outbox.close()
    return bodies


async def _fresh_stream(url: str, name: str, subjects: list[str]) -> None:
    client = await nats.connect(url)
    try:
        js = client.jetstream(timeout=30)
        try:
            await js.delete_stream(name)
        except nats.js.errors.NotFoundError:
            pass
        await js.add_stream(name=name, subjects=subjects, duplicate_window=120.0)
    finally:
        await client.close()


async def _drain(path: Path, url: str, count: int, round_: int) -> tuple[float, float]:
    """Events/s of NatsUplink draining the outbox at `path`: (acked, outbox emptied)."""
    name = f"DRAIN{round_}"
    await _fresh_stream(url, name, [f"bench.drain{round_}.>"])
    outbox = Outbox(path, StoreSection(max_bytes=1 << 34), source_prefix=SOURCE)
    await outbox.open()
    cloud = CloudSection(url=url, nats={"stream": name})  # type: ignore[arg-type]
    uplink = NatsUplink(cloud, outbox, prefix=f"bench/drain{round_}", gateway_id="bench")
    try:
        # Each poll collects every metric, /proc reads included: not too often.
        return await time_drain(uplink, outbox, count, poll_s=0.02)
    finally:
        await outbox.close()


async def _bare(url: str, bodies: list[tuple[bytes, str]], round_: int) -> float:
    """Events/s of nats-py's publish_async with the same bodies, ids and window."""
    name = f"BARE{round_}"
    subject = f"bench.bare{round_}.telemetry.press-1"
    await _fresh_stream(url, name, [f"bench.bare{round_}.>"])
    client = await nats.connect(url)
    try:
        js = client.jetstream(publish_async_max_pending=DEFAULT_WINDOW)
        started = time.perf_counter()
        for body, event_id in bodies:
            await js.publish_async(subject, body, headers={"Nats-Msg-Id": event_id})
        await js.publish_async_completed()
        return len(bodies) / (time.perf_counter() - started)
    finally:
        await client.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    for line in main(parser.parse_args().quick):
        print(json.dumps(line))

"""kill -9 during a JetStream drain: afterwards the stream holds every produced event exactly once.

A backlog of `events` telemetry frames is committed to an outbox with no uplink running
(the produced ids are known exactly). Then `millwright run` (a child process) drains
it into a private JetStream server, and is SIGKILLed `kills` times, each time after the
stream has grown by another share of the backlog, and started again. The last run
drains the rest and is stopped with SIGTERM. Verdict: the stream's telemetry messages
= unique `Nats-Msg-Id`s = the produced ids, each message's id its event's, and the
outbox empty. The gateway's log says how many resends the stream recognised as
duplicates (proof that the kills left messages unanswered in flight).

CI runs the short mode (tests/test_nats_e2e.py: 10,000 events, 3 kills);
`python -m bench.jetstream_chaos [--events 100000] [--kills 5]` is the long one.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.chaos_ledger import outbox_depth
from bench.chaos_rig import to_toml
from gateway import events
from gateway.config import StoreSection
from gateway.frames import Frame
from gateway.store import Outbox
from simulators.jetstream_reader import create_stream, read_stream, stream_counts
from simulators.nats_server import JetStreamServer
from simulators.wait import until

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_790_000_000.0
STREAM = "MILLWRIGHT"
TELEMETRY = "millwright.lab.gw-chaos.telemetry.*"
APPEND_CHUNK = 5_000
_DUPLICATES = re.compile(r"(\d+) events were in the stream already")


@dataclass
class KillReport:
    produced: int = 0
    stored: int = 0  # telemetry messages in the stream
    unique_ids: int = 0
    ids_match: bool = False  # the stored ids are exactly the produced ones
    kills: list[int] = field(default_factory=list)  # stream count at each SIGKILL
    duplicates_recognised: int = 0  # PubAcks with duplicate: true, from the gateway's log
    left_in_outbox: int = -1
    exit_code: int | None = None
    seconds: float = 0.0
    log_tail: str = ""

    @property
    def exactly_once(self) -> bool:
        return (self.stored == self.unique_ids == self.produced > 0 and self.ids_match
                and self.left_in_outbox == 0)

    def summary(self) -> str:
        return (f"produced {self.produced}, stored {self.stored}, unique ids "
                f"{self.unique_ids}, ids match {self.ids_match}, kills at {self.kills}, "
                f"{self.duplicates_recognised} resends recognised as duplicates, "
                f"{self.left_in_outbox} left in the outbox, exit {self.exit_code}, "
                f"{self.seconds:.1f} s")


async def fill_outbox(path: Path, count: int, device: str = "press-1") -> set[str]:
    """Commit `count` telemetry frames to the outbox at `path`; their ids."""
    outbox = Outbox(path, StoreSection(), source_prefix="/lab/gw-chaos")
    await outbox.open()
    ids: set[str] = set()
    try:
        for start in range(0, count, APPEND_CHUNK):
            batch = [events.telemetry(Frame(device, T0 + i, {"n": i}, T0 + i))
                     for i in range(start, min(count, start + APPEND_CHUNK))]
            await outbox.append(batch)
            ids.update(e.id for e in batch)
    finally:
        await outbox.close()
    return ids


def gateway_config(directory: Path, url: str) -> Path:
    """A gateway with no devices (it only drains) publishing into STREAM at `url`."""
    path = directory / "gateway.toml"
    path.write_text(to_toml({
        "gateway": {"id": "gw-chaos", "site": "lab", "data_dir": str(directory / "data"),
                    "allow_root": True, "shutdown_timeout_s": 10.0},
        "cloud": {"url": url, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5,
                  "nats": {"stream": STREAM}},
        "health": {"enabled": False}}))
    return path


def start_gateway(config: Path) -> subprocess.Popen[bytes]:
    with open(config.with_name("gateway.log"), "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config",
                                 str(config)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


async def stored_count(url: str) -> int:
    return sum((await stream_counts(url, STREAM, TELEMETRY)).values())


async def wait_stored(url: str, at_least: int, timeout_s: float, what: str) -> int:
    """Wait until the stream holds `at_least` telemetry messages; the count seen then."""
    count = 0

    async def enough() -> bool:
        nonlocal count
        count = await stored_count(url)
        return count >= at_least

    await until(enough, timeout_s, what, detail=lambda: f"{count} of {at_least} in the stream")
    return count


async def run_kills(events_count: int, kills: int, timeout_s: float = 300.0) -> KillReport:
    """The whole run (module docstring) in a fresh directory and JetStream server."""
    report = KillReport()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mw-js-chaos-") as tmp, JetStreamServer() as server:
        directory = Path(tmp)
        await create_stream(server.url, STREAM, ["millwright.>"])
        config = gateway_config(directory, server.url)
        outbox = directory / "data" / "outbox.db"
        outbox.parent.mkdir(parents=True)
        produced = await fill_outbox(outbox, events_count)
        report.produced = len(produced)
        step = events_count // (kills + 1)
        for round_ in range(kills):
            proc = start_gateway(config)
            try:
                report.kills.append(await wait_stored(
                    server.url, step * (round_ + 1), timeout_s, f"drain before kill {round_}"))
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
        proc = start_gateway(config)
        try:
            await wait_stored(server.url, events_count, timeout_s, "the whole backlog")
            # The deletes of the last acknowledged rows commit a moment later.
            await until(lambda: outbox_depth(outbox) == 0, timeout_s, "the outbox emptied")
        finally:
            proc.send_signal(signal.SIGTERM)
            report.exit_code = proc.wait(30)
        report.left_in_outbox = outbox_depth(outbox) or 0
        stored = await read_stream(server.url, STREAM, TELEMETRY, timeout_s=timeout_s)
        report.stored = len(stored)
        ids = [item.msg_id for item in stored]
        report.unique_ids = len(set(ids))
        report.ids_match = set(ids) == produced and all(
            item.msg_id == item.event["id"] for item in stored)
        log = config.with_name("gateway.log").read_text(errors="replace")
        report.duplicates_recognised = sum(int(n) for n in _DUPLICATES.findall(log))
        report.log_tail = log[-3000:]
    report.seconds = time.monotonic() - started
    return report


def main(quick: bool) -> list[dict[str, Any]]:
    """For `python -m bench`: the long mode (the short one with --quick)."""
    report = asyncio.run(run_kills(10_000 if quick else 100_000, 3 if quick else 5))
    return [{"metric": "jetstream_kill9_exactly_once", "value": report.exactly_once,
             "detail": report.summary()}]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--kills", type=int, default=5)
    args = parser.parse_args()
    result = asyncio.run(run_kills(args.events, args.kills))
    print(result.summary())
    raise SystemExit(0 if result.exactly_once else 1)

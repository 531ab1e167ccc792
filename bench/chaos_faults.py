"""The chaos run's faults, and how each one's recovery is timed.

Four kinds, in rounds that hold every kind once, each round shuffled by a seeded RNG
(so the first four faults already cover every kind):
- gateway_kill: SIGKILL the gateway, snapshot its outbox file, start it again;
- cloud_outage: stop the cloud broker for a while and start it again; in a third
  of them the gateway is also SIGKILLed (and restarted) during the outage, with the
  backlog in its outbox, and in another third the moment the first event of that
  backlog reaches the cloud (killed from the subscriber's thread), while it is sent;
- opcua_restart: a fresh OPC UA server on the same port, after some downtime;
- modbus_silent: the Modbus unit stops answering for a while, then answers again.

A fault's recovery time runs from the moment the broken part is back (gateway
restarted, broker listening, server restarted, unit answering) until telemetry
that the gateway received after that moment, from every affected device, has
reached the cloud. Its drain time (kills and outages) runs from the same moment
until every event the outbox had committed by then is at the cloud.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.chaos_ledger import committed_sequences, outbox_depth, outbox_rows
from bench.chaos_rig import DEVICES, MODBUS_DEVICE, MODBUS_UNIT, OPCUA_DEVICE, Rig
from simulators.wait import until

KINDS = ("gateway_kill", "cloud_outage", "opcua_restart", "modbus_silent")
HOLD_S = (2.0, 6.0)  # how long an outage or a silent unit lasts, drawn uniformly
OPCUA_DOWN_S = (0.0, 3.0)  # how long the OPC UA server stays away on a restart


@dataclass
class FaultRecord:
    """One fault as it happened; times are wall-clock epoch seconds."""

    kind: str
    started: float
    cleared: float = 0.0
    hold_s: float = 0.0
    kills: int = 0
    affected: tuple[str, ...] = ()
    recovery_s: float | None = None
    drain_s: float | None = None
    others_flowing: bool | None = None  # unaffected devices kept delivering during the fault
    effect: str | None = None  # the evidence that the fault bit; None: no evidence
    detail: str = ""
    _drain_target: dict[str, int] = field(default_factory=dict, repr=False)


class Chaos:
    """Applies faults to a rig and keeps the records, kill snapshots and pending drains."""

    def __init__(self, rig: Rig, rng: random.Random, recovery_timeout_s: float) -> None:
        self.rig = rig
        self.rng = rng
        self.recovery_timeout_s = recovery_timeout_s
        self.records: list[FaultRecord] = []
        self.snapshots: list[list[dict[str, Any]]] = []
        self.depths: list[int] = []  # outbox depths read at kills and broker returns
        self.unexpected_exits: list[str] = []  # the gateway died when nobody killed it
        self.stalled: list[str] = []  # faults that did not finish: the rig or the gateway hung
        self._draining: list[FaultRecord] = []
        self._round: list[str] = []
        self._faults: dict[str, Callable[[FaultRecord], Awaitable[None]]] = {
            "gateway_kill": self._gateway_kill, "cloud_outage": self._cloud_outage,
            "opcua_restart": self._opcua_restart, "modbus_silent": self._modbus_silent,
        }

    def next_kind(self) -> str:
        if not self._round:
            self._round = list(KINDS)
            self.rng.shuffle(self._round)
        return self._round.pop()

    def kinds_done(self) -> set[str]:
        return {record.kind for record in self.records}

    async def apply(self, kind: str) -> FaultRecord:
        """Run one fault to its end and wait (bounded) for the flow it broke to resume."""
        self.check_gateway_alive()
        record = FaultRecord(kind, started=time.time())
        self.records.append(record)
        # Bounded, so a part that hangs is a finding in the report, not a run that never ends.
        bound_s = 2 * self.recovery_timeout_s + 30.0
        try:
            await asyncio.wait_for(self._faults[kind](record), bound_s)
        except TimeoutError:
            self.stalled.append(f"{kind} started at {record.started:.1f} did not finish "
                                f"within {bound_s:g} s")
            record.cleared = time.time()
        watches = [self.rig.ledger.watch(device, record.cleared) for device in record.affected]
        with contextlib.suppress(TimeoutError):  # no recovery in time is itself the finding
            await until(lambda: all(w.arrived_at is not None for w in watches),
                        self.recovery_timeout_s, f"{kind} recovered", interval_s=0.05)
            record.recovery_s = max(w.arrived_at or 0.0 for w in watches) - record.cleared
        return record

    def check_gateway_alive(self) -> None:
        """A gateway that exited on its own is a finding: note it, and start it again."""
        process = self.rig.gateway
        if process is not None and process.poll() is not None:
            self.unexpected_exits.append(f"exit status {process.returncode} at "
                                         f"{time.time():.1f}")
            self.rig.start_gateway()

    def check_drains(self) -> None:
        """Stamp the drain time of every kill or outage whose backlog is now at the cloud."""
        now = time.time()
        for record in list(self._draining):
            if self.rig.ledger.caught_up(record._drain_target):
                record.drain_s = now - record.cleared
                self._draining.remove(record)

    def find_effects(self) -> None:
        """After the run: the evidence that each device fault bit (the device went offline)."""
        for record in self.records:
            if record.kind in ("opcua_restart", "modbus_silent"):
                device = record.affected[0]
                end = record.cleared + (record.recovery_s or 0.0) + 1.0
                if self.rig.ledger.went_offline(device, record.started, end):
                    record.effect = f"{device} reported offline"

    @property
    def drains_pending(self) -> int:
        return len(self._draining)

    # -- the faults ------------------------------------------------------------------------

    async def _kill_and_restart(self, record: FaultRecord) -> tuple[float, dict[str, int]]:
        """SIGKILL, snapshot the outbox at that instant, restart: (restart time, seqs committed)."""
        code = await asyncio.to_thread(self.rig.kill_gateway)
        if code == -signal.SIGKILL and record.kind == "gateway_kill":
            record.effect = "gateway SIGKILLed"  # (an outage's evidence is its backlog)
        path = self.rig.outbox_path
        rows = await asyncio.to_thread(outbox_rows, path)
        committed = await asyncio.to_thread(committed_sequences, path)
        self.snapshots.append(rows)
        self.depths.append(len(rows))
        record.kills += 1
        record.detail += f"killed with {len(rows)} unacked in the outbox; "
        return self.rig.start_gateway(), committed

    def _drain_from(self, record: FaultRecord, committed: dict[str, int]) -> None:
        record._drain_target = committed
        self._draining.append(record)

    async def _gateway_kill(self, record: FaultRecord) -> None:
        record.affected = DEVICES
        record.cleared, committed = await self._kill_and_restart(record)
        self._drain_from(record, committed)

    async def _cloud_outage(self, record: FaultRecord) -> None:
        """The broker goes away; the gateway may also be killed during it, or as it returns."""
        record.affected = DEVICES
        record.hold_s = self.rng.uniform(*HOLD_S)
        kill = self.rng.choice(("no kill", "kill during", "kill on return"))
        record.detail += f"{kill}: "
        await asyncio.to_thread(self.rig.cloud_broker.stop)
        if kill == "kill during":
            await asyncio.sleep(record.hold_s / 2)  # the outage's length, not synchronisation
            await self._kill_and_restart(record)
            await asyncio.sleep(record.hold_s / 2)
        else:
            await asyncio.sleep(record.hold_s)
        depth = await asyncio.to_thread(outbox_depth, self.rig.outbox_path)
        record.detail += f"backlog {depth} when the broker came back; "
        self.depths.append(depth or 0)
        if depth:
            record.effect = f"{depth} events held back"
        committed = await asyncio.to_thread(committed_sequences, self.rig.outbox_path)
        await asyncio.to_thread(self.rig.cloud_broker.start)
        record.cleared = time.time()
        if kill == "kill on return":
            # Killed from the subscriber's thread the moment the first event of the backlog
            # arrives: mid-send, with rows in flight, or acked and not yet deleted.
            fired = threading.Event()
            self.rig.ledger.on_next_event(lambda: (self.rig.signal_gateway(signal.SIGKILL),
                                                   fired.set()))
            await asyncio.to_thread(fired.wait, self.recovery_timeout_s)
            self.rig.ledger.disarm()  # not fired in time: it must not hit a later gateway
            record.cleared, committed = await self._kill_and_restart(record)
        self._drain_from(record, committed)

    async def _opcua_restart(self, record: FaultRecord) -> None:
        record.affected = (OPCUA_DEVICE,)
        others = self._others(record)
        record.hold_s = self.rng.uniform(*OPCUA_DOWN_S)
        await self.rig.opcua.restart(down_s=record.hold_s)
        record.cleared = time.time()
        record.others_flowing = all(w.arrived_at is not None for w in others)

    async def _modbus_silent(self, record: FaultRecord) -> None:
        record.affected = (MODBUS_DEVICE,)
        others = self._others(record)
        record.hold_s = self.rng.uniform(*HOLD_S)
        self.rig.modbus.set_fault(MODBUS_UNIT, "silent")
        try:
            await asyncio.sleep(record.hold_s)  # the fault's length, not synchronisation
        finally:
            self.rig.modbus.set_fault(MODBUS_UNIT, None)
        record.cleared = time.time()
        record.others_flowing = all(w.arrived_at is not None for w in others)

    def _others(self, record: FaultRecord) -> list[Any]:
        return [self.rig.ledger.watch(device, record.started)
                for device in DEVICES if device not in record.affected]


class BacklogMonitor:
    """Samples the outbox depth from outside the gateway, a few times a second."""

    def __init__(self, rig: Rig, interval_s: float = 0.25) -> None:
        self.rig = rig
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []

    @property
    def max_depth(self) -> int:
        return max((depth for _, depth in self.samples), default=0)

    def max_between(self, start: float, end: float) -> int:
        return max((d for t, d in self.samples if start <= t <= end), default=0)

    async def run(self) -> None:
        while True:
            depth = await asyncio.to_thread(outbox_depth, self.rig.outbox_path)
            if depth is not None:
                self.samples.append((time.time(), depth))
            await asyncio.sleep(self.interval_s)

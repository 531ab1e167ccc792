"""Chaos run: the whole gateway under repeated faults, then proof that nothing committed was lost.

All three drivers read their simulators (one accelerated plant: Modbus TCP, OPC UA,
MQTT via a plant broker) with the bundled predictor on every machine, while a seeded
schedule SIGKILLs the gateway (a child process, `millwright run`), stops and restarts
the cloud broker (sometimes killing the gateway during the outage), restarts the
OPC UA server and silences the Modbus unit (bench/chaos_faults.py). Loopback only.

At the end the faults stop, the gateway drains its outbox and is stopped with
SIGTERM (it must exit 0), and the books are checked (bench/chaos_ledger.py): for every
source, the seqs at the cloud must be exactly 1..last committed, and every row found
in the outbox right after a SIGKILL must have arrived. Printed: events produced and
delivered, duplicates, lost (must be 0), max backlog, recovery and drain times, as
JSON lines `{"metric","value","unit","raw","ratio"}`, and a summary on stderr.

    python -m bench.chaos [--duration-s N] [--seed S] [--keep]
    python -m bench --only chaos [--quick]        # quick: a 45 s fault phase
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bench.chaos_faults import KINDS, BacklogMonitor, Chaos, FaultRecord
from bench.chaos_ledger import Verdict, committed_sequences, outbox_depth, outbox_drops
from bench.chaos_rig import DEVICES, SHUTDOWN_TIMEOUT_S, Rig, RigSettings
from simulators.wait import until

QUICK_DURATION_S = 45.0
LONG_DURATION_S = 600.0
GAP_S = (1.0, 4.0)  # normal running between two faults, drawn uniformly


@dataclass(frozen=True)
class ChaosSettings:
    duration_s: float = LONG_DURATION_S  # the fault phase; it also lasts until every kind ran
    seed: int = 1
    rig: RigSettings = field(default_factory=RigSettings)
    startup_timeout_s: float = 60.0
    recovery_timeout_s: float = 60.0
    drain_timeout_s: float = 120.0
    verbose: bool = True


@dataclass
class ChaosReport:
    settings: ChaosSettings
    faults: list[FaultRecord]
    verdict: Verdict
    max_backlog: int
    gateway_starts: int
    gateway_exit: int | None
    left_in_outbox: int | None
    dropped: dict[str, int]
    drains_pending: int
    fault_phase_s: float
    unexpected_exits: list[str] = field(default_factory=list)
    stalled: list[str] = field(default_factory=list)
    malformed: int = 0  # messages the cloud subscriber could not decode as CloudEvents
    log_tail: str = ""

    @property
    def kills(self) -> int:
        return sum(f.kills for f in self.faults)

    def count(self, kind: str) -> int:
        return sum(1 for f in self.faults if f.kind == kind)

    def problems(self) -> list[str]:
        """Everything that makes this run a failure (empty: a clean run)."""
        v = self.verdict
        holes = ", ".join(f"{s} {ns[:5]}" for s, ns in list(v.holes.items())[:3])
        out = [f"lost {v.lost} committed events; first holes: {holes}"] if v.lost else []
        if v.snapshot_missing:
            out.append(f"{v.snapshot_missing} rows seen in the outbox after a kill never arrived")
        out += v.conflicts[:10]
        if v.beyond_committed:
            out.append(f"{v.beyond_committed} events arrived with a seq the outbox never gave")
        out += [f"no {kind} fault visibly happened (none left evidence)" for kind in KINDS
                if not any(f.effect for f in self.faults if f.kind == kind)]
        out += [f"{f.kind} at {f.started:.1f}: the flow did not resume within "
                f"{self.settings.recovery_timeout_s:g} s" for f in self.faults
                if f.recovery_s is None]
        out += [f"the gateway exited when nobody killed it: {e}" for e in self.unexpected_exits]
        out += [f"a fault hung: {e}" for e in self.stalled]
        if self.malformed:
            out.append(f"{self.malformed} messages at the cloud were not valid CloudEvents")
        if self.drains_pending:
            out.append(f"{self.drains_pending} backlogs were not delivered by the end")
        if self.gateway_exit != 0:
            out.append(f"the gateway's exit status after SIGTERM was {self.gateway_exit}, not 0")
        if self.left_in_outbox:
            out.append(f"{self.left_in_outbox} events were still in the outbox after the stop")
        if self.dropped:
            out.append(f"the outbox dropped events: {self.dropped}")
        return out

    def figures(self) -> list[dict[str, Any]]:
        v = self.verdict
        out = [
            _figure("chaos_fault_phase", round(self.fault_phase_s, 1), "s"),
            _figure("chaos_faults", len(self.faults), "faults"),
            *(_figure(f"chaos_faults_{kind}", self.count(kind), "faults") for kind in KINDS),
            _figure("chaos_gateway_sigkills", self.kills, "kills"),
            _figure("chaos_events_produced", v.produced, "events"),
            _figure("chaos_events_delivered", v.delivered, "events"),
            _figure("chaos_events_lost", v.lost, "events"),
            _figure("chaos_events_announced_lost", sum(len(n) for n in v.announced.values()),
                    "events"),
            _figure("chaos_duplicates", v.duplicates, "copies"),
            _figure("chaos_duplicates_resent", v.replayed, "copies"),
            _figure("chaos_duplicates_reread", v.reingested, "copies"),
            _figure("chaos_kill_snapshot_rows_checked", v.snapshot_rows, "events"),
            _figure("chaos_maintenance_needed_events", v.by_kind.get("maintenance_needed", 0),
                    "events"),
            _figure("chaos_max_backlog", self.max_backlog, "events"),
            _figure("chaos_device_faults_others_kept_flowing",
                    sum(1 for f in self.faults if f.others_flowing), "faults"),
        ]
        for kind in KINDS:
            times = [f.recovery_s for f in self.faults if f.kind == kind and f.recovery_s]
            if times:
                out.append(_figure(f"chaos_recovery_{kind}_median", round(
                    statistics.median(times), 2), "s"))
                out.append(_figure(f"chaos_recovery_{kind}_max", round(max(times), 2), "s"))
            drains = [f.drain_s for f in self.faults if f.kind == kind and f.drain_s is not None]
            if drains:
                out.append(_figure(f"chaos_drain_{kind}_max", round(max(drains), 2), "s"))
        out.append(_figure("chaos_checks_failed", len(self.problems()), "problems"))
        return out

    def summary(self) -> str:
        v = self.verdict
        device_faults = [f for f in self.faults if f.others_flowing is not None]
        lines = [
            f"chaos run, seed {self.settings.seed}: {len(self.faults)} faults in "
            f"{self.fault_phase_s:.0f} s ("
            + ", ".join(f"{kind} {self.count(kind)}" for kind in KINDS)
            + f"), {self.kills} SIGKILLs, {self.gateway_starts} gateway starts",
            f"  events produced {v.produced}, delivered {v.delivered}, lost {v.lost}; "
            f"duplicates {v.duplicates} ({v.replayed} resent rows, {v.reingested} readings "
            f"read again); by kind {v.by_kind}",
            f"  max backlog {self.max_backlog} events; {v.snapshot_rows} rows from "
            f"{self.kills} post-kill outbox snapshots checked at the cloud",
            f"  faults with evidence they bit: {sum(1 for f in self.faults if f.effect)}/"
            f"{len(self.faults)}; the other devices kept delivering during "
            f"{sum(1 for f in device_faults if f.others_flowing)}/{len(device_faults)} "
            "device faults",
        ]
        for kind in KINDS:
            times = sorted(f.recovery_s for f in self.faults if f.kind == kind and f.recovery_s)
            drains = [f.drain_s for f in self.faults if f.kind == kind and f.drain_s is not None]
            if times:
                lines.append(f"  recovery {kind:<14} median {statistics.median(times):5.2f} s, "
                             f"max {times[-1]:5.2f} s"
                             + (f"; backlog delivered within {max(drains):.2f} s"
                                if drains else ""))
        problems = self.problems()
        lines.append("  OK: every committed event reached the cloud" if not problems
                     else "  FAILED:\n    " + "\n    ".join(problems))
        return "\n".join(lines)


def _figure(metric: str, value: float | int, unit: str) -> dict[str, Any]:
    return {"metric": metric, "value": value, "unit": unit, "raw": None, "ratio": None}


async def run(settings: ChaosSettings) -> ChaosReport:
    """The whole chaos run; the rig is torn down (every process ended) however it ends."""
    say = _say if settings.verbose else (lambda text: None)
    async with Rig(settings.rig) as rig:
        started_at = rig.start_gateway()
        first = [rig.ledger.watch(device, started_at) for device in DEVICES]
        chaos = Chaos(rig, random.Random(settings.seed), settings.recovery_timeout_s)
        monitor = BacklogMonitor(rig)
        helpers = [asyncio.create_task(monitor.run(), name="chaos-backlog"),
                   asyncio.create_task(_check_drains(chaos), name="chaos-drains")]
        try:
            await until(lambda: all(w.arrived_at is not None for w in first),
                        settings.startup_timeout_s, "telemetry from every device",
                        detail=rig.log_tail)
            say(f"chaos: gateway up, faults for {settings.duration_s:g} s (seed {settings.seed})")
            started = time.monotonic()
            while time.monotonic() - started < settings.duration_s or \
                    chaos.kinds_done() != set(KINDS):
                await asyncio.sleep(chaos.rng.uniform(*GAP_S))  # pacing, not synchronisation
                record = await chaos.apply(chaos.next_kind())
                say(f"chaos: {record.kind:<14} hold {record.hold_s:4.1f} s, recovered in "
                    f"{_s(record.recovery_s)}; {record.detail}"
                    + ("" if record.others_flowing is not False else
                       "; the other devices paused too"))
            fault_phase_s = time.monotonic() - started
            chaos.check_gateway_alive()
            say("chaos: faults over; draining")
            with contextlib.suppress(TimeoutError):  # what did not arrive is counted below
                await until(lambda: outbox_depth(rig.outbox_path) == 0 and rig.ledger.caught_up(
                    committed_sequences(rig.outbox_path)), settings.drain_timeout_s, "drained")
            exit_code = await rig.stop_gateway(SHUTDOWN_TIMEOUT_S + 10.0)
            final = committed_sequences(rig.outbox_path)
            # The offline status events committed at shutdown were flushed before the exit.
            with contextlib.suppress(TimeoutError):
                await until(lambda: rig.ledger.caught_up(final), 15.0, "final events arrived")
            chaos.check_drains()
            chaos.find_effects()
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        return ChaosReport(
            settings=settings, faults=chaos.records,
            verdict=rig.ledger.verify(final, chaos.snapshots),
            max_backlog=max([monitor.max_depth, *chaos.depths]),
            gateway_starts=rig.gateway_starts, gateway_exit=exit_code,
            left_in_outbox=outbox_depth(rig.outbox_path), dropped=outbox_drops(rig.outbox_path),
            drains_pending=chaos.drains_pending, fault_phase_s=fault_phase_s,
            unexpected_exits=chaos.unexpected_exits, stalled=chaos.stalled,
            malformed=rig.listener.malformed if rig.listener else 0,
            log_tail=rig.log_tail())


async def _check_drains(chaos: Chaos) -> None:
    while True:
        chaos.check_drains()
        await asyncio.sleep(0.1)


def _s(value: float | None) -> str:
    return "NEVER" if value is None else f"{value:.2f} s"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _quiet_libraries() -> None:
    # The simulators' libraries complain about what the run does on purpose: a SIGKILLed
    # gateway's subscriptions expire on the OPC UA server (asyncua, WARNING), and pymodbus
    # logs an answer to a killed connection as an ERROR with a dump of recent frames.
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def main(quick: bool) -> list[dict[str, Any]]:
    """For `python -m bench --only chaos`: the figures; the summary goes to stderr."""
    _quiet_libraries()
    report = asyncio.run(run(ChaosSettings(
        duration_s=QUICK_DURATION_S if quick else LONG_DURATION_S)))
    _say(report.summary())
    return report.figures()


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=LONG_DURATION_S,
                        help="length of the fault phase (default %(default)g)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fault schedule")
    parser.add_argument("--keep", action="store_true",
                        help="keep the work directory (config, outbox, gateway log)")
    args = parser.parse_args(argv)
    _quiet_libraries()
    settings = ChaosSettings(duration_s=args.duration_s, seed=args.seed,
                             rig=RigSettings(keep_dir=args.keep))
    with contextlib.suppress(KeyboardInterrupt):
        report = asyncio.run(run(settings))
        for figure in report.figures():
            print(json.dumps(figure), flush=True)
        _say(report.summary())
        return 1 if report.problems() else 0
    return 130


if __name__ == "__main__":
    raise SystemExit(cli())

"""Writes simulated machine histories as CSV, in the shape `millwright model train` takes.

Two kinds of history, both from the shared machine model (simulators/machine.py):
- run-to-failure (the default): one machine per seed, from new until it fails; the
  last row of each asset is its failure, which is what the trainer assumes by default;
- healthy (`--healthy-hours H`): machines that never wear (`life_s=inf`), H hours
  each, for measuring false alarms.

With `--vary-speed` each machine runs as a plant runs its machines: at a speed setpoint
drawn from SPEEDS, changed at random (on average every SPEED_CHANGE_EVERY_S), so wear
advances at the setpoint's rate and speed and vibration move with the setpoint. A model
trained on such histories learns what wear looks like at any speed, instead of reading a
machine slowed on purpose (a command answering an alarm) as a worn one.

Columns: asset, time_s, then the signals in SIGNALS order. Machine i gets seed S+i, so
two datasets with disjoint seed ranges share no machine.
"""

from __future__ import annotations

import argparse
import csv
import math
import random
import sys
from pathlib import Path

from simulators.machine import SIGNALS, Machine, Sample, run_to_failure

ASSET_COLUMN = "asset"
TIME_COLUMN = "time_s"
COLUMNS = (ASSET_COLUMN, TIME_COLUMN, *SIGNALS)
SPEEDS = (900.0, 1100.0, 1300.0, 1480.0, 1480.0, 1480.0, 1700.0)  # rpm; nominal most often
SPEED_CHANGE_EVERY_S = 5400.0


def asset_name(seed: int, healthy: bool = False) -> str:
    return f"{'healthy' if healthy else 'machine'}-{seed}"


def write_dataset(out: Path, machines: int, seed: int, step_s: float = 60.0, *,
                  healthy_hours: float | None = None, life_s: float | None = None,
                  vary_speed: bool = False) -> int:
    """Write `machines` histories (seeds seed..seed+machines-1) to `out`; returns rows written.

    With `healthy_hours`, each machine never wears and runs that long; otherwise each
    runs to failure (with `life_s` fixed, or drawn from its seed when None). With
    `vary_speed`, each runs at changing speed setpoints (module docstring).
    """
    if machines < 1:
        raise ValueError("machines must be at least 1")
    if not step_s > 0:
        raise ValueError("step_s must be positive")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for machine_seed in range(seed, seed + machines):
            healthy = healthy_hours is not None
            name = asset_name(machine_seed, healthy=healthy)
            if vary_speed:
                history = _at_varying_speeds(name, machine_seed, step_s, life_s, healthy_hours)
            elif healthy_hours is not None:
                history = _healthy(machine_seed, step_s, healthy_hours)
            else:
                history = run_to_failure(name, machine_seed, step_s, life_s)
            for sample in history:
                # repr-precision floats: the CSV reproduces the simulator's values exactly.
                writer.writerow([name, repr(round(sample.t, 6)),
                                 *(repr(getattr(sample, s)) for s in SIGNALS)])
            rows += len(history)
    return rows


def _healthy(seed: int, step_s: float, hours: float) -> list[Sample]:
    machine = Machine(asset_name(seed, healthy=True), seed, life_s=math.inf)
    steps = int(hours * 3600 / step_s)
    return [machine.sample, *(machine.step(step_s) for _ in range(steps))]


def _at_varying_speeds(name: str, seed: int, step_s: float, life_s: float | None,
                       healthy_hours: float | None) -> list[Sample]:
    """One machine's history with its speed setpoint changed at random: to failure, or for
    `healthy_hours` without wear. The setpoints come from their own generator (seeded from
    the machine's seed), so the machine's own noise and life are those of its seed."""
    machine = Machine(name, seed, life_s=math.inf if healthy_hours is not None else life_s)
    speeds = random.Random(f"speeds-{seed}")
    machine.speed_setpoint_rpm = speeds.choice(SPEEDS)
    steps = None if healthy_hours is None else int(healthy_hours * 3600 / step_s)
    history = [machine.sample]
    while not machine.failed and (steps is None or len(history) <= steps):
        if speeds.random() < step_s / SPEED_CHANGE_EVERY_S:
            machine.speed_setpoint_rpm = speeds.choice(SPEEDS)
        history.append(machine.step(step_s))
    return history


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="millwright simulate",
        description="Write simulated machine histories as CSV for `millwright model train`.",
    )
    parser.add_argument("--dataset", type=Path, required=True, metavar="OUT.csv",
                        help="the CSV file to write")
    parser.add_argument("--machines", type=int, default=20, help="number of machines (20)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the first machine; machine i gets seed+i (0)")
    parser.add_argument("--step-s", type=float, default=60.0,
                        help="simulated seconds between rows (60)")
    parser.add_argument("--healthy-hours", type=float, default=None, metavar="H",
                        help="write never-wearing machines, H hours each, instead of "
                             "run-to-failure histories")
    parser.add_argument("--life-s", type=float, default=None,
                        help="fixed life of every machine in simulated seconds "
                             "(default: drawn from each seed, 0.6-1.4 x 8 h)")
    parser.add_argument("--vary-speed", action="store_true",
                        help="run each machine at speed setpoints that change at random, "
                             "as a plant does (default: always at nominal speed)")
    args = parser.parse_args(argv)
    if args.machines < 1:
        parser.error("--machines must be at least 1")
    if not args.step_s > 0:
        parser.error("--step-s must be positive")
    if args.healthy_hours is not None and not args.healthy_hours > 0:
        parser.error("--healthy-hours must be positive")
    if args.life_s is not None and not args.life_s > args.step_s:
        parser.error("--life-s must be longer than --step-s")
    rows = write_dataset(args.dataset, args.machines, args.seed, args.step_s,
                         healthy_hours=args.healthy_hours, life_s=args.life_s,
                         vary_speed=args.vary_speed)
    kind = "healthy" if args.healthy_hours is not None else "run-to-failure"
    print(f"wrote {rows} rows ({args.machines} {kind} machines, seeds "
          f"{args.seed}-{args.seed + args.machines - 1}) to {args.dataset}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

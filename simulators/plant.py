"""A plant of simulated machines advancing in (optionally accelerated) real time.

Every protocol simulator serves the same `Plant`: Modbus registers, OPC UA variables
and MQTT payloads are views of the machines' current samples. A failed machine is
held failed for a while (so the failure is observable) and then repaired.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from simulators.machine import Machine, Sample


@dataclass(frozen=True, slots=True)
class MachineSpec:
    """A machine in the plant: its name, its seed, and optionally a fixed life."""

    name: str
    seed: int
    life_s: float | None = None
    onset_fraction: float | None = None


DEFAULT_PLANT = (
    MachineSpec("press-1", seed=1),
    MachineSpec("mill-2", seed=2),
    MachineSpec("pump-3", seed=3),
)


class Plant:
    """Machines stepped together. `speed` is simulated seconds per wall-clock second."""

    def __init__(self, specs: tuple[MachineSpec, ...] | list[MachineSpec] = DEFAULT_PLANT, *,
                 speed: float = 1.0, step_s: float = 1.0, failure_hold_s: float = 600.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not specs:
            raise ValueError("a plant needs at least one machine")
        self.specs = {spec.name: spec for spec in specs}
        self.machines = {
            spec.name: Machine(spec.name, spec.seed, life_s=spec.life_s,
                               onset_fraction=spec.onset_fraction)
            for spec in specs
        }
        self.speed = speed
        self.step_s = step_s
        self.failure_hold_s = failure_hold_s
        self.failures: dict[str, int] = {name: 0 for name in self.machines}
        self._failed_at: dict[str, float] = {}
        self._clock = clock
        self._listeners: list[Callable[[Plant], None]] = []

    def sample(self, name: str) -> Sample:
        return self.machines[name].sample

    def on_tick(self, listener: Callable[[Plant], None]) -> None:
        """Call `listener(plant)` after every advance (simulators refresh their views here)."""
        self._listeners.append(listener)

    def advance(self, sim_s: float) -> None:
        """Step every machine by `sim_s` simulated seconds, in steps of at most `step_s`."""
        while sim_s > 1e-9:
            dt = min(self.step_s, sim_s)
            sim_s -= dt
            for name, machine in self.machines.items():
                was_failed = machine.failed
                machine.step(dt)
                if machine.failed and not was_failed:
                    self.failures[name] += 1
                    self._failed_at[name] = machine.t
                elif machine.failed and machine.t - self._failed_at[name] >= self.failure_hold_s:
                    machine.repair()
        for listener in self._listeners:
            listener(self)

    async def run(self, tick_s: float = 0.1) -> None:
        """Advance with the wall clock (times `speed`) until cancelled."""
        last = self._clock()
        while True:
            await asyncio.sleep(tick_s)
            now = self._clock()
            self.advance((now - last) * self.speed)
            last = now

"""The machine model every simulator shares: a motor-driven spindle or pump that wears out.

Physics, simplified but with the shape of the real thing:
- load follows slow process cycles, and drives current and temperature;
- from a seeded onset time, wear grows (quadratically in time) until it reaches 1.0: the failure;
- wear raises vibration (bearing defects), heat and current, lowers speed and pressure;
- every signal carries healthy measurement noise;
- the speed setpoint (default: nominal, 1480 rpm) sets the spindle speed, and wear
  ages with it: the machine ages (speed / nominal)^2 times as fast, so running slower
  postpones the failure and running faster brings it on; vibration scales with
  (speed / nominal)^2 (imbalance forces grow with the square of speed). At the default
  setpoint every signal is exactly what it was before setpoints existed.

Everything is a pure function of the seed and the simulated time steps, so the same
seed always gives the same history, and time can run as fast as the caller steps it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SIGNALS = ("speed_rpm", "current_a", "temperature_c", "vibration_mm_s", "pressure_bar")
UNITS = {
    "speed_rpm": "rpm",
    "current_a": "A",
    "temperature_c": "degC",
    "vibration_mm_s": "mm/s",
    "pressure_bar": "bar",
}

NOMINAL_LIFE_S = 8 * 3600.0
NOMINAL_SPEED_RPM = 1480.0
MAX_SPEED_SETPOINT_RPM = 1800.0
AMBIENT_C = 25.0
THERMAL_TAU_S = 300.0


@dataclass(frozen=True, slots=True)
class Sample:
    """One instant of one machine, in engineering units."""

    t: float
    speed_rpm: float
    current_a: float
    temperature_c: float
    vibration_mm_s: float
    pressure_bar: float
    wear: float
    failed: bool

    def signals(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in SIGNALS}


class Machine:
    """A seeded machine. `step(dt)` advances simulated time and returns the new sample.

    life_s: simulated seconds from start to failure; None draws it from the seed
    (0.6-1.4 x 8 h), math.inf makes a machine that never wears.
    """

    def __init__(self, name: str, seed: int, *, life_s: float | None = None,
                 onset_fraction: float | None = None) -> None:
        self.name = name
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._phase = self._rng.uniform(0, 2 * math.pi)
        self._cycle_s = self._rng.uniform(900, 2700)
        self.life_s = life_s if life_s is not None else NOMINAL_LIFE_S * self._rng.uniform(0.6, 1.4)
        fraction = onset_fraction if onset_fraction is not None else self._rng.uniform(0.35, 0.65)
        self.onset_s = self.life_s * fraction
        self.age_s = 0.0
        self.t = 0.0
        self._setpoint = NOMINAL_SPEED_RPM
        self._temperature = AMBIENT_C + 30.0 * self._load(0.0)
        self.sample = self._measure()

    @property
    def failed(self) -> bool:
        return self.age_s >= self.life_s

    @property
    def wear(self) -> float:
        if self.age_s <= self.onset_s:
            return 0.0
        if math.isinf(self.life_s):
            return 0.0
        return min(1.0, ((self.age_s - self.onset_s) / (self.life_s - self.onset_s)) ** 2)

    @property
    def speed_setpoint_rpm(self) -> float:
        """The commanded spindle speed; 0 stops the machine (and its wear)."""
        return self._setpoint

    @speed_setpoint_rpm.setter
    def speed_setpoint_rpm(self, rpm: float) -> None:
        if not 0.0 <= rpm <= MAX_SPEED_SETPOINT_RPM:
            raise ValueError(f"speed setpoint must be 0-{MAX_SPEED_SETPOINT_RPM:g} rpm, "
                             f"not {rpm:g}")
        self._setpoint = float(rpm)

    @property
    def wear_rate(self) -> float:
        """Simulated seconds of ageing per second at the current setpoint (1 at nominal)."""
        return (self._setpoint / NOMINAL_SPEED_RPM) ** 2

    @property
    def remaining_life_s(self) -> float:
        return max(0.0, self.life_s - self.age_s)

    def step(self, dt: float) -> Sample:
        """Advance by dt simulated seconds (a failed machine stays failed until repaired)."""
        self.t += dt
        if not self.failed:
            self.age_s += dt * self.wear_rate
        target = AMBIENT_C if self.failed else (
            AMBIENT_C + 30.0 * self._load(self.t) + 28.0 * self.wear
        )
        # First-order thermal lag: temperature follows the heat balance, not the instant.
        self._temperature += (target - self._temperature) * (1 - math.exp(-dt / THERMAL_TAU_S))
        self.sample = self._measure()
        return self.sample

    def repair(self, life_s: float | None = None) -> None:
        """Maintenance: wear back to zero and a new life drawn from the same seeded stream."""
        self.life_s = life_s if life_s is not None else NOMINAL_LIFE_S * self._rng.uniform(0.6, 1.4)
        self.onset_s = self.life_s * self._rng.uniform(0.35, 0.65)
        self.age_s = 0.0

    def _load(self, t: float) -> float:
        return 0.8 + 0.15 * math.sin(2 * math.pi * t / self._cycle_s + self._phase)

    def _measure(self) -> Sample:
        n = self._rng.normal(size=5).tolist()
        if self.failed:
            return Sample(self.t, 0.0, 0.0, self._temperature + 0.2 * n[2],
                          0.05 + 0.01 * abs(n[3]), 0.0, 1.0, True)
        w, load = self.wear, self._load(self.t)
        # Exactly 1.0 at the nominal setpoint, so the default history is unchanged.
        imbalance = self.wear_rate
        return Sample(
            t=self.t,
            speed_rpm=max(0.0, self._setpoint - 25.0 * w - 10.0 * (load - 0.8) + 3.0 * n[0]),
            current_a=12.0 * load * (1 + 0.18 * w) + 0.15 * n[1],
            temperature_c=self._temperature + 0.3 * n[2],
            vibration_mm_s=max(0.0, 2.0 * (1 + 0.4 * (load - 0.8)) * (1 + 3.5 * w) * imbalance
                               + 0.15 * n[3]),
            pressure_bar=6.0 * (1 - 0.22 * w) * (0.9 + 0.125 * load) + 0.05 * n[4],
            wear=w,
            failed=False,
        )


def run_to_failure(name: str, seed: int, step_s: float = 60.0,
                   life_s: float | None = None) -> list[Sample]:
    """A machine's whole history, one sample per step, the last one being the failure."""
    machine = Machine(name, seed, life_s=life_s)
    history = [machine.sample]
    while not machine.failed:
        history.append(machine.step(step_s))
    return history

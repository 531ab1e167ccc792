"""The simulated press's speed setpoint: slower wears less, faster more; nominal changes nothing."""

from __future__ import annotations

import pytest

from simulators.machine import NOMINAL_SPEED_RPM, Machine
from simulators.plant import MachineSpec, Plant


def run(setpoint: float | None, steps: int = 500, dt: float = 60.0) -> Machine:
    machine = Machine("press-1", seed=1, life_s=8 * 3600.0, onset_fraction=0.2)
    if setpoint is not None:
        machine.speed_setpoint_rpm = setpoint
    for _ in range(steps):
        if machine.failed:
            break
        machine.step(dt)
    return machine


def test_a_lower_setpoint_lowers_the_wear_rate_and_a_higher_one_raises_it() -> None:
    slow, nominal, fast = run(1000), run(None), run(1700, steps=200)
    assert slow.wear_rate < nominal.wear_rate == 1.0 < fast.wear_rate
    # Same time on the machine, less ageing when slower.
    assert run(1000, steps=200).wear < run(None, steps=200).wear < fast.wear
    # Slowing postpones the failure: the nominal machine failed, the slow one not yet.
    assert nominal.failed and not slow.failed


def test_slowing_a_worn_machine_lowers_its_vibration_and_its_wear_growth() -> None:
    machine = run(None, steps=300)
    assert 0 < machine.wear < 1
    worn_at, before = machine.wear, machine.sample.vibration_mm_s
    nominal = run(None, steps=330)
    machine.speed_setpoint_rpm = 1000
    for _ in range(30):
        machine.step(60.0)
    assert worn_at < machine.wear < nominal.wear
    assert machine.sample.vibration_mm_s < before
    assert machine.sample.speed_rpm < 1100


def test_the_nominal_setpoint_is_todays_behaviour() -> None:
    default, explicit = run(None, steps=50), run(NOMINAL_SPEED_RPM, steps=50)
    assert default.sample == explicit.sample
    assert default.age_s == 50 * 60.0


def test_a_setpoint_out_of_range_is_refused() -> None:
    machine = Machine("press-1", seed=1)
    for rpm in (-1.0, 1801.0):
        with pytest.raises(ValueError, match="0-1800 rpm"):
            machine.speed_setpoint_rpm = rpm
    assert machine.speed_setpoint_rpm == NOMINAL_SPEED_RPM


def test_the_setpoint_survives_a_repair() -> None:
    plant = Plant([MachineSpec("press-1", seed=1, life_s=600.0)], failure_hold_s=60.0)
    plant.machines["press-1"].speed_setpoint_rpm = 1200
    plant.advance(3000)
    assert plant.failures["press-1"] >= 1
    assert plant.machines["press-1"].speed_setpoint_rpm == 1200

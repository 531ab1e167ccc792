"""The Modbus simulator's register map: where each machine signal lives, and configs that read it.

The table is documented in simulators/modbus_server.py and drivers/modbus/README.md.
Kept apart from the server so configs, tests and demos can use the map without
starting anything.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from simulators.machine import MAX_SPEED_SETPOINT_RPM, SIGNALS, UNITS
from simulators.plant import Plant

if TYPE_CHECKING:
    from simulators.modbus_server import ModbusSimulator

# Where each signal lives, and the factor of its scaled int16 copy.
FLOAT32_INPUT = {name: 2 * i for i, name in enumerate(SIGNALS)}
INT16_INPUT = {name: 10 + i for i, name in enumerate(SIGNALS)}
FLOAT32_CDAB_HOLDING = {name: 2 * i for i, name in enumerate(SIGNALS)}
FLOAT64_HOLDING = {name: 10 + 4 * i for i, name in enumerate(SIGNALS)}
SCALES = {"speed_rpm": 1, "current_a": 100, "temperature_c": 10, "vibration_mm_s": 100,
          "pressure_bar": 100}
STATUS_INPUT = 15
FAILURES_INPUT = 16
MACHINE_TIME_INPUT = 17
INPUT_COUNT = 19
HOLDING_COUNT = 30
SCRATCH_START = 1000
# The speed setpoint, uint16 rpm: writable; changes the machine's speed and wear rate.
SPEED_SETPOINT_HOLDING = 100
STATUS_RUNNING, STATUS_FAILED = 1, 2
COIL_ENABLED, COIL_MAINTENANCE = 0, 1
DISCRETE_FAILED, DISCRETE_RUNNING = 0, 1


def live_values(plant: Plant, name: str) -> tuple[list[int], list[int], list[bool]]:
    """One machine's input registers 0-18, holding registers 0-29 and discrete inputs 0-1."""
    sample = plant.sample(name)
    machine = plant.machines[name]
    signals = sample.signals()
    inputs = [0] * INPUT_COUNT
    holding = [0] * HOLDING_COUNT
    for signal, value in signals.items():
        high, low = struct.unpack(">2H", struct.pack(">f", value))
        inputs[FLOAT32_INPUT[signal]:FLOAT32_INPUT[signal] + 2] = [high, low]
        holding[FLOAT32_CDAB_HOLDING[signal]:FLOAT32_CDAB_HOLDING[signal] + 2] = [low, high]
        at = FLOAT64_HOLDING[signal]
        holding[at:at + 4] = list(struct.unpack(">4H", struct.pack(">d", value)))
        inputs[INT16_INPUT[signal]] = _int16(value * SCALES[signal])
    inputs[STATUS_INPUT] = STATUS_FAILED if sample.failed else STATUS_RUNNING
    inputs[FAILURES_INPUT] = min(plant.failures[name], 0xFFFF)
    seconds = min(int(machine.t), 0xFFFF_FFFF)
    inputs[MACHINE_TIME_INPUT:MACHINE_TIME_INPUT + 2] = [seconds >> 16, seconds & 0xFFFF]
    return inputs, holding, [sample.failed, not sample.failed]


def _int16(value: float) -> int:
    if not math.isfinite(value):
        return 0x8000
    return max(-32768, min(32767, round(value))) & 0xFFFF


def device_points() -> list[dict[str, Any]]:
    """The `[[devices.points]]` tables that read the whole register map (for configs)."""
    points: list[dict[str, Any]] = []
    for signal in SIGNALS:
        unit = UNITS[signal]
        points.append({"name": signal, "table": "input", "address": FLOAT32_INPUT[signal],
                       "type": "float32", "unit": unit})
        points.append({"name": f"{signal}_int16", "table": "input",
                       "address": INT16_INPUT[signal], "type": "int16",
                       "scale": 1 / SCALES[signal], "unit": unit})
        points.append({"name": f"{signal}_cdab", "table": "holding",
                       "address": FLOAT32_CDAB_HOLDING[signal], "type": "float32",
                       "byte_order": "CDAB", "unit": unit})
        points.append({"name": f"{signal}_f64", "table": "holding",
                       "address": FLOAT64_HOLDING[signal], "type": "float64", "unit": unit})
    points += [
        {"name": "status", "table": "input", "address": STATUS_INPUT, "type": "uint16"},
        {"name": "failures", "table": "input", "address": FAILURES_INPUT, "type": "uint16"},
        {"name": "machine_time_s", "table": "input", "address": MACHINE_TIME_INPUT,
         "type": "uint32", "unit": "s"},
        {"name": "enabled", "table": "coil", "address": COIL_ENABLED},
        {"name": "maintenance_mode", "table": "coil", "address": COIL_MAINTENANCE},
        {"name": "failed", "table": "discrete", "address": DISCRETE_FAILED},
        {"name": "running", "table": "discrete", "address": DISCRETE_RUNNING},
    ]
    return points


def setpoint_point(*, writable: bool = True) -> dict[str, Any]:
    """The `[[devices.points]]` table of the speed setpoint (not in `device_points`)."""
    point: dict[str, Any] = {"name": "speed_setpoint_rpm", "table": "holding",
                             "address": SPEED_SETPOINT_HOLDING, "type": "uint16", "unit": "rpm"}
    if writable:
        point.update(writable=True, min=0, max=MAX_SPEED_SETPOINT_RPM)
    return point


def device_tables(sim: ModbusSimulator, *, poll_interval_s: float = 1.0,
                  names: Mapping[str, str] | None = None,
                  setpoint: bool = False) -> list[dict[str, Any]]:
    """One `[[devices]]` table per machine the simulator serves, reading every point.

    names: machine name -> device name (default: the machine's own name).
    setpoint: add the writable speed setpoint (`setpoint_point()`) to every table.
    """
    tables = []
    for machine, unit in sim.unit_ids.items():
        table: dict[str, Any] = {
            "name": (names or {}).get(machine, machine), "protocol": "modbus",
            "unit_id": unit, "poll_interval_s": poll_interval_s,
            "points": device_points() + ([setpoint_point()] if setpoint else []),
        }
        if sim.serial_port is not None:
            table.update(serial_port=sim.serial_port, baudrate=sim.baudrate)
        else:
            table.update(host=sim.host, port=sim.port)
        tables.append(table)
    return tables

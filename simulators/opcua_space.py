"""The simulator's OPC UA address space: one object per machine, typed variables with units.

Documented for users in drivers/opcua/README.md. Namespace `urn:millwright:machines`
(index 2 on the simulator); a machine's object is its name in PascalCase
(`mill-2` -> `Mill2`, node id `ns=2;s=Mill2`) holding `ns=2;s=Mill2.<Variable>`,
each with an EngineeringUnits (UN/CEFACT) and EURange property where it has a unit.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asyncua import Server, ua

from simulators.machine import MAX_SPEED_SETPOINT_RPM, NOMINAL_SPEED_RPM, Sample

NAMESPACE_URI = "urn:millwright:machines"
UNECE_UNITS_URI = "http://www.opcfoundation.org/UA/units/un/cefact"


@dataclass(frozen=True, slots=True)
class Variable:
    """One variable every machine object carries."""

    name: str
    variant: ua.VariantType
    value: Callable[[Sample, int], Any]  # (sample, failure count) -> value
    unit: str | None = None
    unece_code: str | None = None  # UN/CEFACT common code, as OPC UA Part 8 asks
    eu_range: tuple[float, float] | None = None
    description: str = ""


VARIABLES: tuple[Variable, ...] = (
    Variable("Speed", ua.VariantType.Float, lambda s, f: s.speed_rpm, "rpm", "RPM",
             (0.0, 1800.0), "Spindle speed"),
    Variable("Current", ua.VariantType.Float, lambda s, f: s.current_a, "A", "AMP",
             (0.0, 40.0), "Motor current"),
    Variable("Temperature", ua.VariantType.Double, lambda s, f: s.temperature_c, "degC", "CEL",
             (0.0, 150.0), "Bearing temperature"),
    Variable("VibrationRms", ua.VariantType.Double, lambda s, f: s.vibration_mm_s, "mm/s", "C16",
             (0.0, 50.0), "Vibration velocity, RMS"),
    Variable("Pressure", ua.VariantType.Double, lambda s, f: s.pressure_bar, "bar", "BAR",
             (0.0, 10.0), "Discharge pressure"),
    Variable("Running", ua.VariantType.Boolean, lambda s, f: not s.failed,
             description="False while the machine is failed"),
    Variable("FailureCount", ua.VariantType.UInt32, lambda s, f: f,
             description="Failures since the simulator started"),
    Variable("State", ua.VariantType.String, lambda s, f: "failed" if s.failed else "running",
             description="running | failed"),
)
VARIABLE_NAMES = tuple(v.name for v in VARIABLES)

# The one writable variable of each machine (not in VARIABLES, which the plant's ticks
# refresh): a client's write sets the machine's speed and wear rate (simulators/machine.py).
SETPOINT = Variable("SpeedSetpoint", ua.VariantType.Double, lambda s, f: None, "rpm", "RPM",
                    (0.0, MAX_SPEED_SETPOINT_RPM),
                    "Speed setpoint, writable; outside EURange the machine keeps its setpoint")


def object_name(machine: str) -> str:
    """The browse name of a machine's object: `mill-2` -> `Mill2`, `line_a 1` -> `LineA1`."""
    parts = [p for p in re.split(r"[^0-9A-Za-z]+", machine) if p]
    if not parts:
        raise ValueError(f"machine name {machine!r} has no letters or digits")
    return "".join(p[:1].upper() + p[1:] for p in parts)


def node_id(machine: str, variable: str, namespace_index: int = 2) -> str:
    """The node id string of a machine's variable, e.g. `ns=2;s=Mill2.VibrationRms`."""
    return f"ns={namespace_index};s={object_name(machine)}.{variable}"


def browse_path(machine: str, variable: str, namespace_index: int = 2) -> str:
    """The relative path from Objects to a machine's variable, e.g. `/2:Mill2/2:VibrationRms`."""
    return f"/{namespace_index}:{object_name(machine)}/{namespace_index}:{variable}"


def load_node_id(index: int, namespace_index: int = 2) -> str:
    """The node id of the index-th load-test variable (`ns=2;s=Load.V0000`)."""
    return f"ns={namespace_index};s=Load.V{index:04d}"


def unece_unit_id(code: str) -> int:
    """OPC UA Part 8's UnitId for a UN/CEFACT common code: its ASCII bytes as one integer."""
    value = 0
    for char in code:
        value = (value << 8) | ord(char)
    return value


async def populate(server: Server, ns: int, machines: list[str],
                   load_variables: int = 0) -> list[ua.NodeId]:
    """Add every machine's object and variables (and the load variables, whose ids it returns)."""
    objects = server.nodes.objects
    for machine in machines:
        prefix = object_name(machine)
        obj = await objects.add_object(ua.NodeId(prefix, ns), ua.QualifiedName(prefix, ns))
        await obj.write_attribute(ua.AttributeIds.DisplayName, ua.DataValue(
            ua.Variant(ua.LocalizedText(machine), ua.VariantType.LocalizedText)))
        for var in VARIABLES:
            await _add_variable(obj, ns, prefix, var)
        setpoint = await _add_variable(obj, ns, prefix, SETPOINT, NOMINAL_SPEED_RPM)
        await setpoint.set_writable()
    load_ids = [ua.NodeId(f"Load.V{i:04d}", ns) for i in range(load_variables)]
    if load_ids:
        load = await objects.add_object(ua.NodeId("Load", ns), ua.QualifiedName("Load", ns))
        for index, nodeid in enumerate(load_ids):
            await load.add_variable(nodeid, ua.QualifiedName(f"V{index:04d}", ns),
                                    ua.Variant(0.0, ua.VariantType.Double))
    return load_ids


async def _add_variable(obj: Any, ns: int, prefix: str, var: Variable,
                        value: Any = None) -> Any:
    initial = ua.Variant(ua.get_default_value(var.variant) if value is None else value,
                         var.variant)
    node = await obj.add_variable(ua.NodeId(f"{prefix}.{var.name}", ns),
                                  ua.QualifiedName(var.name, ns), initial)
    if var.description:
        await node.write_attribute(ua.AttributeIds.Description, ua.DataValue(
            ua.Variant(ua.LocalizedText(var.description), ua.VariantType.LocalizedText)))
    if var.unit is not None:
        units = ua.EUInformation(
            NamespaceUri=UNECE_UNITS_URI,
            UnitId=unece_unit_id(var.unece_code or ""),
            DisplayName=ua.LocalizedText(var.unit),
            Description=ua.LocalizedText(var.unit),
        )
        await node.add_property(ua.NodeId(f"{prefix}.{var.name}.EngineeringUnits", ns),
                                ua.QualifiedName("EngineeringUnits", 0),
                                ua.Variant(units, ua.VariantType.ExtensionObject),
                                datatype=ua.NodeId(ua.ObjectIds.EUInformation))
    if var.eu_range is not None:
        low, high = var.eu_range
        await node.add_property(ua.NodeId(f"{prefix}.{var.name}.EURange", ns),
                                ua.QualifiedName("EURange", 0),
                                ua.Variant(ua.Range(Low=low, High=high),
                                           ua.VariantType.ExtensionObject),
                                datatype=ua.NodeId(ua.ObjectIds.Range))
    return node

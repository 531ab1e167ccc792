"""OPC UA DataValues to samples: variant types to JSON-able values, status codes to quality.

- Quality follows the status code's severity bits: Good -> "good", Uncertain ->
  "uncertain" (value kept: it is the server's best guess), Bad -> "bad" (value None:
  OPC UA says a Bad value must not be used).
- The sample's time is the server's SourceTimestamp, or its ServerTimestamp when
  the source gives none.
- Scalars of the built-in numeric, boolean and text types pass through (Float is
  rounded to the shortest decimal that is the same float32, so 1480.5 stays 1480.5).
  Arrays and structures are not telemetry values: they come out as bad readings
  with a reason, which the driver reports once per point. A NaN or infinity is a bad
  value (null on the wire).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from asyncua import ua

from gateway.frames import Quality, Sample, Value
from gateway.value_ranges import FLOAT32_MAX, INT_RANGES

_INTEGERS = frozenset({
    ua.VariantType.SByte, ua.VariantType.Byte, ua.VariantType.Int16, ua.VariantType.UInt16,
    ua.VariantType.Int32, ua.VariantType.UInt32, ua.VariantType.Int64, ua.VariantType.UInt64,
    ua.VariantType.StatusCode,
})
_SEVERITY_MASK = 0xC0000000
_UNCERTAIN = 0x40000000
_BAD = 0x80000000


@dataclass(frozen=True, slots=True)
class PointPlan:
    """What the driver knows about one configured point once connected."""

    device: str
    name: str
    unit: str | None


def quality_of(status: ua.StatusCode | None) -> Quality:
    if status is None:
        return "good"
    severity = status.value & _SEVERITY_MASK
    if severity == 0:
        return "good"
    if severity == _UNCERTAIN:
        return "uncertain"
    return "bad"


def epoch(moment: datetime | None) -> float | None:
    """Epoch seconds of an OPC UA DateTime; None for a missing or 'minimum' timestamp."""
    if moment is None:
        return None
    if moment.tzinfo is None:  # asyncua gives UTC; some paths drop the zone
        moment = moment.replace(tzinfo=UTC)
    ts = moment.timestamp()
    # OPC UA encodes "no time" as 1601-01-01, which becomes a large negative number.
    return ts if ts > 0 else None


def convert(variant: ua.Variant | None) -> tuple[Value, str | None]:
    """(value, problem): a Reading value, or None and why it cannot be one."""
    if variant is None:
        return None, None
    vtype = variant.VariantType
    value = variant.Value
    if value is None or vtype == ua.VariantType.Null:
        return None, None
    if variant.is_array or isinstance(value, list):
        return None, f"arrays are not supported (got {vtype.name}[])"
    if vtype == ua.VariantType.Boolean:
        return bool(value), None
    if vtype == ua.VariantType.Double:
        return float(value), None
    if vtype == ua.VariantType.Float:
        return float(str(np.float32(value))), None
    if vtype in _INTEGERS:
        return int(value.value if isinstance(value, ua.StatusCode) else value), None
    if vtype == ua.VariantType.String:
        return str(value), None
    if vtype == ua.VariantType.LocalizedText:
        return value.Text, None
    if vtype == ua.VariantType.DateTime:
        ts = epoch(value)
        return (datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
                if ts is not None else None), None
    if vtype in (ua.VariantType.Guid, ua.VariantType.NodeId, ua.VariantType.QualifiedName):
        return str(value), None
    return None, f"type {vtype.name} is not supported"




def variant_for(value: Value, vtype: ua.VariantType) -> ua.Variant:
    """`value` as a Variant of the node's type; ValueError (the reason) when it cannot be one.

    Never converts lossily: 2.5 is not an integer, 300 is not a Byte, "1" is not a number.
    """
    shown = f"{value!r} cannot be written to a {vtype.name} node"
    if vtype == ua.VariantType.Boolean:
        if not isinstance(value, bool):
            raise ValueError(f"{shown}: it takes true or false")
        return ua.Variant(value, vtype)
    integer = INT_RANGES.get(vtype.name.lower())
    if integer is not None:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{shown}: it takes whole numbers")
        low, high = integer
        if not low <= value <= high:
            raise ValueError(f"{shown}: outside its range {low}..{high}")
        return ua.Variant(value, vtype)
    if vtype in (ua.VariantType.Float, ua.VariantType.Double):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{shown}: it takes numbers")
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = math.inf
        if not math.isfinite(number) or (vtype == ua.VariantType.Float
                                         and abs(number) > FLOAT32_MAX):
            raise ValueError(f"{shown}: outside its range")
        return ua.Variant(number, vtype)
    if vtype == ua.VariantType.String:
        if not isinstance(value, str):
            raise ValueError(f"{shown}: it takes text")
        return ua.Variant(value, vtype)
    raise ValueError(f"{shown}: writing {vtype.name} is not supported")


def sample(point: PointPlan, dv: ua.DataValue,
           problems: dict[str, str] | None = None) -> Sample:
    """The sample of one DataValue of `point`; unsupported values are noted in `problems`."""
    quality = quality_of(dv.StatusCode)
    value: Value = None
    if quality != "bad":
        try:
            value, problem = convert(dv.Value)
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            value, problem = None, f"value cannot be converted: {exc}"
        if problem is not None:
            quality = "bad"
            if problems is not None:
                problems[point.name] = problem
        elif isinstance(value, float) and not math.isfinite(value):
            value, quality = None, "bad"
    source = epoch(dv.SourceTimestamp)
    if source is None:
        source = epoch(dv.ServerTimestamp)
    return Sample(point.name, value, quality, source)


def type_name(dv: ua.DataValue) -> str | None:
    """The OPC UA built-in type of a DataValue's variant (`Double`, `Int32`), if any."""
    variant = dv.Value
    if variant is None or variant.VariantType == ua.VariantType.Null:
        return None
    return str(variant.VariantType.name)


def status_text(status: ua.StatusCode | int) -> str:
    """`BadUserAccessDenied` for a status code (or its numeric value)."""
    code = status if isinstance(status, ua.StatusCode) else ua.StatusCode(ua.UInt32(status))
    return code.name


def unit_of(value: Any) -> str | None:
    """The display name of an EngineeringUnits property value (EUInformation)."""
    name = getattr(getattr(value, "DisplayName", None), "Text", None)
    return name or None

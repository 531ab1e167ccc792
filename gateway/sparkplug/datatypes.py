"""Sparkplug datatypes: from a point's type, a value into a metric's fields, and back.

A device's birth names each point's type as its driver knows it: Modbus register types
(`int16`...`float64`, `bool`), OPC UA built-in types (`Double`, `Int32`, `String`...),
the MQTT driver's `number`/`integer`/`bool`/`string`, or nothing. `datatype_of` maps it
(the table is in docs/sparkplug.md). A value that does not fit its metric's datatype (a
scaled int16 giving 21.3, a text in a number point) is reported by `fits` as not fitting,
and `retype` names the type the metric becomes (the device is then born again).

Signed integers travel as two's complement: 8 to 32 bits in `int_value` (uint32, sign
extended to 32 bits, as the reference implementation does), 64 bits in `long_value`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gateway.sparkplug import sparkplug_b_pb2 as pb
from gateway.value_ranges import FLOAT32_MAX

Metric = pb.Payload.Metric

# The DataType enum's values (spec: Payloads, Data Types).
UNKNOWN, INT8, INT16, INT32, INT64 = 0, 1, 2, 3, 4
UINT8, UINT16, UINT32, UINT64 = 5, 6, 7, 8
FLOAT, DOUBLE, BOOLEAN, STRING, DATETIME, TEXT = 9, 10, 11, 12, 13, 14
NAMES = {value.number: value.name for value in pb.DataType.DESCRIPTOR.values}

# Integer types: (bits, signed).
INTEGERS = {INT8: (8, True), INT16: (16, True), INT32: (32, True), INT64: (64, True),
            UINT8: (8, False), UINT16: (16, False), UINT32: (32, False), UINT64: (64, False)}

POINT_TYPES: dict[str, int] = {
    # Modbus register types (drivers/modbus/codec.py DATA_TYPES).
    "int16": INT16, "uint16": UINT16, "int32": INT32, "uint32": UINT32,
    "int64": INT64, "uint64": UINT64, "float32": FLOAT, "float64": DOUBLE, "bool": BOOLEAN,
    # OPC UA built-in types, as the OPC UA driver names them (VariantType names).
    "Boolean": BOOLEAN, "SByte": INT8, "Byte": UINT8, "Int16": INT16, "UInt16": UINT16,
    "Int32": INT32, "UInt32": UINT32, "Int64": INT64, "UInt64": UINT64,
    "Float": FLOAT, "Double": DOUBLE, "StatusCode": UINT32,
    # The OPC UA driver gives these as text (a DateTime as RFC 3339).
    "String": STRING, "LocalizedText": STRING, "DateTime": STRING, "Guid": STRING,
    "NodeId": STRING, "QualifiedName": STRING,
    # The MQTT driver's point types.
    "number": DOUBLE, "integer": INT64, "string": STRING,
}


def datatype_of(point_type: str | None, value: Any = None) -> int:
    """The Sparkplug datatype for a point of `point_type`; an unknown or missing type takes
    the type of `value` (Double when there is no value either)."""
    if point_type is not None and point_type in POINT_TYPES:
        return POINT_TYPES[point_type]
    return datatype_of_value(value)


def datatype_of_value(value: Any) -> int:
    """The datatype a value of unknown type is sent as: Boolean, Int64 (UInt64 above 2^63-1,
    Double beyond 64 bits), Double, String; Double for None."""
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return INT64
        return UINT64 if 0 <= value < 2**64 else DOUBLE
    if isinstance(value, str):
        return STRING
    return DOUBLE


def retype(datatype: int, value: Any) -> int:
    """The datatype a metric of `datatype` becomes for a `value` that does not fit it: a
    fraction in a register of 16 bits or less (a scaled int16) or in a Float becomes Float
    when a float32 carries it exactly, else Double; otherwise as `datatype_of_value`."""
    small = (INT8, INT16, UINT8, UINT16, FLOAT)
    if (datatype in small and isinstance(value, float) and not isinstance(value, bool)
            and fits(FLOAT, value)):
        return FLOAT
    return datatype_of_value(value)


def fits(datatype: int, value: Any) -> bool:
    """Whether `value` can travel as `datatype` without losing anything (None always fits:
    it travels as is_null)."""
    if value is None:
        return True
    if datatype == BOOLEAN:
        return isinstance(value, bool)
    if datatype in (STRING, TEXT):
        return isinstance(value, str)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if datatype == DOUBLE:
        return True
    if datatype == FLOAT:  # only what a float32 gives back exactly (as its shortest decimal)
        return not math.isfinite(value) or (abs(value) <= FLOAT32_MAX
                                            and float(str(np.float32(value))) == value)
    if datatype in INTEGERS:
        if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
            return False
        bits, signed = INTEGERS[datatype]
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2**bits)
        return low <= int(value) < high
    return False


def put_value(metric: Metric, datatype: int, value: Any) -> None:
    """Set `metric`'s value field for `datatype` (is_null for None). The value must fit."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        metric.is_null = True
        return
    if datatype == BOOLEAN:
        metric.boolean_value = bool(value)
    elif datatype in (STRING, TEXT):
        metric.string_value = str(value)
    elif datatype == FLOAT:
        metric.float_value = float(value)
    elif datatype == DOUBLE:
        metric.double_value = float(value)
    elif datatype in INTEGERS:
        bits, _ = INTEGERS[datatype]
        if bits == 64:
            metric.long_value = int(value) & 0xFFFF_FFFF_FFFF_FFFF
        else:
            metric.int_value = int(value) & 0xFFFF_FFFF
    elif datatype == DATETIME:
        metric.long_value = int(value)
    else:
        raise ValueError(f"datatype {NAMES.get(datatype, datatype)} is not one Millwright sends")


def get_value(metric: Metric | pb.Payload.PropertyValue, datatype: int | None) -> Any:
    """A metric's (or property's) value as Python: integers signed per `datatype`, a Float as
    the shortest decimal that is that float32 (21.437, not 21.437000274658203); None when
    null or empty."""
    if metric.is_null:
        return None
    field = metric.WhichOneof("value")
    if field is None:
        return None
    raw = getattr(metric, field)
    if field == "float_value":
        return float(str(np.float32(raw)))
    if field in ("int_value", "long_value") and datatype in INTEGERS:
        bits, signed = INTEGERS[datatype]
        raw &= (1 << bits) - 1
        if signed and raw >= 1 << (bits - 1):
            raw -= 1 << bits
        return raw
    if field in ("int_value", "long_value", "double_value", "boolean_value", "string_value",
                 "bytes_value"):
        return raw
    return None  # a DataSet, Template or extension: not something Millwright sends


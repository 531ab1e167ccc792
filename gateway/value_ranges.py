"""The ranges of numeric value types, one table for the core and every driver.

`INT_RANGES` maps an integer type, by its lower-case name (Modbus `int16`, OPC UA
`SByte` as `sbyte`, ...), to its (lowest, highest) value; `FLOAT32_MAX` is the
largest finite float32.
"""

from __future__ import annotations

INT_RANGES: dict[str, tuple[int, int]] = {
    "int8": (-(1 << 7), (1 << 7) - 1), "sbyte": (-(1 << 7), (1 << 7) - 1),
    "uint8": (0, (1 << 8) - 1), "byte": (0, (1 << 8) - 1),
    "int16": (-(1 << 15), (1 << 15) - 1), "uint16": (0, (1 << 16) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1), "uint32": (0, (1 << 32) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1), "uint64": (0, (1 << 64) - 1),
}
FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max

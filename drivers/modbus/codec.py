"""Register codec: Modbus registers and bits to typed values, in every common byte order.

A Modbus register holds 16 bits. Values wider than one register are spread over
consecutive registers, and devices disagree on the order. The byte order names
describe where the bytes of a big-endian value A B C D (A most significant) land:

| order | registers (32-bit)  | meaning                                     |
|-------|---------------------|---------------------------------------------|
| ABCD  | [AB, CD]            | big-endian words, big-endian bytes (the spec)|
| CDAB  | [CD, AB]            | word-swapped (little-endian word order)      |
| BADC  | [BA, DC]            | byte-swapped inside each register            |
| DCBA  | [DC, BA]            | fully little-endian                          |

The same two rules (word order, byte order within a register) extend to 16-bit
values (ABCD = CDAB = [AB], BADC = DCBA = [BA]) and to 64-bit values (CDAB on
A..H gives [GH, EF, CD, AB]).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

import numpy as np

from gateway.value_ranges import FLOAT32_MAX, INT_RANGES

DataType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool"
]
ByteOrder = Literal["ABCD", "BADC", "CDAB", "DCBA"]

DATA_TYPES: tuple[DataType, ...] = (
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool"
)
BYTE_ORDERS: tuple[ByteOrder, ...] = ("ABCD", "BADC", "CDAB", "DCBA")

# struct format and width in registers of each register-backed type.
_FORMATS: dict[str, tuple[str, int]] = {
    "int16": ("h", 1), "uint16": ("H", 1),
    "int32": ("i", 2), "uint32": ("I", 2),
    "int64": ("q", 4), "uint64": ("Q", 4),
    "float32": ("f", 2), "float64": ("d", 4),
    "bool": ("H", 1),  # a register read as a flag: non-zero is true
}


def register_count(data_type: DataType) -> int:
    """How many registers a value of `data_type` occupies (1 for bool in a register)."""
    return _FORMATS[data_type][1]


def _to_big_endian(raw: bytes, byte_order: ByteOrder) -> bytes:
    """Rearrange the bytes of consecutive registers into one big-endian value."""
    if byte_order == "ABCD":
        return raw
    if byte_order == "DCBA":
        return raw[::-1]
    if byte_order == "CDAB":
        raw = raw[::-1]  # reversing everything reverses the words and swaps their bytes...
    swapped = bytearray(len(raw))  # ...so swapping the bytes back leaves the words reversed
    swapped[0::2] = raw[1::2]
    swapped[1::2] = raw[0::2]
    return bytes(swapped)


def _from_big_endian(raw: bytes, byte_order: ByteOrder) -> bytes:
    # Each rearrangement is its own inverse.
    return _to_big_endian(raw, byte_order)


@dataclass(frozen=True, slots=True)
class Codec:
    """Decodes one point's registers; scale and offset give engineering units.

    value = raw * scale + offset. Integers stay integers when scale is 1 and
    offset 0, so counters and enumerations arrive exact. Values are the shortest
    decimals that are exactly what the device meant: a float32 register holding 21.437
    gives 21.437 (not 21.437000274658203), and 214 with scale 0.1 gives 21.4 (not
    21.400000000000002): the same numbers, in fewer bytes on the wire and on disk.
    """

    data_type: DataType
    byte_order: ByteOrder = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    # Decimal places an integer register scaled by `scale`, plus `offset`, can have.
    _places: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        places = max(_decimal_places(self.scale), _decimal_places(self.offset))
        object.__setattr__(self, "_places", places)

    @property
    def width(self) -> int:
        return register_count(self.data_type)

    def decode_bytes(self, buffer: bytes, register_offset: int) -> float | int | bool:
        """Decode from `buffer` (registers as big-endian bytes) at `register_offset`."""
        fmt, width = _FORMATS[self.data_type]
        start = register_offset * 2
        raw = buffer[start:start + width * 2]
        if len(raw) != width * 2:
            raise ValueError(
                f"{self.data_type} needs {width} registers, got {len(raw) // 2}"
            )
        (value,) = struct.unpack(">" + fmt, _to_big_endian(raw, self.byte_order))
        if self.data_type == "bool":
            return value != 0
        if self.scale != 1.0 or self.offset != 0.0:
            scaled = value * self.scale + self.offset
            return scaled if fmt in "fd" else round(scaled, self._places)
        if fmt == "f":
            return float(str(np.float32(value)))  # the shortest decimal of that float32
        return value

    def decode(self, registers: Sequence[int]) -> float | int | bool:
        """Decode a value from exactly its own registers."""
        return self.decode_bytes(registers_to_bytes(registers), 0)

    def encode(self, value: float | int | bool) -> list[int]:
        """The registers that decode to `value` (used by tests and the simulator tools)."""
        fmt, _ = _FORMATS[self.data_type]
        if self.data_type == "bool":
            raw: float | int = 1 if value else 0
        else:
            raw = self._unscaled(value)
            if fmt not in "fd":
                raw = round(raw)
        return self._pack(raw)

    def encode_checked(self, value: object) -> list[int]:
        """The registers for a value to write; ValueError (the reason) when it cannot fit.

        The inverse of `decode`: raw = (value - offset) / scale, rounded to the nearest
        integer for integer types. A raw value outside the type's range, a NaN or
        infinity, or a value of the wrong kind is refused, never wrapped or clipped.
        """
        if self.data_type == "bool":  # a coil, or a register read as a flag
            if isinstance(value, bool | int | float) and value in (0, 1):  # also 0/1
                return [1 if value else 0]
            raise ValueError(f"{value!r} is not a bool; a {self.data_type} point holds true "
                             "or false (or 0/1)")
        if isinstance(value, str) or value is None:
            raise ValueError(f"{value!r} is not a number or bool; a {self.data_type} "
                             "register holds numbers")
        if not isinstance(value, bool | int | float):
            raise ValueError(f"{type(value).__name__} cannot be written to a register")
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is a bool, not a number; a {self.data_type} register "
                             "holds numbers")
        fmt, _ = _FORMATS[self.data_type]
        scaled = self.scale != 1.0 or self.offset != 0.0
        raw = self._unscaled(value)
        if fmt in "fd" and isinstance(raw, int):
            try:
                raw = float(raw)
            except OverflowError:
                raw = math.inf
        if isinstance(raw, float) and not math.isfinite(raw):
            raise ValueError(f"{value!r} gives a raw value of {raw!r}, which no register holds")
        if fmt in "fd":
            if fmt == "f" and abs(raw) > FLOAT32_MAX:
                raise ValueError(f"{value!r} gives raw {raw:g}, beyond the float32 range "
                                 f"(±{FLOAT32_MAX:.6g})")
        else:
            raw = round(raw)
            low, high = INT_RANGES[self.data_type]
            if not low <= raw <= high:
                how = f" ((value - {self.offset:g}) / {self.scale:g})" if scaled else ""
                raise ValueError(f"{value!r} gives raw {raw}{how}, outside the {self.data_type} "
                                 f"range {low}..{high}")
        return self._pack(raw)

    def _unscaled(self, value: float | int) -> float | int:
        """The raw value that decodes to `value`: (value - offset) / scale, not rounded."""
        if self.scale == 1.0 and self.offset == 0.0:
            return value
        if isinstance(value, int) and self.scale == 1.0 and self.offset.is_integer():
            return value - int(self.offset)  # exact, even for 64-bit integers
        try:
            return (value - self.offset) / self.scale
        except OverflowError:  # an int too large for a float
            return math.inf

    def _pack(self, raw: float | int) -> list[int]:
        """The registers holding `raw` as this type, in this byte order."""
        fmt, _ = _FORMATS[self.data_type]
        raw_bytes = _from_big_endian(struct.pack(">" + fmt, raw), self.byte_order)
        return list(struct.unpack(f">{len(raw_bytes) // 2}H", raw_bytes))




def _decimal_places(number: float) -> int:
    exponent = Decimal(repr(number)).as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def registers_to_bytes(registers: Sequence[int]) -> bytes:
    """Registers as the big-endian byte string they travel as on the wire."""
    try:
        return struct.pack(f">{len(registers)}H", *registers)
    except struct.error as exc:
        raise ValueError(f"registers must be integers 0-65535: {exc}") from exc


def is_finite(value: float | int | bool) -> bool:
    """False for NaN and the infinities a float register can hold."""
    return not isinstance(value, float) or math.isfinite(value)

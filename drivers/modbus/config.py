"""The `[[devices]]` table of a Modbus device (TCP or RTU): connection, polling, points.

Validated by `millwright check`: unknown keys, bad types, overlapping or duplicate
point addresses and impossible combinations (a float in a coil, TCP and serial
settings together) are errors that name the TOML path and the fix.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from drivers.modbus.codec import ByteOrder, DataType, register_count
from drivers.modbus.planner import (
    BIT_TABLES,
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    Table,
    overlaps,
)
from gateway.config_base import DeviceConfig, Name, PointReporting, PointWriting

READ_ONLY_TABLES = frozenset({"input", "discrete"})


class ModbusPoint(PointReporting, PointWriting):
    """One value on the device. Addresses are protocol addresses, starting at 0.

    Only `holding` registers and `coil`s can be written (`writable = true`): Modbus has
    no function to write an input register or a discrete input.
    """

    name: Name
    table: Table = "holding"
    address: int = Field(ge=0, le=65_535)
    # Default: bool for coil/discrete, uint16 for holding/input registers.
    type: DataType | None = None
    byte_order: ByteOrder = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None

    @field_validator("scale", "offset")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ModbusPoint:
        if self.table in BIT_TABLES and self.type not in (None, "bool"):
            raise ValueError(
                f"a {self.table} holds one bit: type must be \"bool\" (or left out), "
                f"not \"{self.type}\"; use table = \"holding\" or \"input\" for numbers"
            )
        if self.scale == 0.0:
            raise ValueError("scale must not be 0")
        if self.writable and self.table in READ_ONLY_TABLES:
            writable_table = "coil" if self.table == "discrete" else "holding"
            raise ValueError(
                f"writable, but a Modbus {self.table} "
                f"{'input' if self.table == 'discrete' else 'register'} is read-only; "
                f"use table = \"{writable_table}\" if the device has one to write, or "
                "remove writable"
            )
        if self.data_type == "bool" and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError("a bool point cannot have scale or offset; remove them")
        if self.address + self.width - 1 > 65_535:
            raise ValueError(
                f"{self.data_type} at address {self.address} runs past the last "
                "address 65535; use a lower address"
            )
        return self

    @property
    def data_type(self) -> DataType:
        if self.type is not None:
            return self.type
        return "bool" if self.table in BIT_TABLES else "uint16"

    @property
    def width(self) -> int:
        """Addresses the point occupies: registers for register tables, 1 bit otherwise."""
        return 1 if self.table in BIT_TABLES else register_count(self.data_type)


class ModbusDeviceConfig(DeviceConfig):
    """A Modbus slave: `host` (TCP) or `serial_port` (RTU), one `unit_id`, its points.

    Devices naming the same host and port, or the same serial port, share one
    connection, and their requests are serialised on it.
    """

    protocol: Literal["modbus"]
    host: str | None = None
    port: int = Field(502, ge=1, le=65_535)
    serial_port: str | None = None
    baudrate: int = Field(19_200, ge=300, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    unit_id: int = Field(1, ge=0, le=255)
    poll_interval_s: float = Field(1.0, ge=0.001, le=86_400)
    timeout_s: float = Field(1.0, gt=0, le=60)
    retries: int = Field(0, ge=0, le=5)
    max_gap: int = Field(8, ge=0, le=MAX_BITS_PER_READ)
    max_registers_per_read: int = Field(MAX_REGISTERS_PER_READ, ge=1,
                                        le=MAX_REGISTERS_PER_READ)
    max_bits_per_read: int = Field(MAX_BITS_PER_READ, ge=1, le=MAX_BITS_PER_READ)
    points: list[ModbusPoint] = Field(min_length=1)

    @field_validator("points")
    @classmethod
    def _distinct(cls, points: list[ModbusPoint]) -> list[ModbusPoint]:
        # One error per point, located at the point, so each becomes its own line.
        errors: list[InitErrorDetails] = []
        seen: dict[str, int] = {}
        for index, point in enumerate(points):
            if point.name in seen:
                errors.append(_error(
                    (index, "name"), point.name,
                    f"same name as points[{seen[point.name]}]; point names must be unique "
                    "per device",
                ))
            seen.setdefault(point.name, index)
        for index, problem in overlaps(points):
            errors.append(_error((index, "address"), points[index].address, problem))
        if errors:
            raise ValidationError.from_exception_data("points", errors)
        return points

    @model_validator(mode="after")
    def _fits_a_request(self) -> ModbusDeviceConfig:
        errors = []
        limit = self.max_registers_per_read
        for index, point in enumerate(self.points):
            if point.table not in BIT_TABLES and point.width > limit:
                errors.append(_error(
                    ("points", index, "type"), point.data_type,
                    f"needs {point.width} registers but max_registers_per_read is {limit}; "
                    "raise max_registers_per_read or use a narrower type",
                ))
        if errors:
            raise ValidationError.from_exception_data("points", errors)
        return self

    @model_validator(mode="after")
    def _transport(self) -> ModbusDeviceConfig:
        if (self.host is None) == (self.serial_port is None):
            raise ValueError(
                "set exactly one of host (Modbus TCP) or serial_port (Modbus RTU)"
            )
        if self.serial_port is not None and not 1 <= self.unit_id <= 247:
            raise ValueError(f"unit_id on a serial line must be 1-247, not {self.unit_id}")
        if self.host is not None and not self.host.strip():
            raise ValueError("host must not be empty")
        return self

    @property
    def transport(self) -> Literal["tcp", "rtu"]:
        return "tcp" if self.host is not None else "rtu"

    @property
    def link_key(self) -> str:
        """Devices with the same key share one connection."""
        if self.serial_port is not None:
            return f"rtu:{self.serial_port}"
        return f"tcp:{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """The connection in words, for log lines and status reasons."""
        if self.serial_port is not None:
            return (f"{self.serial_port} {self.baudrate} {self.bytesize}{self.parity}"
                    f"{self.stopbits} unit {self.unit_id}")
        return f"{self.host}:{self.port} unit {self.unit_id}"


def _error(loc: tuple[int | str, ...], value: object, message: str) -> InitErrorDetails:
    # Without a context, PydanticCustomError leaves braces (e.g. in names) as they are.
    return InitErrorDetails(type=PydanticCustomError("modbus_point", message), loc=loc,
                            input=value)

"""Mapping help: registers decoded in every type and byte order, and `millwright probe modbus`.

    millwright probe modbus --host H [--port P] --unit U --address A --count N
                            [--table holding|input]

reads N registers once (through the driver's link, the one place pymodbus is
touched) and prints them raw, then the value at A as every type in every byte
order side by side: a float that reads 21.4 in one column and 1.2e-38 in the
next says which order the device uses. The page shows the same table for a
polled point (`decode_table`, from the registers its last poll read).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections.abc import Sequence
from typing import Any

from drivers.modbus import link as links
from drivers.modbus.codec import BYTE_ORDERS, DATA_TYPES, Codec, register_count
from drivers.modbus.config import ModbusDeviceConfig
from drivers.modbus.planner import ReadRequest
from gateway.errors import DriverError

EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE = 0, 1, 2


def decode_table(registers: Sequence[int]) -> list[tuple[str, dict[str, str]]]:
    """(type, {byte order: value as text}) for every type that fits in `registers`,
    decoded from the first register on."""
    rows: list[tuple[str, dict[str, str]]] = []
    for data_type in DATA_TYPES:
        width = register_count(data_type)
        if data_type == "bool" or width > len(registers):
            continue
        rows.append((data_type, {order: _text(Codec(data_type, order).decode(registers[:width]))
                                 for order in BYTE_ORDERS}))
    return rows


def mapping_view(address: int, registers: Sequence[int], point: dict[str, Any]) -> dict[str, Any]:
    """The page's mapping help for one point: its registers and their decodings."""
    return {"address": address, "registers": list(registers),
            "hex": [f"0x{r:04X}" for r in registers], "point": point,
            "byte_orders": list(BYTE_ORDERS),
            "rows": [{"type": t, "values": v} for t, v in decode_table(registers)]}


def _text(value: float | int | bool) -> str:
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def render(address: int, registers: Sequence[int]) -> str:
    """The table `probe` prints."""
    lines = ["address  hex     uint16  int16"]
    for i, register in enumerate(registers):
        signed = register - 0x10000 if register & 0x8000 else register
        lines.append(f"{address + i:<8} 0x{register:04X}  {register:<7} {signed}")
    rows = decode_table(registers)
    widths = [max(len(order), *(len(v[order]) for _, v in rows)) for order in BYTE_ORDERS]
    lines.append("")
    label = f"at {address}:"
    lines.append(f"{label:<8}  " + "  ".join(o.ljust(w) for o, w in zip(
        BYTE_ORDERS, widths, strict=True)).rstrip())
    for data_type, values in rows:
        lines.append(f"{data_type:<8}  " + "  ".join(
            values[o].ljust(w) for o, w in zip(BYTE_ORDERS, widths, strict=True)).rstrip())
    return "\n".join(lines)


async def read_registers(host: str, port: int, unit: int, table: str, address: int,
                         count: int, timeout_s: float) -> list[int]:
    """One read of `count` registers; DriverError (NotConnected among them) says why not."""
    config = ModbusDeviceConfig.model_validate({
        "name": "probe", "protocol": "modbus", "host": host, "port": port, "unit_id": unit,
        "timeout_s": timeout_s,
        "points": [{"name": "probe", "table": table, "address": address}]})
    link = links.acquire(config, "probe")
    try:
        await link.open(timeout_s)
        answer = await link.read(ReadRequest(table, address, count, ()),  # type: ignore[arg-type]
                                 unit, timeout_s)
    finally:
        links.release(link, "probe")
    return [int(r) for r in answer]


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if not 1 <= args.count <= 125 or not 0 <= args.address <= 65_535 - args.count + 1:
        print("millwright probe: --count must be 1-125 and the registers within 0-65535",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        registers = asyncio.run(read_registers(args.host, args.port, args.unit, args.table,
                                               args.address, args.count, args.timeout_s))
    except (DriverError, ValueError) as exc:
        print(f"millwright probe: {args.host}:{args.port} unit {args.unit}: {exc}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    print(f"{args.host}:{args.port} unit {args.unit} {args.table} "
          f"{args.address}-{args.address + args.count - 1}")
    print(render(args.address, registers))
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="millwright probe", description=(
        "Read registers once and print them decoded in every type and byte order."))
    sub = parser.add_subparsers(dest="protocol", required=True, metavar="PROTOCOL")
    modbus = sub.add_parser("modbus", help="a Modbus TCP device")
    modbus.add_argument("--host", required=True)
    modbus.add_argument("--port", type=int, default=502)
    modbus.add_argument("--unit", type=int, default=1, help="unit id (default 1)")
    modbus.add_argument("--address", type=int, required=True, help="first register, from 0")
    modbus.add_argument("--count", type=int, default=4, help="registers to read (default 4)")
    modbus.add_argument("--table", choices=("holding", "input"), default="holding")
    modbus.add_argument("--timeout-s", type=float, default=2.0)
    return parser

"""Mapping help: `millwright probe modbus` and the page's registers view, against the simulator.

The plant is not run, so the simulator's registers hold known values: each signal as
float32 ABCD in the input registers, float32 CDAB (word-swapped) and float64 in the
holding registers, the speed setpoint (1480 rpm) at holding 100.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from drivers.modbus.codec import BYTE_ORDERS, DATA_TYPES, Codec, register_count
from drivers.modbus.probe import decode_table
from gateway import cli
from gateway.runtime import Gateway
from simulators.modbus_server import (
    FLOAT32_CDAB_HOLDING,
    FLOAT32_INPUT,
    FLOAT64_HOLDING,
    SPEED_SETPOINT_HOLDING,
    ModbusSimulator,
)
from simulators.mosquitto import Mosquitto
from simulators.plant import MachineSpec, Plant
from simulators.wait import until
from tests.support import configs


@pytest.fixture
async def sim() -> AsyncIterator[ModbusSimulator]:
    async with ModbusSimulator(Plant([MachineSpec("press-1", seed=7)])) as server:
        yield server


def float32(value: float) -> str:
    return repr(float(str(np.float32(value))))


def speed(sim: ModbusSimulator) -> float:
    return float(sim.plant.sample("press-1").speed_rpm)


async def probe(sim: ModbusSimulator, capsys: pytest.CaptureFixture[str],
                *args: str) -> tuple[int, dict[str, dict[str, str]], str]:
    """Run the real CLI (off the loop: it runs its own); (exit, {type: {order: text}}, out)."""
    code = await asyncio.to_thread(cli.main, ["probe", "modbus", "--host", sim.host, "--port",
                                              str(sim.port), "--unit", "1", *args])
    out, err = capsys.readouterr()
    rows: dict[str, dict[str, str]] = {}
    header: list[str] = []
    for line in out.splitlines():
        words = line.split()
        if words[:1] == ["at"]:
            header = words[2:]
        elif header and words and words[0] in DATA_TYPES:
            rows[words[0]] = dict(zip(header, words[1:], strict=True))
    return code, rows, out + err


async def test_probe_shows_the_float_in_its_byte_order_row(
        sim: ModbusSimulator, capsys: pytest.CaptureFixture[str]) -> None:
    expected = float32(speed(sim))
    code, rows, out = await probe(sim, capsys, "--address",
                                  str(FLOAT32_CDAB_HOLDING["speed_rpm"]), "--count", "2")
    assert code == 0, out
    assert rows["float32"]["CDAB"] == expected, out  # word-swapped, as served
    assert all(rows["float32"][order] != expected for order in ("ABCD", "BADC", "DCBA"))
    assert "float64" not in rows  # two registers hold no 64-bit value

    code, rows, out = await probe(sim, capsys, "--table", "input", "--address",
                                  str(FLOAT32_INPUT["speed_rpm"]), "--count", "2")
    assert code == 0 and rows["float32"]["ABCD"] == expected, out

    code, rows, out = await probe(sim, capsys, "--address",
                                  str(FLOAT64_HOLDING["speed_rpm"]), "--count", "4")
    assert code == 0 and rows["float64"]["ABCD"] == repr(speed(sim)), out

    code, rows, out = await probe(sim, capsys, "--address", str(SPEED_SETPOINT_HOLDING),
                                  "--count", "1")
    assert code == 0 and rows["uint16"]["ABCD"] == "1480", out
    assert rows["uint16"]["BADC"] == str(struct.unpack("<H", struct.pack(">H", 1480))[0])
    assert f"{SPEED_SETPOINT_HOLDING:<8} 0x05C8  1480" in out  # the raw register


async def test_probe_says_why_it_cannot_read(sim: ModbusSimulator,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code, _, out = await probe(sim, capsys, "--address", "500", "--count", "2")
    assert code == 1 and "exception 2 (illegal data address)" in out
    code, _, out = await probe(sim, capsys, "--address", "0", "--count", "126")
    assert code == 2 and "--count must be 1-125" in out
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    code = await asyncio.to_thread(cli.main, ["probe", "modbus", "--host", "127.0.0.1",
                                              "--port", str(port), "--address", "0"])
    assert code == 1 and "cannot connect" in capsys.readouterr().err


@pytest.mark.parametrize("data_type", [t for t in DATA_TYPES if t != "bool"])
@pytest.mark.parametrize("order", BYTE_ORDERS)
def test_decode_table_finds_each_value_in_its_own_cell(data_type: str, order: str) -> None:
    value = -12345.5 if data_type.startswith("float") else (
        1234 if data_type.startswith("u") else -1234)
    registers = Codec(data_type, order).encode(value)  # type: ignore[arg-type]
    rows = dict(decode_table(registers + [0] * (4 - len(registers))))
    assert float(rows[data_type][order]) == value
    assert {t for t in rows} == {t for t in DATA_TYPES if t != "bool"}
    assert register_count(data_type) <= 4  # type: ignore[arg-type]


async def test_the_page_shows_a_points_registers(tmp_path: Path, sim: ModbusSimulator,
                                                 mosquitto: Mosquitto) -> None:
    device = {"name": "press-1", "protocol": "modbus", "host": sim.host, "port": sim.port,
              "unit_id": 1, "poll_interval_s": 0.1, "points": [
                  {"name": "speed_cdab", "table": "holding",
                   "address": FLOAT32_CDAB_HOLDING["speed_rpm"], "type": "float32",
                   "byte_order": "CDAB", "unit": "rpm"},
                  {"name": "enabled", "table": "coil", "address": 0}]}
    raw = configs.base(tmp_path, mosquitto.url, [device], health={"enabled": True, "port": 0})
    async with Gateway(configs.validate(raw)) as gw, aiohttp.ClientSession() as client:
        url = gw.health.url + "/api/mapping?device=press-1&point="
        await until(lambda: gw.online["press-1"], 20, "press-1 online")

        async def mapping(point: str) -> tuple[int, dict]:
            async with client.get(url + point) as answer:
                return answer.status, await answer.json()

        status, body = await mapping("speed_cdab")
        assert status == 200, body
        cells = {row["type"]: row["values"] for row in body["rows"]}
        assert cells["float32"]["CDAB"] == float32(speed(sim))
        assert body["point"]["byte_order"] == "CDAB" and body["address"] == 0
        assert len(body["registers"]) == 2
        for point in ("enabled", "nope"):  # a coil has no registers; an unknown point
            status, body = await mapping(point)
            assert status == 404 and "no raw data" in body["error"]

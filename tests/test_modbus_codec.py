"""Register decoding: every type x byte order against known register values (tests/cases)."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from drivers.modbus.codec import (
    BYTE_ORDERS,
    DATA_TYPES,
    Codec,
    register_count,
    registers_to_bytes,
)

CASES: list[dict[str, Any]] = tomllib.loads(
    (Path(__file__).parent / "cases" / "modbus_codec.toml").read_text()
)["case"]


def _case_id(case: dict[str, Any]) -> str:
    return f"{case['type']}-{case['byte_order']}-{case['value']!r}"


def _same(got: object, want: object) -> bool:
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(want, float):
        return isinstance(got, float) and got == pytest.approx(want, rel=1e-12)
    return type(got) is type(want) and got == want


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_decodes_known_registers(case: dict[str, Any]) -> None:
    codec = Codec(case["type"], case["byte_order"], case.get("scale", 1.0),
                  case.get("offset", 0.0))
    got = codec.decode(case["registers"])
    want = case["value"]
    if case["type"] == "float32" and isinstance(got, float) and math.isfinite(got):
        # The shortest decimal of that float32: the same float32, fewer digits.
        assert np.float32(got) == np.float32(want), f"{case['registers']} decoded to {got!r}"
        assert len(repr(got)) <= len(repr(want))
        return
    assert _same(got, want), f"{case['registers']} decoded to {got!r}"


@pytest.mark.parametrize(("registers", "scale", "offset", "shown"), [
    ([214], 0.1, 0.0, "21.4"),
    ([0xFFFF], 0.01, 0.0, "-0.01"),
    ([1234], 0.01, -40.5, "-28.16"),
    ([7], 2.5, 0.0, "17.5"),
])
def test_scaled_integers_are_the_shortest_decimal(registers: list[int], scale: float,
                                                  offset: float, shown: str) -> None:
    assert repr(Codec("int16", "ABCD", scale, offset).decode(registers)) == shown


def test_a_float32_is_its_shortest_decimal() -> None:
    registers = Codec("float32").encode(21.437)
    assert repr(Codec("float32").decode(registers)) == "21.437"


@pytest.mark.parametrize("case", [c for c in CASES if "scale" not in c], ids=_case_id)
def test_encode_is_the_inverse(case: dict[str, Any]) -> None:
    codec = Codec(case["type"], case["byte_order"])
    if case["type"] == "bool":
        assert codec.decode(codec.encode(case["value"])) is case["value"]
    else:
        assert codec.encode(case["value"]) == case["registers"]


def test_cases_cover_every_type_and_byte_order() -> None:
    covered = {(c["type"], c["byte_order"]) for c in CASES}
    assert covered >= {(t, o) for t in DATA_TYPES for o in BYTE_ORDERS if t != "bool"}
    for data_type in ("int16", "int32", "int64"):
        assert any(c["type"] == data_type and c["value"] < 0 for c in CASES)
    for data_type in ("float32", "float64"):
        specials = {repr(c["value"]) for c in CASES if c["type"] == data_type}
        assert {"nan", "inf", "-inf"} <= specials


def test_decodes_at_an_offset_inside_a_larger_read() -> None:
    codec = Codec("float32", "CDAB")
    buffer = registers_to_bytes([0xDEAD, 0xBEEF, 0x2000, 0x47F1, 0xFFFF])
    assert codec.decode_bytes(buffer, 2) == 123456.0


def test_too_few_registers_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="float64 needs 4 registers, got 2"):
        Codec("float64").decode([0, 0])


def test_integers_stay_exact_without_scaling() -> None:
    value = Codec("uint64").decode([0xFFFF] * 4)
    assert isinstance(value, int) and value == 2**64 - 1
    assert register_count("float64") == 4 and register_count("bool") == 1

"""The Modbus read planner: fewest requests within protocol limits; overlaps fail the check."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.config import ModbusDeviceConfig
from drivers.modbus.driver import ModbusDriver
from drivers.modbus.planner import PlanError, Table, plan
from gateway.config import validate
from gateway.errors import ConfigError


@dataclass(frozen=True)
class P:
    name: str
    table: Table
    address: int
    width: int = 1


def _registers(addresses: list[int], width: int = 1, table: Table = "holding") -> list[P]:
    return [P(f"p{a}", table, a, width) for a in addresses]


@pytest.mark.parametrize("span", [1, 124, 125, 126, 250, 251, 1000, 4096])
def test_contiguous_registers_read_in_ceil_span_over_125_requests(span: int) -> None:
    requests = plan(_registers(list(range(span))), max_gap=0)
    assert len(requests) == math.ceil(span / 125)
    assert all(r.count <= 125 for r in requests)
    assert sum(r.count for r in requests) == span


@pytest.mark.parametrize("step", [2, 3, 5])
def test_near_contiguous_points_merge_across_gaps(step: int) -> None:
    # One point every `step` registers over a span: gaps of step-1 are read through.
    addresses = list(range(0, 1000, step))
    span = addresses[-1] + 1
    requests = plan(_registers(addresses), max_gap=step - 1)
    assert len(requests) == math.ceil(span / 125)


def test_a_gap_wider_than_max_gap_splits() -> None:
    requests = plan(_registers([0, 1, 20, 21]), max_gap=17)  # 18 unused between
    assert [(r.address, r.count) for r in requests] == [(0, 2), (20, 2)]
    merged = plan(_registers([0, 1, 20, 21]), max_gap=18)
    assert [(r.address, r.count) for r in merged] == [(0, 22)]


@pytest.mark.parametrize("span", [1, 2000, 2001, 5000])
def test_bits_read_in_ceil_span_over_2000_requests(span: int) -> None:
    requests = plan(_registers(list(range(span)), table="coil"), max_gap=0)
    assert len(requests) == math.ceil(span / 2000)
    assert all(r.is_bits and r.count <= 2000 for r in requests)


def test_a_wide_point_is_never_split_across_requests() -> None:
    # 62 float32 fill 124 registers; the 63rd would straddle the 125 boundary.
    points = _registers(list(range(0, 2 * 63, 2)), width=2)
    requests = plan(points, max_gap=0)
    assert [(r.address, r.count) for r in requests] == [(0, 124), (124, 2)]
    assert [offset for _, offset in requests[1].points] == [0]


def test_tables_are_planned_separately_and_offsets_are_right() -> None:
    points = [P("h0", "holding", 10, 2), P("i0", "input", 10), P("h1", "holding", 13, 4),
              P("c0", "coil", 10), P("d0", "discrete", 3)]
    requests = {r.table: r for r in plan(points, max_gap=4)}
    assert set(requests) == {"holding", "input", "coil", "discrete"}
    holding = requests["holding"]
    assert (holding.address, holding.count) == (10, 7)
    assert [(p.name, offset) for p, offset in holding.points] == [("h0", 0), ("h1", 3)]


def test_smaller_device_limits_are_respected() -> None:
    requests = plan(_registers(list(range(100))), max_gap=0, max_registers=32)
    assert len(requests) == 4 and max(r.count for r in requests) == 32


@pytest.mark.parametrize(
    ("points", "fragment"),
    [
        ([P("a", "holding", 5), P("b", "holding", 5)],
         "points[1] 'b' (holding 5) overlaps points[0] 'a'"),
        ([P("a", "input", 4, 2), P("b", "input", 5)],
         "'b' (input 5) overlaps points[0] 'a' (input 4-5)"),
        ([P("a", "holding", 6), P("b", "holding", 0, 4), P("c", "holding", 3, 4)],
         "'c' (holding 3-6) overlaps"),
    ],
)
def test_overlapping_points_are_rejected(points: list[P], fragment: str) -> None:
    with pytest.raises(PlanError) as info:
        plan(points)
    assert fragment in str(info.value)


def test_same_address_in_different_tables_is_fine() -> None:
    assert len(plan([P("a", t, 0) for t in ("holding", "input", "coil", "discrete")])) == 4


def _min_requests(points: list[P], max_gap: int, limit: int) -> int:
    """Brute force over every split of the sorted points (small inputs only)."""
    ordered = sorted(points, key=lambda p: p.address)
    best = [0] + [math.inf] * len(ordered)
    for end in range(1, len(ordered) + 1):
        for start in range(end):
            group = ordered[start:end]
            pairs = zip(group, group[1:], strict=False)
            ok = group[-1].address + group[-1].width - group[0].address <= limit and all(
                b.address - (a.address + a.width) <= max_gap for a, b in pairs
            )
            if ok:
                best[end] = min(best[end], best[start] + 1)
    return int(best[-1])


@st.composite
def _layouts(draw: Any) -> tuple[list[P], int, int]:
    widths = draw(st.lists(st.sampled_from([1, 2, 4]), min_size=1, max_size=14))
    gaps = draw(st.lists(st.integers(0, 12), min_size=len(widths), max_size=len(widths)))
    points, address = [], 0
    for i, (width, gap) in enumerate(zip(widths, gaps, strict=True)):
        address += gap
        points.append(P(f"p{i}", "holding", address, width))
        address += width
    shuffled = draw(st.permutations(points))
    return list(shuffled), draw(st.integers(0, 10)), draw(st.integers(4, 20))


@settings(max_examples=300, deadline=None)
@given(_layouts())
def test_plan_is_complete_valid_and_minimal(layout: tuple[list[P], int, int]) -> None:
    points, max_gap, limit = layout
    requests = plan(points, max_gap=max_gap, max_registers=limit)
    planned = [p for r in requests for p, _ in r.points]
    assert sorted(p.name for p in planned) == sorted(p.name for p in points)
    for r in requests:
        assert r.count <= limit
        for p, offset in r.points:
            assert r.address + offset == p.address
            assert offset + p.width <= r.count
    assert len(requests) == _min_requests(points, max_gap, limit)


def _device(points: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"name": "press-1", "protocol": "modbus", "host": "127.0.0.1", "points": points,
            **extra}


def test_check_rejects_overlapping_points_naming_each_one() -> None:
    raw = {"gateway": {"id": "g"}, "devices": [_device([
        {"name": "temp", "address": 0, "type": "float32"},
        {"name": "speed", "address": 1},
        {"name": "temp", "address": 7},
        {"name": "flag", "table": "coil", "address": 1},
    ])]}
    with pytest.raises(ConfigError) as info:
        validate(raw)
    assert info.value.problems == [
        "devices[0].points[2] (point 'temp').name (device 'press-1'): same name as points[0]; "
        "point names must be unique per device (got 'temp')",
        "devices[0].points[1] (point 'speed').address (device 'press-1'): 'speed' (holding 1) "
        "overlaps "
        "points[0] 'temp' (holding 0-1); give each point its own addresses (got 1)",
    ]


def test_the_driver_compiles_its_plan_without_io() -> None:
    config = ModbusDeviceConfig.model_validate(_device(
        [{"name": f"r{i}", "address": i * 2, "type": "float32"} for i in range(100)],
        max_gap=0,
    ))
    driver = ModbusDriver(config)
    assert [(r.address, r.count) for r in driver.plan] == [(0, 124), (124, 76)]

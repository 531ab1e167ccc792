"""The read planner: a device's points compiled into as few Modbus requests as the protocol allows.

Points of the same table that are contiguous, or separated by at most `max_gap`
unused registers (or bits), share one request, as long as the request stays
within the protocol's limits: 125 registers (function codes 3 and 4) or 2000
bits (function codes 1 and 2) per read. A point is never split across two
requests. Reading through a small gap costs a few bytes on the wire; a separate
request costs a full round trip (on a 9600-baud RTU line, tens of milliseconds).

The planner is greedy: each request takes points in address order until the
next one would break the gap or size limit. For this problem (points in fixed
order, each request a run of consecutive points) greedy is optimal: its k-th
request always ends at or beyond the k-th request of any other valid plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

Table = Literal["holding", "input", "coil", "discrete"]
TABLES: tuple[Table, ...] = ("coil", "discrete", "holding", "input")
BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete"})

MAX_REGISTERS_PER_READ = 125  # Modbus application protocol v1.1b3, function codes 3 and 4
MAX_BITS_PER_READ = 2000  # function codes 1 and 2


class PlannablePoint(Protocol):
    """What the planner needs to know about a point."""

    @property
    def name(self) -> str: ...
    @property
    def table(self) -> Table: ...
    @property
    def address(self) -> int: ...
    @property
    def width(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: `count` registers or bits from `address` in `table`.

    `points` pairs each point with its offset (in registers or bits) inside the
    response.
    """

    table: Table
    address: int
    count: int
    points: tuple[tuple[PlannablePoint, int], ...]

    @property
    def is_bits(self) -> bool:
        return self.table in BIT_TABLES


class PlanError(ValueError):
    """The points cannot be planned (they overlap, or one is too wide for a request)."""


def plan(points: Sequence[PlannablePoint], *, max_gap: int = 8,
         max_registers: int = MAX_REGISTERS_PER_READ,
         max_bits: int = MAX_BITS_PER_READ) -> list[ReadRequest]:
    """The requests that read every point; PlanError names overlapping points."""
    if max_gap < 0:
        raise PlanError("max_gap must be 0 or more")
    if not 1 <= max_registers <= MAX_REGISTERS_PER_READ:
        raise PlanError(f"max_registers must be 1-{MAX_REGISTERS_PER_READ}")
    if not 1 <= max_bits <= MAX_BITS_PER_READ:
        raise PlanError(f"max_bits must be 1-{MAX_BITS_PER_READ}")
    problems = overlaps(points)
    if problems:
        raise PlanError("; ".join(f"points[{i}] {text}" for i, text in problems))
    requests: list[ReadRequest] = []
    for table in TABLES:
        ordered = sorted((p for p in points if p.table == table), key=lambda p: p.address)
        limit = max_bits if table in BIT_TABLES else max_registers
        requests.extend(_plan_table(table, ordered, max_gap, limit))
    return requests


def _plan_table(table: Table, ordered: list[PlannablePoint], max_gap: int,
                limit: int) -> list[ReadRequest]:
    requests: list[ReadRequest] = []
    group: list[PlannablePoint] = []
    start = end = 0  # the current request covers [start, end)
    for point in ordered:
        if point.width > limit:
            raise PlanError(
                f"point '{point.name}' needs {point.width} {table} addresses but a read "
                f"may carry at most {limit}"
            )
        fits = group and point.address - end <= max_gap and (
            point.address + point.width - start <= limit
        )
        if not fits:
            if group:
                requests.append(_request(table, start, end, group))
            group, start = [], point.address
        group.append(point)
        end = point.address + point.width
    if group:
        requests.append(_request(table, start, end, group))
    return requests


def _request(table: Table, start: int, end: int,
             group: list[PlannablePoint]) -> ReadRequest:
    return ReadRequest(table, start, end - start,
                       tuple((p, p.address - start) for p in group))


def overlaps(points: Sequence[PlannablePoint]) -> list[tuple[int, str]]:
    """(index, problem) for each point whose addresses overlap an earlier point's."""
    problems = []
    index = {id(p): i for i, p in enumerate(points)}
    for table in TABLES:
        ordered = sorted((p for p in points if p.table == table), key=lambda p: p.address)
        previous: PlannablePoint | None = None
        for point in ordered:
            if previous is not None and point.address < previous.address + previous.width:
                first, second = sorted((previous, point), key=lambda p: index[id(p)])
                problems.append((
                    index[id(second)],
                    f"'{second.name}' ({_span(second)}) overlaps points[{index[id(first)]}] "
                    f"'{first.name}' ({_span(first)}); give each point its own addresses",
                ))
            if previous is None or (point.address + point.width
                                    > previous.address + previous.width):
                previous = point
    return sorted(problems)


def _span(point: PlannablePoint) -> str:
    last = point.address + point.width - 1
    where = f"{point.address}" if last == point.address else f"{point.address}-{last}"
    return f"{point.table} {where}"


MAX_REGISTERS_PER_WRITE = 123  # function code 16
MAX_BITS_PER_WRITE = 1968  # function code 15


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """One Modbus write: `values` (registers, or bits for coils) from `address` in `table`.

    A single register or coil goes as function 6 or 5, several as 16 or 15.
    """

    table: Table
    address: int
    values: tuple[int, ...] | tuple[bool, ...]
    points: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.values)

    @property
    def is_bits(self) -> bool:
        return self.table in BIT_TABLES

    @property
    def function_code(self) -> int:
        if self.is_bits:
            return 5 if self.count == 1 else 15
        return 6 if self.count == 1 else 16


def plan_writes(encoded: Sequence[tuple[PlannablePoint, Sequence[int] | Sequence[bool]]]
                ) -> list[WriteRequest]:
    """The fewest writes for one command: points whose addresses follow each other without
    a gap (never written through: a gap would overwrite registers nobody asked for) share
    a request, within the protocol's size limits."""
    requests: list[WriteRequest] = []
    tables: tuple[Table, ...] = ("coil", "holding")
    for table in tables:
        ordered = sorted((pv for pv in encoded if pv[0].table == table),
                         key=lambda pv: pv[0].address)
        limit = MAX_BITS_PER_WRITE if table in BIT_TABLES else MAX_REGISTERS_PER_WRITE
        start = 0
        values: list[int] = []  # coils as 0/1 until the request is built
        names: list[str] = []
        for point, data in ordered:
            if values and (point.address != start + len(values)
                           or len(values) + len(data) > limit):
                requests.append(_write(table, start, values, names))
                values, names = [], []
            if not values:
                start = point.address
            values.extend(int(v) for v in data)
            names.append(point.name)
        if values:
            requests.append(_write(table, start, values, names))
    return requests


def _write(table: Table, start: int, values: list[int], names: list[str]) -> WriteRequest:
    data = tuple(bool(v) for v in values) if table in BIT_TABLES else tuple(values)
    return WriteRequest(table, start, data, tuple(names))

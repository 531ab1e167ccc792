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

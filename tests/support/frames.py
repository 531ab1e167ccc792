"""Frames taken apart again for assertions: one tuple per value, with its device and quality."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

from gateway.driver import Batch
from gateway.frames import Frame


class Value(NamedTuple):
    device: str
    point: str
    value: Any
    quality: str
    time: float


def flatten(source: Batch | Iterable[Frame]) -> list[Value]:
    """Every value of a batch (or of frames), in order."""
    frames = source.frames if isinstance(source, Batch) else source
    return [Value(f.device, point, value, f.quality_of(point), f.time_of(point))
            for f in frames for point, value in f.values.items()]


def by_point(source: Batch | Iterable[Frame]) -> dict[str, Value]:
    """The values of a batch by point name (the last one where a point repeats)."""
    return {v.point: v for v in flatten(source)}

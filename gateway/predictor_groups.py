"""The predictor's state per model directory: each asset's buffers, sampling schedule, alarm rule.

A `ModelGroup` holds the assets that share one model directory: one set of ring
buffers, so that one batched onnxruntime call evaluates them all. It also decides which
readings enter a window (`take`: one per training step) and how a categorical input's
value is held (`codes`: its category's index, as training encoded it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from gateway import metrics
from gateway.config import AssetConfig
from models.alarm import AlarmRule
from models.onnx_model import Model, file_signature
from models.streaming import WindowBuffers


def finite(value: object) -> float | None:
    """A reading as a finite float, or None (text, an int too large, NaN, infinity)."""
    if isinstance(value, str):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except (OverflowError, TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class AssetState:
    """One asset's place in its group's buffers, its schedule and its alarm rule."""

    def __init__(self, config: AssetConfig, index: int, row: int, model: Model) -> None:
        self.config = config
        self.index = index  # position in [[assets]], for error lines
        self.name = config.name
        self.row = row
        self.next_due = -math.inf
        self.skip_reason: str | None = None
        self.rule = AlarmRule(model.threshold, config.alarm_after, config.cooldown_s)
        self.evaluations = metrics.PREDICTOR_EVALUATIONS.labels(config.name)
        self.probability = metrics.PREDICTOR_PROBABILITY.labels(config.name)
        self.last_probability: float | None = None  # for the page (Predictor.describe)


class ModelGroup:
    """The assets sharing one model directory: one set of buffers, one batched call per tick."""

    def __init__(self, directory: Path, model: Model,
                 configs: list[tuple[int, AssetConfig]]) -> None:
        self.directory = directory
        self.model = model
        self.signature = file_signature(directory)
        self.rejected: tuple[Any, ...] | None = None
        self.failing = False  # the last batched call raised
        self.assets = [AssetState(c, index, row, model) for row, (index, c) in enumerate(configs)]
        # Buffer columns keep the first model's input order; a swapped-in model may differ.
        self.buffers = WindowBuffers(len(configs), model.inputs, model.window,
                                     [c.stale_after_s for _, c in configs])
        self.sample_every = [c.sample_every_s for _, c in configs]
        self.gaps = self._gaps(model)
        self.codes = self._codes(model)
        self.due = np.full((len(configs), len(model.inputs)), -math.inf)
        # Each input's newest reading time on the wall clock (the event's time and id);
        # the buffers and schedules above run on the predictor's monotonic clock.
        self.wall = np.full((len(configs), len(model.inputs)), -math.inf)

    def take(self, row: int, col: int, at: float) -> bool:
        """Whether a reading at `at` enters the window: one per gap, on a fixed schedule.

        The schedule advances by whole gaps (not from the reading's own time), and a
        reading up to 10% of a gap early counts, so polls at the gap's rate with jitter
        all enter while a faster poll enters once per gap. After an interruption the
        schedule restarts from the next reading.
        """
        gap = self.gaps[row]
        if not gap:
            return True
        due = self.due[row, col]
        if at < due - 0.1 * gap:
            return False
        self.due[row, col] = due + gap if at < due + gap else at + gap
        return True

    def _gaps(self, model: Model) -> list[float]:
        """Per asset: each input takes one reading per gap seconds, on a schedule (see
        `take`). A snapshot model (window 1) has no window span to keep: it takes every
        reading."""
        return [every if every is not None
                else (model.step_s or 0.0) if model.window > 1 else 0.0
                for every in self.sample_every]

    def _codes(self, model: Model) -> list[dict[str, float] | None]:
        """Per buffer column: category text -> code for a categorical input, else None."""
        return [model.layout.codes.get(name) for name in self.buffers.columns]

    def swap(self, model: Model) -> None:
        """Use `model` from now on, keeping as much of the buffered history as fits."""
        self.buffers.resize(model.window)
        codes = self._codes(model)
        for col, (old, new) in enumerate(zip(self.codes, codes, strict=True)):
            if old != new:  # codes of another encoding mean nothing to this model
                self.buffers.count[:, col] = 0
        self.codes = codes
        self.gaps = self._gaps(model)
        self.model = model
        for asset in self.assets:
            asset.rule.threshold = model.threshold

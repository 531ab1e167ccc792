"""Streaming windows: per-asset, per-input ring buffers, the device twin of rolling_windows.

Each input of each asset keeps its last `window` values (count-based, as in training)
with the time of its newest value. `windows(rows)` returns the (assets, window, inputs)
array that models.features.window_features takes, oldest value first, exactly as
`rolling_windows` slices a history offline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MISSING, STALE, WARMING_UP = "missing", "stale", "warming_up"


class WindowBuffers:
    """Ring buffers of shape (assets, inputs, window); `columns` fixes the input order."""

    def __init__(self, assets: int, columns: Sequence[str], window: int,
                 stale_after_s: Sequence[float]) -> None:
        self.columns = list(columns)
        self.window = window
        k = len(self.columns)
        self.values = np.zeros((assets, k, window))
        self.pos = np.zeros((assets, k), dtype=np.int64)
        self.count = np.zeros((assets, k), dtype=np.int64)
        self.last_time = np.full((assets, k), -math.inf)
        self.fresh = np.zeros(assets, dtype=bool)  # a value arrived since the last take
        self.stale_after = np.asarray(stale_after_s, dtype=np.float64)

    def push(self, row: int, col: int, value: float, at: float) -> None:
        p = self.pos[row, col]
        self.values[row, col, p] = value
        self.pos[row, col] = (p + 1) % self.window
        self.count[row, col] += 1
        self.last_time[row, col] = at
        self.fresh[row] = True

    def full(self, row: int) -> bool:
        return bool((self.count[row] >= self.window).all())

    def chronological(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), inputs, window) copies of the buffers, oldest value first."""
        order = (self.pos[rows][:, :, None] + np.arange(self.window)) % self.window
        return np.take_along_axis(self.values[rows], order, axis=2)

    def windows(self, rows: np.ndarray, inputs: Sequence[str]) -> np.ndarray:
        """(len(rows), window, len(inputs)) copies, columns in the order of `inputs`."""
        perm = [self.columns.index(name) for name in inputs]
        return self.chronological(rows)[:, perm, :].transpose(0, 2, 1)

    def not_ready(self, rows: np.ndarray, now: float) -> list[str | None]:
        """Per row: why it cannot be evaluated (missing, stale, warming_up), or None."""
        count, last = self.count[rows], self.last_time[rows]
        missing = (count == 0).any(axis=1)
        stale = (now - last > self.stale_after[rows][:, None]).any(axis=1)
        warming = (count < self.window).any(axis=1)
        return [MISSING if m else STALE if s else WARMING_UP if w else None
                for m, s, w in zip(missing.tolist(), stale.tolist(), warming.tolist(),
                                   strict=True)]

    def resize(self, window: int) -> None:
        """A new window length, keeping the newest values that fit."""
        if window == self.window:
            return
        keep = min(self.window, window)
        history = self.chronological(np.arange(len(self.values)))[:, :, -keep:]
        self.values = np.zeros((len(history), len(self.columns), window))
        self.values[:, :, window - keep:] = history
        # The oldest slot is 0 now: the next value overwrites it, as a full ring would.
        self.pos[:] = 0
        self.count = np.minimum(self.count, keep)
        self.window = window

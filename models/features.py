"""Window features: the one implementation shared by training, batch prediction and the device.

A window is the last `window` readings of each model input (count-based, oldest first).
Every input contributes the same statistics, in the same order, so a model's feature
list is fully determined by its input names. Training slides windows over each asset's
history (`rolling_windows`); the device keeps ring buffers and hands the same
(assets, window, inputs) array to `window_features`. Both paths end in the same
arithmetic on a C-contiguous float64 array, so they agree to the last bit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: Per-input statistics, in feature order. "slope" is per step (least squares).
STATS = ("mean", "std", "min", "max", "last", "slope")
#: A window of 1 is a snapshot model; window statistics need at least 2 readings.
MIN_WINDOW = 1
MIN_STATS_WINDOW = 2
#: The code of a category value that training never saw: all of its one-hot features are 0.
UNKNOWN_CATEGORY = -1.0


def feature_names(inputs: Sequence[str]) -> list[str]:
    """The feature names a model over `inputs` uses, in column order."""
    return [f"{name}__{stat}" for name in inputs for stat in STATS]


def window_features(windows: np.ndarray) -> np.ndarray:
    """Features of a batch of windows: (n, window, inputs) -> (n, inputs * len(STATS)), float64.

    NaN anywhere in a window makes that window's features NaN for the input concerned;
    callers drop such rows rather than predict from them.
    """
    if windows.ndim != 3:
        raise ValueError(f"windows must have shape (n, window, inputs), got {windows.shape}")
    w = np.ascontiguousarray(windows, dtype=np.float64)
    n, length, k = w.shape
    if length < MIN_STATS_WINDOW:
        raise ValueError(f"window statistics need at least {MIN_STATS_WINDOW} readings, "
                         f"got {length}")
    mean = w.mean(axis=1)
    centred = w - mean[:, None, :]
    std = np.sqrt((centred * centred).mean(axis=1))
    steps = np.arange(length, dtype=np.float64) - (length - 1) / 2.0
    slope = (centred * steps[None, :, None]).sum(axis=1) / float((steps * steps).sum())
    stacked = np.stack(
        [mean, std, w.min(axis=1), w.max(axis=1), w[:, -1, :], slope], axis=2
    )  # (n, inputs, stats): input-major, matching feature_names
    return stacked.reshape(n, k * len(STATS))


def rolling_windows(series: np.ndarray, window: int) -> np.ndarray:
    """Every full window of one asset's history: (T, inputs) -> (T - window + 1, window, inputs).

    Row j of the result ends at time step j + window - 1. Empty when T < window.
    """
    if series.ndim != 2:
        raise ValueError(f"series must have shape (steps, inputs), got {series.shape}")
    if series.shape[0] < window:
        return np.empty((0, window, series.shape[1]), dtype=np.float64)
    view = sliding_window_view(series, window, axis=0)  # (T-w+1, inputs, window)
    return np.ascontiguousarray(view.transpose(0, 2, 1), dtype=np.float64)


def rolling_features(series: np.ndarray, window: int) -> np.ndarray:
    """Features of every full window of one asset's history, oldest first."""
    return window_features(rolling_windows(series, window)) if len(series) >= window else (
        np.empty((0, series.shape[1] * len(STATS)), dtype=np.float64)
    )


def category_text(value: object) -> str:
    """How a value is matched against a categorical input's categories: the CSV's text.

    A device may send a grade as text ("L") or as a number (2 for a CSV cell "2").
    """
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


@dataclass(frozen=True)
class Layout:
    """What a model's features are: its inputs in order, its window, its categorical inputs."""

    inputs: tuple[str, ...]
    window: int
    categories: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.window < MIN_WINDOW:
            raise ValueError(f"window must be at least {MIN_WINDOW}, got {self.window}")
        unknown = set(self.categories) - set(self.inputs)
        if unknown:
            raise ValueError(f"categories for names that are not inputs: {sorted(unknown)}")

    @property
    def _plain(self) -> bool:
        """The original layout (every input numeric, statistics): the fast, unchanged path."""
        return not self.categories and self.window >= MIN_STATS_WINDOW

    def names(self) -> list[str]:
        """The feature names, in column order."""
        if self._plain:
            return feature_names(self.inputs)
        out: list[str] = []
        for name in self.inputs:
            if name in self.categories:
                out.extend(f"{name}__is_{value}" for value in self.categories[name])
            elif self.window == 1:
                out.append(f"{name}__last")
            else:
                out.extend(f"{name}__{stat}" for stat in STATS)
        return out

    @cached_property
    def codes(self) -> dict[str, dict[str, float]]:
        """Per categorical input: category text -> the number its value is held as in a
        window (its index). The one mapping for training, batch prediction and the device;
        look values up by `category_text(value)`, UNKNOWN_CATEGORY when absent."""
        return {name: {text: float(i) for i, text in enumerate(texts)}
                for name, texts in self.categories.items()}

    def features(self, windows: np.ndarray) -> np.ndarray:
        """(n, window, inputs) -> (n, features), float64, columns as `names()`."""
        if windows.ndim != 3 or windows.shape[2] != len(self.inputs):
            raise ValueError(f"windows must have shape (n, window, {len(self.inputs)}), "
                             f"got {windows.shape}")
        if self._plain:
            return window_features(windows)
        w = np.ascontiguousarray(windows, dtype=np.float64)
        blocks = []
        for j, name in enumerate(self.inputs):
            if name in self.categories:
                count = len(self.categories[name])
                blocks.append((w[:, -1, j, None] == np.arange(count)).astype(np.float64))
            elif self.window == 1:
                blocks.append(w[:, -1, j, None])
            else:
                blocks.append(window_features(w[:, :, j:j + 1]))
        return np.concatenate(blocks, axis=1) if blocks else np.empty((len(w), 0))

    def rolling(self, series: np.ndarray) -> np.ndarray:
        """Features of every full window of one asset's history, oldest first."""
        if len(series) < self.window:
            return np.empty((0, len(self.names())), dtype=np.float64)
        return self.features(rolling_windows(series, self.window))

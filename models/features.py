"""Window features: the one implementation shared by training, batch prediction and the device.

A window is the last `window` readings of each model input (count-based, oldest first).
Every input contributes the same statistics, in the same order, so a model's feature
list is fully determined by its input names. Training slides windows over each asset's
history (`rolling_windows`); the device keeps ring buffers and hands the same
(assets, window, inputs) array to `window_features`. Both paths end in the same
arithmetic on a C-contiguous float64 array, so they agree to the last bit.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: Per-input statistics, in feature order. "slope" is per step (least squares).
STATS = ("mean", "std", "min", "max", "last", "slope")
MIN_WINDOW = 2


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
    if length < MIN_WINDOW:
        raise ValueError(f"a window needs at least {MIN_WINDOW} readings, got {length}")
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

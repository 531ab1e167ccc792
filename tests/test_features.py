"""Window features: known values, shapes, and the device's streaming windows equal training's."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gateway.config import AssetConfig
from gateway.frames import Frame
from gateway.predictor import Predictor
from models.features import (
    STATS,
    feature_names,
    rolling_features,
    rolling_windows,
    window_features,
)
from models.onnx_model import load_model
from models.streaming import WindowBuffers
from simulators.machine import SIGNALS, run_to_failure


def test_names_are_input_major_in_stats_order() -> None:
    assert feature_names(["a", "b"]) == [f"{n}__{s}" for n in ("a", "b") for s in STATS]


def test_known_values_of_a_ramp_and_a_constant() -> None:
    window = np.stack([np.arange(5.0) * 2 + 1, np.full(5, 7.0)], axis=1)[None]  # (1, 5, 2)
    got = dict(zip(feature_names(["ramp", "flat"]), window_features(window)[0], strict=True))
    assert got["ramp__mean"] == 5.0
    assert got["ramp__min"] == 1.0 and got["ramp__max"] == 9.0 and got["ramp__last"] == 9.0
    assert got["ramp__slope"] == pytest.approx(2.0)
    assert got["ramp__std"] == pytest.approx(statistics.pstdev([1, 3, 5, 7, 9]))
    assert got["flat__std"] == 0.0 and got["flat__slope"] == 0.0 and got["flat__last"] == 7.0


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(2, 12), st.integers(1, 3)),
              elements=st.floats(-1e6, 1e6)))
def test_matches_a_naive_per_window_computation(windows: np.ndarray) -> None:
    got = window_features(windows).reshape(windows.shape[0], windows.shape[2], len(STATS))
    for i in range(windows.shape[0]):
        for j in range(windows.shape[2]):
            values = windows[i, :, j].tolist()
            steps = list(range(len(values)))
            expected = [statistics.fmean(values), statistics.pstdev(values), min(values),
                        max(values), values[-1],
                        statistics.linear_regression(steps, values).slope
                        if len(set(values)) > 1 else 0.0]
            np.testing.assert_allclose(got[i, j], expected, rtol=1e-7, atol=1e-6)


def test_rolling_windows_end_at_each_step() -> None:
    series = np.arange(12.0).reshape(6, 2)
    windows = rolling_windows(series, 4)
    assert windows.shape == (3, 4, 2)
    np.testing.assert_array_equal(windows[-1], series[2:])
    assert rolling_windows(series, 7).shape == (0, 7, 2)
    assert rolling_features(series, 7).shape == (0, 2 * len(STATS))


def test_nan_in_a_window_gives_nan_features_for_that_input_only() -> None:
    series = np.ones((5, 2))
    series[2, 0] = np.nan
    features = rolling_features(series, 3).reshape(3, 2, len(STATS))
    assert np.isnan(features[:, 0, 0]).all()
    assert not np.isnan(features[:, 1, :]).any()


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        window_features(np.ones((1, 1, 3)))
    with pytest.raises(ValueError, match="shape"):
        window_features(np.ones((4, 3)))


def test_streaming_features_on_the_device_equal_offline_training_features() -> None:
    """Frames fed one by one through the predictor give, at every step, the features that
    training computes for the window ending at that step: bit for bit."""
    model = load_model("bundled")
    history = run_to_failure("m", seed=7, step_s=60.0, life_s=4 * 3600.0)
    series = np.array([[s.signals()[name] for name in model.inputs] for s in history])
    offline = rolling_features(series, model.window)
    # Map the model's inputs in an order different from the model's, as a user might.
    mapping = {name: f"press/{name}" for name in reversed(model.inputs)}
    now = [0.0]  # the predictor's (monotonic) clock, replaying the history's time
    predictor = Predictor([AssetConfig(name="press", inputs=mapping)], clock=lambda: now[0])
    predictor.load()
    compared = 0
    for step, sample in enumerate(history):
        now[0] = sample.t
        predictor.observe([Frame("press", sample.t, {name: sample.signals()[name]
                                                     for name in SIGNALS}, sample.t)])
        window = predictor.current_window("press")
        if step < model.window - 1:
            assert window is None
            continue
        np.testing.assert_array_equal(window, series[step - model.window + 1: step + 1])
        np.testing.assert_array_equal(window_features(window[None])[0],
                                      offline[step - model.window + 1])
        compared += 1
    assert compared == len(history) - model.window + 1 > 100


def test_ring_buffers_keep_the_newest_values_across_a_window_change() -> None:
    buffers = WindowBuffers(1, ["a"], window=4, stale_after_s=[60.0])
    for value in range(6):
        buffers.push(0, 0, float(value), at=float(value))
    rows = np.array([0])
    np.testing.assert_array_equal(buffers.windows(rows, ["a"])[0, :, 0], [2, 3, 4, 5])
    buffers.resize(3)
    np.testing.assert_array_equal(buffers.windows(rows, ["a"])[0, :, 0], [3, 4, 5])
    buffers.push(0, 0, 6.0, at=6.0)
    np.testing.assert_array_equal(buffers.windows(rows, ["a"])[0, :, 0], [4, 5, 6])
    buffers.resize(5)  # longer: warming up again until two more values arrive
    assert buffers.not_ready(rows, now=6.0) == ["warming_up"]
    buffers.push(0, 0, 7.0, at=7.0)
    buffers.push(0, 0, 8.0, at=8.0)
    assert buffers.not_ready(rows, now=8.0) == [None]
    np.testing.assert_array_equal(buffers.windows(rows, ["a"])[0, :, 0], [4, 5, 6, 7, 8])
    assert buffers.not_ready(rows, now=100.0) == ["stale"]

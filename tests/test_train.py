"""Training: model directories the device accepts, ONNX equal to LightGBM, grouped validation,
label-column data, clear errors, and the bundled model's results on held-out machines."""

from __future__ import annotations

import csv
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("lightgbm")

from models.batch import alarm_metrics, predict_assets  # noqa: E402
from models.features import rolling_features  # noqa: E402
from models.onnx_model import BUNDLED_DIR, load_model  # noqa: E402
from models.table import DataError, read_table  # noqa: E402
from models.train import (  # noqa: E402
    TrainOptions,
    TrainResult,
    choose_threshold,
    split_assets,
    train,
)
from simulators.dataset import write_dataset  # noqa: E402
from simulators.machine import SIGNALS, Machine, run_to_failure  # noqa: E402

SMALL = {"estimators": 30, "window": 8, "horizon": 60, "rul_cap": 120}


@pytest.fixture(scope="module")
def histories(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "train.csv"
    write_dataset(path, machines=8, seed=100)
    return path


@pytest.fixture(scope="module")
def trained(histories: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    out = tmp_path_factory.mktemp("model") / "small"
    return train(TrainOptions(data=histories, out=out, name="small", **SMALL))


def test_writes_a_model_directory_the_device_accepts(trained: TrainResult,
                                                     histories: Path) -> None:
    meta = trained.metadata
    model = load_model(trained.directory)
    assert model.inputs == list(SIGNALS)  # every numeric column but asset and time
    assert model.features == meta["features"] and len(model.features) == 6 * len(SIGNALS)
    assert (model.window, model.horizon, meta["rul_cap"]) == (8, 60, 120)
    assert 0 < model.threshold < 1 and model.has_rul and meta["step_s"] == 60.0
    assert meta["training"]["data_sha256"] == hashlib.sha256(histories.read_bytes()).hexdigest()
    assert {"scikit-learn", "lightgbm", "onnx", "onnxruntime", "numpy"} <= set(meta["versions"])
    for key in ("roc_auc", "average_precision", "precision", "recall", "f1", "rul_mae_steps"):
        assert key in meta["metrics"]
    total = sum(f.stat().st_size for f in trained.directory.iterdir())
    assert total < 5 * 1024 * 1024


def test_onnx_predictions_equal_lightgbm_within_1e_5(trained: TrainResult) -> None:
    model = load_model(trained.directory)
    # Machines the model never saw.
    rows = [rolling_features(np.array([[s.signals()[n] for n in model.inputs]
                                       for s in run_to_failure("x", seed)]), model.window)
            for seed in (500, 501, 502)]
    x = np.vstack(rows)
    x32 = x.astype(np.float32)
    onnx = model.predict(x)
    expected = trained.classifier.predict_proba(x32)[:, 1]
    assert np.abs(onnx.probability - expected).max() <= 1e-5
    assert trained.regressor is not None and onnx.rul_steps is not None
    rul = np.clip(trained.regressor.predict(x32), 0, None)
    np.testing.assert_allclose(onnx.rul_steps, rul, rtol=1e-5, atol=1e-5 * SMALL["rul_cap"])
    assert trained.metadata["metrics"]["onnx_max_abs_diff"]["probability"] <= 1e-5


def test_validation_is_grouped_by_asset(trained: TrainResult) -> None:
    training = trained.metadata["training"]
    validation = set(training["validation_assets"])
    assert len(validation) == 2 and training["train_assets"] == 6  # 25 % of 8 assets
    assert validation <= {f"machine-{s}" for s in range(100, 108)}
    for count in (2, 3, 10, 101):
        mask = split_assets(count, 0.25, seed=3)
        assert 1 <= mask.sum() <= count - 1
        np.testing.assert_array_equal(mask, split_assets(count, 0.25, seed=3))


def test_threshold_maximises_f1_on_validation() -> None:
    failing = np.array([0, 0, 0, 1, 1, 1], dtype=bool)
    probability = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    threshold = choose_threshold(failing, probability)
    assert 0.3 < threshold <= 0.6


def test_label_column_ids_and_constant_columns(tmp_path: Path) -> None:
    """Labelled data with ISO times: ids and failure-type flags excluded, constants dropped."""
    data = tmp_path / "labelled.csv"
    with data.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["row_id", "unit", "when", "line", *SIGNALS, "failure_type", "failed"])
        row_id = 0
        for seed in range(200, 206):
            history = run_to_failure(f"u{seed}", seed)
            for i, s in enumerate(history):
                last = i == len(history) - 1
                when = datetime.fromtimestamp(1.7e9 + s.t, UTC).isoformat()
                writer.writerow([row_id, f"u{seed}", when, 1, *(s.signals()[n] for n in SIGNALS),
                                 2 if last else 0, int(last)])
                row_id += 1
    out = tmp_path / "labelled-model"
    result = train(TrainOptions(data=data, out=out, asset_col="unit", time_col="when",
                                label_col="failed", exclude=["row_id", "failure_type"],
                                **SMALL))
    meta = result.metadata
    assert meta["inputs"] == list(SIGNALS)
    assert meta["columns"]["constant_dropped"] == ["line"]
    assert meta["target"] == "label" and meta["rul_cap"] is None and result.regressor is None
    assert meta["step_s"] == 60.0
    model = load_model(out)
    assert not model.has_rul and not (out / "rul.onnx").exists()


def test_explicit_features_keep_their_order(histories: Path, tmp_path: Path) -> None:
    meta = train(TrainOptions(data=histories, out=tmp_path / "m",
                              features=["vibration_mm_s", "temperature_c"], **SMALL)).metadata
    assert meta["inputs"] == ["vibration_mm_s", "temperature_c"]


@pytest.mark.parametrize(("change", "message"), [
    ({"asset_col": "machine"}, "no column 'machine' (from --asset-col)"),
    ({"features": ["speed_rpm", "nope"]}, "no column 'nope' (from --features)"),
    ({"features": ["asset"]}, "also the asset, time, label or an excluded column"),
    ({"label_col": "speed_rpm"}, "must hold 0 or 1"),
    ({"exclude": ["typo"]}, "no column 'typo' (from --exclude)"),
])
def test_bad_options_name_the_column_and_fix(histories: Path, tmp_path: Path,
                                             change: dict, message: str) -> None:
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(TrainOptions(data=histories, out=tmp_path / "m", **{**SMALL, **change}))


def test_one_asset_is_not_enough(tmp_path: Path) -> None:
    data = tmp_path / "one.csv"
    write_dataset(data, machines=1, seed=1)
    with pytest.raises(DataError, match="needs at least 2"):
        train(TrainOptions(data=data, out=tmp_path / "m", **SMALL))


def test_bundled_model_metadata() -> None:
    model = load_model("bundled")
    meta = json.loads((BUNDLED_DIR / "model.json").read_text())
    assert meta["training"]["command"] == "python -m models.make_bundled"
    assert meta["metrics"]["held_out"]["failing"]["recall"] >= 0.9
    assert "false_alarms_per_machine_day" in meta["metrics"]["held_out"]["healthy"]
    assert sum(f.stat().st_size for f in BUNDLED_DIR.iterdir()) < 5 * 1024 * 1024
    assert model.step_s == 60.0 and model.has_rul


@pytest.mark.parametrize("vary_speed", [False, True], ids=["nominal-speed", "varying-speed"])
def test_bundled_model_on_held_out_machines(tmp_path: Path, vary_speed: bool) -> None:
    """Seeds the bundled model never saw: failures caught a few windows early, and the
    false alarms per healthy machine-day are measured (machines that never wear), with the
    machines at nominal speed and at speeds that change as a plant changes them."""
    failing_csv, healthy_csv = tmp_path / "failing.csv", tmp_path / "healthy.csv"
    write_dataset(failing_csv, machines=20, seed=70_000, vary_speed=vary_speed)
    write_dataset(healthy_csv, machines=5, seed=95_000, healthy_hours=24, vary_speed=vary_speed)
    model = load_model("bundled")
    failing = predict_assets(model, read_table(failing_csv), "asset", "time_s")
    healthy = predict_assets(model, read_table(healthy_csv), "asset", "time_s")
    result = alarm_metrics(model, failing, healthy, alarm_after=3, cooldown_steps=model.horizon,
                           step_s=model.step_s, min_lead_windows=3)
    assert result["failing"]["recall"] >= 0.9
    assert result["failing"]["recall_min_lead"] >= 0.9  # at least 3 windows before failure
    assert result["healthy"]["machine_days"] == pytest.approx(5.0, abs=0.01)
    assert result["healthy"]["false_alarms_per_machine_day"] <= 0.5


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_bundled_model_reads_a_press_slowed_at_its_alarm_as_wearing_slower(
        seed: int) -> None:
    """The demo's `--answer-alarms`: a press slowed to 900 rpm when the model alarms is not
    read as a worn one (a model trained at nominal speed alone jumped to p = 1.0 here)."""
    model = load_model("bundled")
    machine = Machine("press-1", seed, life_s=3 * 3600.0, onset_fraction=0.4)
    rows: list[list[float]] = []
    probabilities: list[float] = []
    slowed_at = None
    while not machine.failed and len(rows) < 1000:
        sample = machine.step(model.step_s)
        rows.append([getattr(sample, name) for name in model.inputs])
        if len(rows) < model.window:
            continue
        _, prediction = model.predict_windows(np.array([rows[-model.window:]], np.float32))
        probabilities.append(float(prediction.probability[0]))
        if slowed_at is None and probabilities[-1] >= model.threshold:
            slowed_at = len(probabilities)
            machine.speed_setpoint_rpm = 900
    assert slowed_at is not None, "no alarm before the failure"
    after = probabilities[slowed_at + model.window:slowed_at + 3 * model.window]
    assert max(after) < model.threshold / 2, after

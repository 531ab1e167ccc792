"""A snapshot model (window 1, a categorical grade) on the device: each new frame is evaluated,
text values are encoded as in training, and every alarm matches the offline prediction."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lightgbm")

from gateway.config import AssetConfig  # noqa: E402
from gateway.frames import Frame  # noqa: E402
from gateway.predictor import Predictor  # noqa: E402
from models.batch import predict_assets  # noqa: E402
from models.onnx_model import load_model  # noqa: E402
from models.table import read_table  # noqa: E402
from models.train import TrainOptions, train  # noqa: E402
from simulators.snapshots import write_snapshots  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def snapshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("snapshot-device")
    write_snapshots(folder / "train.csv", 3000, seed=11)
    return train(TrainOptions(data=folder / "train.csv", out=folder / "model", snapshot=True,
                              label_col="failed", exclude=["udi", "product_id", "failure_mode"],
                              estimators=60, report=False)).directory


def frames(device: str, row: dict[str, str], inputs: list[str], at: float) -> list[Frame]:
    """The row as the device would send it: the grade as text, the rest as numbers."""
    values: dict[str, float | str] = {
        name: row[name] if name == "grade" else float(row[name]) for name in inputs}
    return [Frame(device, at, values, at)]


async def test_each_new_frame_is_evaluated_and_alarms_match_offline(
        snapshot_dir: Path, tmp_path: Path) -> None:
    model = load_model(snapshot_dir)
    assert model.window == 1 and "grade" in model.categories
    held_out = tmp_path / "held_out.csv"
    write_snapshots(held_out, 150, seed=12)
    offline = [p.probability[0]
               for p in predict_assets(model, read_table(held_out), None, None)]
    with held_out.open(newline="") as f:
        rows = list(csv.DictReader(f))
    clock = Clock()
    config = AssetConfig(name="cell-1", model=str(snapshot_dir),
                         inputs={name: f"cell-1/{name}" for name in model.inputs},
                         alarm_after=1, cooldown_s=0, evaluate_every_s=1.0,
                         stale_after_s=1e6)
    predictor = Predictor([config], clock=clock)
    predictor.load()
    alarms: dict[int, float] = {}
    for i, row in enumerate(rows):
        clock.now = float(i)
        predictor.observe(frames("cell-1", row, model.inputs, clock.now))
        window = predictor.current_window("cell-1")
        assert window is not None and window.shape == (1, len(model.inputs))
        for event in await predictor.evaluate():
            alarms[i] = event.data["probability"]
            assert event.data["window"] == 1 and event.data["horizon_steps"] == 0
            assert event.data["inputs"]["grade"]["last"] == row["grade"]
    expected = {i for i, p in enumerate(offline) if p >= model.threshold}
    assert expected and set(alarms) == expected
    for i, probability in alarms.items():
        assert probability == pytest.approx(offline[i], abs=1e-6)
    truth = np.array([r["failed"] == "1" for r in rows])
    # Alarms are failures far more often than rows picked at random (F1 is tested on more
    # data in tests/test_train_snapshot.py).
    assert truth[sorted(alarms)].mean() > 3 * truth.mean()


async def test_an_unknown_grade_still_evaluates(snapshot_dir: Path) -> None:
    model = load_model(snapshot_dir)
    clock = Clock()
    config = AssetConfig(name="cell-2", model=str(snapshot_dir),
                         inputs={name: f"cell-2/{name}" for name in model.inputs},
                         alarm_after=1, cooldown_s=0, evaluate_every_s=1.0)
    predictor = Predictor([config], clock=clock)
    predictor.load()
    row = {"grade": "Z", "air_temp_k": "300", "process_temp_k": "310", "speed_rpm": "1500",
           "torque_nm": "10", "tool_wear_min": "10"}  # far too little power: a failure
    predictor.observe(frames("cell-2", row, model.inputs, 0.0))
    window = predictor.current_window("cell-2")
    assert window is not None and window[0, model.inputs.index("grade")] == -1.0
    events = await predictor.evaluate()
    assert len(events) == 1 and events[0].data["inputs"]["grade"]["last"] is None

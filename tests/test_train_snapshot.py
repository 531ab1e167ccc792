"""Snapshot tables: single labelled rows, a text grade, leaking columns, and bad input named.

The table comes from simulators/snapshots.py, whose failure rule is known (power out of
a band, or tool wear past the grade's limit at high torque); a snapshot model must find
it on rows of another seed it never saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lightgbm")

from models.batch import predict_assets  # noqa: E402
from models.cli import main as model_cli  # noqa: E402
from models.features import UNKNOWN_CATEGORY  # noqa: E402
from models.onnx_model import load_model  # noqa: E402
from models.scoring import at_threshold  # noqa: E402
from models.table import DataError, read_table  # noqa: E402
from models.train import TrainOptions, TrainResult, train  # noqa: E402
from simulators.snapshots import write_snapshots  # noqa: E402

IDS_AND_LEAK = ["udi", "product_id", "failure_mode"]


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("snapshots")
    train_csv, held_out_csv = folder / "train.csv", folder / "held_out.csv"
    assert 0.02 < write_snapshots(train_csv, 6000, seed=1) < 0.1
    write_snapshots(held_out_csv, 3000, seed=2)
    return train_csv, held_out_csv


@pytest.fixture(scope="module")
def snapshot_model(tables: tuple[Path, Path]) -> TrainResult:
    return train(TrainOptions(data=tables[0], out=tables[0].parent / "model", snapshot=True,
                              label_col="failed", exclude=IDS_AND_LEAK, report=False))


def held_out_f1(directory: Path, held_out: Path) -> float:
    """Row-level F1 on another seed's table, through the device's own code path."""
    model = load_model(directory)
    table = read_table(held_out)
    predictions = predict_assets(model, table, None, None)  # every row its own case
    probability = np.array([p.probability[0] for p in predictions])
    failed = table.numeric("failed") == 1
    return at_threshold(failed, probability, model.threshold)["f1"]


def test_a_snapshot_model_finds_the_rule_on_rows_it_never_saw(
        snapshot_model: TrainResult, tables: tuple[Path, Path]) -> None:
    meta = snapshot_model.metadata
    assert meta["window"] == 1 and meta["horizon"] == 0 and meta["target"] == "label"
    assert meta["columns"]["asset"] is None and meta["columns"]["time"] is None
    assert meta["step_s"] is None and meta["rul_cap"] is None
    assert meta["training"]["assets"] == 6000  # each row is its own case
    # A count of validation rows, not 1,500 "row-N" names.
    assert "validation_assets" not in meta["training"]
    assert meta["training"]["validation_rows"] == 6000 - meta["training"]["train_assets"]
    assert held_out_f1(snapshot_model.directory, tables[1]) >= 0.9


def test_the_grade_is_encoded_not_dropped(snapshot_model: TrainResult) -> None:
    meta = snapshot_model.metadata
    assert meta["categories"] == {"grade": ["H", "L", "M"]}
    assert meta["inputs"] == ["grade", "air_temp_k", "process_temp_k", "speed_rpm",
                              "torque_nm", "tool_wear_min"]
    assert meta["features"][:4] == ["grade__is_H", "grade__is_L", "grade__is_M",
                                    "air_temp_k__last"]
    model = load_model(snapshot_model.directory)
    # One row per grade, and one the model never saw: its one-hot features are all 0.
    grade = model.layout.codes["grade"]
    windows = np.array([[[grade.get(g, UNKNOWN_CATEGORY), 300, 310, 1500, 40, 10]]
                        for g in ("H", "L", "M", "X")], dtype=np.float64)
    features, _ = model.predict_windows(windows)
    np.testing.assert_array_equal(features[:, :3], [[1, 0, 0], [0, 1, 0], [0, 0, 1],
                                                    [0, 0, 0]])


def test_an_excluded_leaking_column_is_not_used(snapshot_model: TrainResult,
                                                tables: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    meta = snapshot_model.metadata
    assert meta["columns"]["excluded"] == IDS_AND_LEAK
    assert not [f for f in meta["features"] if f.split("__")[0] in IDS_AND_LEAK]
    assert "failure_mode" not in meta["inputs"] and "failure_mode" not in meta.get(
        "categories", {})
    # The model still works on a table without the leaking column at all.
    stripped = tmp_path / "no_leak.csv"
    lines = tables[1].read_text().splitlines()
    column = lines[0].split(",").index("failure_mode")
    stripped.write_text("\n".join(",".join(c for i, c in enumerate(line.split(","))
                                           if i != column) for line in lines) + "\n")
    assert held_out_f1(snapshot_model.directory, stripped) >= 0.9

    # Without --exclude the leak is what a model would learn from: it is a category.
    leaky = train(TrainOptions(data=tables[0], out=tmp_path / "leaky", snapshot=True,
                               label_col="failed", exclude=["udi", "product_id"],
                               estimators=20, report=False)).metadata
    assert leaky["categories"]["failure_mode"] == ["none", "power", "wear"]


def test_info_and_check_list_the_features_used(snapshot_model: TrainResult,
                                               tables: tuple[Path, Path], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    directory = str(snapshot_model.directory)
    assert model_cli(["info", "--model", directory]) == 0
    out = capsys.readouterr().out
    assert "category   grade: H, L, M" in out and "snapshot" in out
    assert "grade__is_H" in out and "tool_wear_min__last" in out
    assert "excluded   udi, product_id, failure_mode" in out
    odd = tmp_path / "odd.csv"
    odd.write_text(tables[1].read_text().replace(",L,", ",Q,", 1))
    assert model_cli(["check", "--model", directory, "--data", str(odd)]) == 0
    captured = capsys.readouterr()
    assert "tool_wear_min__last" in captured.out and "3000 rows" in captured.out
    assert "'grade' has values the model never saw: Q" in captured.err


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(("options", "text", "message"), [
    ({"window": 0}, None, "--window must be >= 1 (1 = a snapshot model"),
    ({"snapshot": True, "label_col": None}, None, "--snapshot needs --label-col"),
    ({"snapshot": True, "label_col": "broken"}, None, "no column 'broken' (from --label-col)"),
    ({"snapshot": True, "label_col": "failed", "exclude": ["udi", "failure_mode"]}, None,
     "column 'product_id' is text with 6000 distinct values, too many for categories"),
    ({"snapshot": True, "label_col": "failed", "exclude": IDS_AND_LEAK}, "junk",
     "line 4, column 'torque_nm': 'n/a?' is not a number"),
])
def test_bad_input_names_the_column_and_the_fix(tables: tuple[Path, Path], tmp_path: Path,
                                                options: dict, text: str | None,
                                                message: str) -> None:
    data = tables[0]
    if text == "junk":
        lines = data.read_text().splitlines()
        cells = lines[3].split(",")
        cells[6] = "n/a?"
        lines[3] = ",".join(cells)
        data = write(tmp_path / "junk.csv", "\n".join(lines) + "\n")
    with pytest.raises(DataError) as raised:
        train(TrainOptions(data=data, out=tmp_path / "m", report=False, **options))
    assert message in str(raised.value)
    assert "snapshots" in str(raised.value) or "--" in str(raised.value)


def test_target_recall_sets_a_lower_threshold(snapshot_model: TrainResult,
                                              tables: tuple[Path, Path],
                                              tmp_path: Path) -> None:
    meta = train(TrainOptions(data=tables[0], out=tmp_path / "recall", snapshot=True,
                              label_col="failed", exclude=IDS_AND_LEAK, target_recall=0.99,
                              report=False)).metadata
    assert meta["threshold_rule"] == {"target_recall": 0.99}
    assert meta["metrics"]["recall"] >= 0.99
    assert meta["threshold"] <= snapshot_model.metadata["threshold"]

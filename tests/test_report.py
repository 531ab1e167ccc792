"""report.html: self-contained, its figures are real PNGs, its numbers are model.json's."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from models.cli import main as model_cli  # noqa: E402
from models.train import TrainOptions, train  # noqa: E402
from models.tuning import Grid  # noqa: E402
from simulators.dataset import write_dataset  # noqa: E402
from simulators.snapshots import write_snapshots  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def figures(page: str) -> dict[str, bytes]:
    found = re.findall(r'<img id="fig-([a-z-]+)" alt="[^"]*" src="data:image/png;base64,'
                       r'([A-Za-z0-9+/=]+)"', page)
    return {key: base64.b64decode(data) for key, data in found}


def cells(page: str) -> dict[str, str]:
    found = re.findall(r'data-key="([a-z_0-9]+)">([^<]*)<', page)
    return {key: html.unescape(value) for key, value in found}


@pytest.fixture(scope="module")
def run_to_failure(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    write_dataset(folder / "train.csv", machines=8, seed=400)
    train(TrainOptions(data=folder / "train.csv", out=folder / "model", window=8, horizon=60,
                       rul_cap=120, tune=True,
                       tune_grid=Grid(rounds=(30, 60), depths=(2, 3), rates=(0.1,))))
    return folder / "model"


def test_run_to_failure_report_has_every_figure_and_model_json_numbers(
        run_to_failure: Path) -> None:
    page = (run_to_failure / "report.html").read_text(encoding="utf-8")
    meta = json.loads((run_to_failure / "model.json").read_text())
    images = figures(page)
    assert set(images) == {"confusion", "precision-recall", "rul", "warning", "false-alarms",
                           "importance", "tuning"}
    assert all(png.startswith(PNG) and len(png) > 2000 for png in images.values())
    assert "http://" not in page and "https://" not in page  # nothing fetched: opens offline
    got, m, training = cells(page), meta["metrics"], meta["training"]
    for key in ("roc_auc", "average_precision", "precision", "recall", "f1", "rul_mae_steps",
                "onnx_bytes", "latency_us_per_row"):
        assert float(got[key]) == m[key], key
    assert float(got["threshold"]) == meta["threshold"]
    assert got["data_sha256"] == training["data_sha256"]
    assert got["shape"] == f"{training['rows']} x {training['columns']}"
    c = m["confusion"]
    assert got["confusion"] == f"{c['tp']} / {c['fp']} / {c['fn']} / {c['tn']}"
    assert float(got["false_alarms_per_asset_day"]) == \
        m["false_alarms"]["false_alarms_per_asset_day"]
    assert float(got["tuning_cv_score"]) == meta["tuning"]["cv_score"]
    assert sum(c.values()) == m["validation_rows"]
    assert set(m["warning_steps"]) == set(training["validation_assets"])


def test_info_report_prints_the_path(run_to_failure: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert model_cli(["info", "--model", str(run_to_failure), "--report"]) == 0
    assert capsys.readouterr().out.strip() == str((run_to_failure / "report.html").resolve())
    (run_to_failure / "report.html").rename(run_to_failure / "moved.html")
    try:
        assert model_cli(["info", "--model", str(run_to_failure), "--report"]) == 2
        assert "no report" in capsys.readouterr().err
    finally:
        (run_to_failure / "moved.html").rename(run_to_failure / "report.html")


def test_snapshot_report_says_what_does_not_apply(tmp_path: Path) -> None:
    write_snapshots(tmp_path / "table.csv", 2000, seed=5)
    meta = train(TrainOptions(data=tmp_path / "table.csv", out=tmp_path / "model",
                              snapshot=True, label_col="failed", estimators=40,
                              exclude=["udi", "product_id", "failure_mode"])).metadata
    page = (tmp_path / "model" / "report.html").read_text(encoding="utf-8")
    assert set(figures(page)) == {"confusion", "precision-recall", "importance"}
    got = cells(page)
    assert got["false_alarms_per_asset_day"].startswith("n/a")
    assert float(got["f1"]) == meta["metrics"]["f1"]
    assert got["categories"] == "grade: H, L, M"
    assert got["excluded"] == "udi, product_id, failure_mode"


def test_retraining_with_no_report_removes_the_old_report(tmp_path: Path) -> None:
    write_snapshots(tmp_path / "table.csv", 600, seed=6)
    options = {"data": tmp_path / "table.csv", "out": tmp_path / "model", "snapshot": True,
               "label_col": "failed", "estimators": 10,
               "exclude": ["udi", "product_id", "failure_mode"]}
    train(TrainOptions(**options))  # type: ignore[arg-type]
    assert (tmp_path / "model" / "report.html").exists()
    train(TrainOptions(**options, report=False))  # type: ignore[arg-type]
    assert not (tmp_path / "model" / "report.html").exists()
    assert (tmp_path / "model" / "model.json").exists()

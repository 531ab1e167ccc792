"""`millwright simulate --dataset` and `millwright model train | predict | info | evaluate`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gateway.cli import main as millwright
from models.cli import main as model_cli
from models.onnx_model import load_model
from simulators.dataset import main as dataset_cli
from simulators.machine import SIGNALS

SMALL = ["--window", "8", "--horizon", "60", "--rul-cap", "120", "--estimators", "20"]


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "histories.csv"
    assert dataset_cli(["--dataset", str(path), "--machines", "6", "--seed", "40"]) == 0
    return path


@pytest.fixture(scope="module")
def model_dir(data: Path) -> Path:
    pytest.importorskip("sklearn")
    out = data.parent / "model"
    assert model_cli(["train", "--data", str(data), "--out", str(out), *SMALL]) == 0
    return out


def test_dataset_is_run_to_failure_histories_in_the_trainer_shape(data: Path,
                                                                  tmp_path: Path) -> None:
    table = rows(data)
    assert list(table[0]) == ["asset", "time_s", *SIGNALS]
    assets = {}
    for row in table:
        assets.setdefault(row["asset"], []).append(row)
    assert sorted(assets) == [f"machine-{seed}" for seed in range(40, 46)]
    for history in assets.values():
        assert float(history[-1]["speed_rpm"]) == 0.0  # the last row is the failure
        assert all(float(r["speed_rpm"]) > 1000 for r in history[:-1])
        assert [float(r["time_s"]) for r in history[:3]] == [0.0, 60.0, 120.0]
    again = tmp_path / "again.csv"
    # The same seeds give the same file, through the `millwright simulate` front door too.
    assert millwright(["simulate", "--dataset", str(again), "--machines", "6",
                       "--seed", "40"]) == 0
    assert again.read_bytes() == data.read_bytes()


def test_healthy_dataset(tmp_path: Path) -> None:
    path = tmp_path / "healthy.csv"
    assert dataset_cli(["--dataset", str(path), "--machines", "2", "--seed", "9",
                        "--healthy-hours", "1"]) == 0
    table = rows(path)
    assert len(table) == 2 * 61 and table[0]["asset"] == "healthy-9"
    assert all(float(r["speed_rpm"]) > 1000 for r in table)


def test_train_reports_and_writes_the_directory(model_dir: Path) -> None:
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["name"] == "model" and meta["inputs"] == list(SIGNALS)
    assert {p.name for p in model_dir.iterdir()} == {"model.onnx", "rul.onnx", "model.json",
                                                     "report.html"}


def test_predict_every_step_and_last(model_dir: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred.csv"
    assert model_cli(["predict", "--model", str(model_dir), "--data", str(data),
                      "--out", str(out)]) == 0
    table, source = rows(out), rows(data)
    assert len(table) == len(source)
    assert list(table[0]) == ["asset", "time_s", "probability", "alarm", "rul_steps", "rul_s"]
    first = [r for r in table if r["asset"] == "machine-40"]
    assert all(r["probability"] == "" and r["alarm"] == "" for r in first[:7])
    model = load_model(model_dir)
    for row in table:
        if row["probability"]:
            assert row["alarm"] == str(int(float(row["probability"]) >= model.threshold))
            assert float(row["rul_s"]) == pytest.approx(float(row["rul_steps"]) * 60, abs=3)

    last = tmp_path / "last.csv"
    assert model_cli(["predict", "--model", str(model_dir), "--data", str(data),
                      "--out", str(last), "--last"]) == 0
    final = rows(last)
    assert [r["asset"] for r in final] == [f"machine-{s}" for s in range(40, 46)]
    # Same session code as the device: the last window of machine-40 by hand.
    history = np.array([[float(r[s]) for s in model.inputs] for r in source
                        if r["asset"] == "machine-40"])
    _, expected = model.predict_windows(history[None, -model.window:])
    assert float(final[0]["probability"]) == pytest.approx(expected.probability[0], abs=1e-6)
    assert final[0]["alarm"] == "1"  # the failure row itself


def test_info_and_evaluate_record(model_dir: Path, data: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert model_cli(["info", "--model", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert "status     ok: files match model.json" in out and "window     8 steps" in out
    assert "simulated machines only" not in out  # a model of the plant's own data
    assert model_cli(["info", "--model", "bundled"]) == 0
    assert "trained on simulated machines only" in capsys.readouterr().out
    assert model_cli(["info", "--model", str(model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["window"] == 8
    assert model_cli(["evaluate", "--model", str(model_dir), "--data", str(data),
                      "--record"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["failing"]["machines"] == 6
    meta = json.loads((model_dir / "model.json").read_text())
    assert meta["metrics"]["held_out"]["failing"] == result["failing"]
    load_model(model_dir)  # recording results leaves the model valid


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--asset-col", "machine"], "no column 'machine' (from --asset-col)"),
    (["predict", "--model", "bundled", "--out", "x.csv"], "no column"),
    (["info", "--model", "nowhere"], "no such model directory"),
    (["evaluate", "--model", "bundled"], "give --data"),
])
def test_bad_input_is_one_line_and_exit_2(data: Path, tmp_path: Path, argv: list[str],
                                          message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    if argv[0] in ("train", "predict"):
        argv = [*argv, "--data", str(data)]
        if argv[0] == "train":
            pytest.importorskip("sklearn")
            argv += ["--out", str(tmp_path / "m")]
        else:
            # a CSV without the model's inputs
            bare = tmp_path / "bare.csv"
            bare.write_text("asset,time_s,speed_rpm\na,0,1\n")
            argv[argv.index(str(data))] = str(bare)
            argv[argv.index("x.csv")] = str(tmp_path / "x.csv")
    assert model_cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and err[0].startswith("millwright model")


def test_the_device_side_never_imports_training_libraries(data: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from models.cli import main\n"
        "import gateway.predictor\n"
        f"assert main(['predict', '--model', 'bundled', '--data', {str(data)!r}, "
        f"'--out', {str(tmp_path / 'p.csv')!r}, '--last']) == 0\n"
        "assert main(['info', '--model', 'bundled']) == 0\n"
        "loaded = {'sklearn', 'lightgbm', 'matplotlib', 'onnx', 'tqdm'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "millwright-bundled" in done.stdout


@pytest.mark.parametrize("asked", [False, True], ids=["piped", "--progress"])
def test_train_shows_progress_only_on_a_terminal_or_when_asked(data: Path, tmp_path: Path,
                                                               asked: bool) -> None:
    pytest.importorskip("lightgbm")
    argv = [sys.executable, "-m", "gateway.cli", "model", "train", "--data", str(data),
            "--out", str(tmp_path / "m"), "--no-report", *SMALL,
            *(["--progress"] if asked else [])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {tmp_path / 'm'}")
    if not asked:  # stderr is a pipe here: not a terminal, so nothing extra
        assert done.stderr == ""
    else:
        for step in ("windows", "boosting", "boosting RUL", "data: ", "fitting: "):
            assert step in done.stderr, done.stderr

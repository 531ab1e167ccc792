"""`--tune`: folds are whole assets, the default is searched first, choices and scores recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lightgbm")

from models.boosting import DEFAULT, Params  # noqa: E402
from models.progress import Progress  # noqa: E402
from models.train import TrainOptions, TrainResult, train  # noqa: E402
from models.tuning import Grid, grouped_folds, tune  # noqa: E402
from simulators.dataset import write_dataset  # noqa: E402

TINY = Grid(rounds=(50, 100), depths=(2, 3), rates=(0.1,))


def test_folds_never_split_an_asset() -> None:
    groups = np.repeat(np.arange(7), [5, 9, 3, 12, 4, 8, 6])
    folds = grouped_folds(groups, 3)
    assert len(folds) == 3
    seen = np.concatenate([test for _, test in folds])
    assert sorted(seen.tolist()) == list(range(len(groups)))  # each row tested once
    for train_rows, test_rows in folds:
        assert not set(groups[train_rows]) & set(groups[test_rows])


def test_fewer_than_two_groups_give_no_folds_and_tuning_keeps_the_default() -> None:
    assert grouped_folds(np.zeros(10, dtype=int), 3) == []
    assert grouped_folds(np.array([], dtype=int), 3) == []
    assert len(grouped_folds(np.repeat([0, 1], 5), 3)) == 2
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, 3)).astype(np.float32)
    y = x[:, 0] > 0.5
    result = tune(x, y, np.zeros(80, dtype=int), None, seed=0, target_recall=None,
                  budget_s=10.0, grid=TINY)
    assert result.chosen == DEFAULT and result.folds == 0 and not result.complete


def test_grid_puts_the_default_first_and_caps_device_cost() -> None:
    fits = Grid().fits()
    assert fits[0][:2] == (DEFAULT.depth, DEFAULT.learning_rate)
    assert DEFAULT.rounds in fits[0][2]
    assert all(n * depth <= Grid().max_visits for depth, _, rounds in fits for n in rounds)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, list[str]]:
    folder = tmp_path_factory.mktemp("tune")
    write_dataset(folder / "train.csv", machines=8, seed=300)
    lines: list[str] = []
    return train(TrainOptions(data=folder / "train.csv", out=folder / "model", window=8,
                              horizon=60, rul_cap=120, tune=True, tune_grid=TINY,
                              progress=Progress(True, write=lines.append), report=False,
                              name="tuned")), lines


def test_tuning_records_its_choice_and_is_no_worse_than_the_default(
        tuned: tuple[TrainResult, list[str]]) -> None:
    result, lines = tuned
    meta = result.metadata
    tuning = meta["tuning"]
    assert len(tuning["candidates"]) == 4 and tuning["complete"]
    assert tuning["grouped_by"] == "asset" and tuning["folds"] == 3
    chosen = tuning["chosen"]
    best = max(c["cv_score"] for c in tuning["candidates"])
    picked = [c for c in tuning["candidates"]
              if (c["rounds"], c["depth"], c["learning_rate"])
              == (chosen["rounds"], chosen["depth"], chosen["learning_rate"])]
    assert len(picked) == 1 and picked[0]["cv_score"] == best == tuning["cv_score"]
    assert (meta["estimator"]["n_estimators"], meta["estimator"]["max_depth"],
            meta["estimator"]["learning_rate"]) == (chosen["rounds"], chosen["depth"],
                                                   chosen["learning_rate"])
    assert result.classifier.n_estimators == chosen["rounds"]
    assert any(line.startswith("tuning: 2/4 candidates") and "best F1" in line
               for line in lines), lines


def test_a_spent_budget_keeps_the_default(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 4)).astype(np.float32)
    y = x[:, 0] + 0.3 * rng.normal(size=600) > 1.0
    result = tune(x, y, np.arange(600) // 20, None, seed=0, target_recall=None, budget_s=0.0,
                  grid=TINY)
    assert not result.complete
    assert {(c["depth"], c["learning_rate"]) for c in result.candidates} == {(3, 0.1)}
    assert result.chosen in (DEFAULT, Params(50, 3, 0.1))

"""`--tune`: a small search over boosting rounds, tree depth and learning rate.

Grouped cross-validation over the training assets only (the validation assets stay
untouched for the final, honest scores): folds are whole assets, so no asset is on
both sides of a fold. Each (depth, learning rate) is fitted once per fold with the
most rounds in the grid, and every smaller round count is scored from the same fit
(LightGBM predicts with the first k trees), so the grid costs a fit per (depth, rate)
per fold. Candidates that would cost the device more than `MAX_VISITS` node visits
per row are left out (about 35 µs per model per row here). The default parameters are
searched first, so a search cut short by its time budget still holds them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold

from models.boosting import DEFAULT, Params, fit_classifier
from models.progress import SILENT, Progress
from models.scoring import average_precision, score

#: Node visits per row (rounds x depth): keeps a model pair well under 100 µs per row.
MAX_VISITS = 1000
ROUNDS = (50, 100, 200, 300, 500)
DEPTHS = (3, 2, 4, 5)
RATES = (0.1, 0.05, 0.2)
FOLDS = 3



@dataclass(frozen=True)
class Grid:
    rounds: Sequence[int] = ROUNDS
    depths: Sequence[int] = DEPTHS
    rates: Sequence[float] = RATES
    max_visits: int = MAX_VISITS

    def fits(self) -> list[tuple[int, float, list[int]]]:
        """(depth, rate, round counts) in search order, the default's pair first."""
        pairs = [(d, r) for d in self.depths for r in self.rates]
        pairs.sort(key=lambda p: p != (DEFAULT.depth, DEFAULT.learning_rate))
        out = []
        for depth, rate in pairs:
            rounds = sorted(n for n in self.rounds if n * depth <= self.max_visits)
            if rounds:
                out.append((depth, rate, rounds))
        return out


@dataclass
class Tuning:
    """The search's outcome, as recorded in model.json."""

    chosen: Params
    rule: str
    candidates: list[dict[str, Any]] = field(default_factory=list)
    folds: int = FOLDS
    seconds: float = 0.0
    complete: bool = True

    def record(self) -> dict[str, Any]:
        best = max(self.candidates, key=lambda c: c["cv_score"])
        default = next((c for c in self.candidates if _params(c) == DEFAULT), None)
        return {"chosen": {"rounds": self.chosen.rounds, "depth": self.chosen.depth,
                           "learning_rate": self.chosen.learning_rate},
                "score": self.rule, "cv_score": best["cv_score"],
                "default_cv_score": default["cv_score"] if default else None,
                "folds": self.folds, "grouped_by": "asset", "seconds": round(self.seconds, 1),
                "complete": self.complete, "candidates": self.candidates}


def _params(candidate: dict[str, Any]) -> Params:
    return Params(candidate["rounds"], candidate["depth"], candidate["learning_rate"])


def grouped_folds(groups: np.ndarray, folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, test rows) per fold; every group's rows sit in exactly one test fold.
    None with fewer than two groups: one group cannot be both trained on and held out."""
    count = min(folds, len(np.unique(groups)))
    if count < 2:
        return []
    splitter = GroupKFold(n_splits=count)
    return [(train, test) for train, test in splitter.split(groups, groups=groups)]


def tune(x: np.ndarray, y: np.ndarray, groups: np.ndarray, weight: np.ndarray | None,
         *, seed: int, target_recall: float | None, budget_s: float, grid: Grid = Grid(),
         progress: Progress = SILENT) -> Tuning:
    """Search the grid with grouped CV; the best mean fold score wins, ties to the cheaper."""
    started = time.perf_counter()
    rule = "best_f1" if target_recall is None else f"precision_at_recall_{target_recall:g}"
    folds = [f for f in grouped_folds(groups, FOLDS)
             if y[f[0]].any() and not y[f[0]].all() and y[f[1]].any()]
    if not folds:
        return Tuning(DEFAULT, rule, folds=0, complete=False)
    plan = grid.fits()
    total = sum(len(rounds) for _, _, rounds in plan)
    candidates: list[dict[str, Any]] = []
    complete = True
    fits = progress.bar("tuning", len(plan) * len(folds), "fit")
    for done, (depth, rate, rounds) in enumerate(plan):
        if candidates and time.perf_counter() - started > budget_s:
            complete = False
            break
        scores: dict[int, list[tuple[float, float]]] = {n: [] for n in rounds}
        for train, test in folds:
            model = fit_classifier(x[train], y[train], Params(max(rounds), depth, rate), seed,
                                   None if weight is None else weight[train])
            fits.update(1)
            for n in rounds:
                p = np.asarray(model.predict_proba(x[test], num_iteration=n))[:, 1]
                scores[n].append((score(y[test], p, target_recall),
                                  average_precision(y[test], p)))
        for n in rounds:
            fold_scores = np.array(scores[n])
            candidates.append({"rounds": n, "depth": depth, "learning_rate": rate,
                               "cv_score": round(float(fold_scores[:, 0].mean()), 4),
                               "cv_average_precision": round(float(fold_scores[:, 1].mean()), 4)})
        best = max(candidates, key=lambda c: c["cv_score"])
        measure = "F1" if target_recall is None else f"precision at recall {target_recall:g}"
        progress.note(f"tuning: {len(candidates)}/{total} candidates ({done + 1}/{len(plan)} "
                      f"fits x {len(folds)} folds), best {measure} {best['cv_score']:.3f}")
    fits.close()
    chosen = max(candidates, key=lambda c: (c["cv_score"], -_params(c).visits))
    return Tuning(_params(chosen), rule, candidates, len(folds),
                  time.perf_counter() - started, complete)

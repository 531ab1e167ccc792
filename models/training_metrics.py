"""What a trained model is measured by on its validation assets: rows, alarms, cost on the device.

Row level: ROC AUC, average precision, and the confusion matrix, precision, recall and
F1 at the chosen threshold. Alarm level (histories with a known step): the device's
alarm rule (`alarm_after` evaluations in a row, then quiet for the horizon) run over
each validation asset in time order; an alarm is false when no failure follows within
the horizon, and false alarms are counted per asset-day. For run-to-failure data also
the warning time before each validation failure and the RUL error. Cost: the ONNX
files' size and the time of one row through `Model.predict` (every session, one thread).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from models.alarm import alarm_steps
from models.batch import AssetPrediction, alarm_metrics, predict_asset, warning_lead
from models.dataset import Prepared
from models.onnx_model import Model
from models.scoring import at_threshold, average_precision


@dataclass
class Validation:
    """The validation side of one training run, as the metrics and the report need it."""

    run_to_failure: bool
    data: Prepared
    rows: np.ndarray  # mask over window rows
    assets: np.ndarray  # mask over assets
    probability: np.ndarray  # LightGBM's, for the validation rows
    threshold: float
    rul_predicted: np.ndarray | None
    horizon: int
    rul_cap: int
    alarm_after: int

    @property
    def failing(self) -> np.ndarray:
        return self.data.failing[self.rows]

    @property
    def rul(self) -> np.ndarray | None:
        return None if self.data.rul is None else self.data.rul[self.rows]

    def asset_predictions(self, model: Model) -> list[AssetPrediction]:
        """Every validation asset predicted step by step through the device's code."""
        return [predict_asset(model, self.data.assets[i], self.data.values[i])
                for i in np.flatnonzero(self.assets)]

    def per_asset(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(name, probabilities, failing) of each validation asset's rows, in time order."""
        group = self.data.group[self.rows]
        return [(self.data.assets[i].name, self.probability[group == i],
                 self.failing[group == i]) for i in np.flatnonzero(self.assets)]


def false_alarms(run: Validation, step_s: float | None) -> dict[str, Any] | None:
    """Alarms with no failure within the horizon, per asset and per asset-day; None when
    the data has no time step (a snapshot table: each row is a case, not a history)."""
    if not step_s:
        return None
    per_asset: list[dict[str, Any]] = []
    for name, probability, failing in run.per_asset():
        alarms = alarm_steps(probability.tolist(), run.threshold, run.alarm_after,
                             float(run.horizon))
        days = len(probability) * step_s / 86_400
        per_asset.append({"asset": name, "days": round(days, 4),
                          "false_alarms": sum(1 for i in alarms if not failing[i])})
    days = sum(a["days"] for a in per_asset)
    count = sum(a["false_alarms"] for a in per_asset)
    return {"alarm_after": run.alarm_after, "cooldown_steps": run.horizon,
            "false_alarms": count, "asset_days": round(days, 3),
            "false_alarms_per_asset_day": round(count / days, 4) if days else None,
            "per_asset": per_asset}


def warning_steps(model: Model, predictions: list[AssetPrediction],
                  alarm_after: int, cooldown: float) -> dict[str, int | None]:
    """Run-to-failure: steps between each validation asset's first alarm and its failure."""
    return {asset.name: warning_lead(model, asset, alarm_after, cooldown)
            for asset in predictions}


def latency_us(model: Model, row: np.ndarray, repeats: int = 300) -> float:
    """Median time of one row through every session of the model, in µs."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict(row)
        timings.append(time.perf_counter() - started)
    return round(statistics.median(timings) * 1e6, 1)


def metrics(run: Validation, model: Model, onnx_bytes: int) -> dict[str, Any]:
    y, p = run.failing, run.probability
    check = model.predict(run.data.x[run.rows])
    out: dict[str, Any] = {
        "validation_rows": int(run.rows.sum()), "positive_rows": int(y.sum()),
        "roc_auc": round(float(roc_auc_score(y, p)), 4),
        "average_precision": round(average_precision(y, p), 4),
        **at_threshold(y, p, run.threshold),
        "onnx_max_abs_diff": {"probability": float(np.abs(check.probability - p).max())},
        "onnx_bytes": onnx_bytes,
        "latency_us_per_row": latency_us(model, run.data.x[run.rows][:1]),
    }
    if run.rul_predicted is not None and run.rul is not None:
        below = run.rul < run.rul_cap
        out["rul_mae_steps"] = round(float(np.abs(run.rul_predicted[below]
                                                  - run.rul[below]).mean()),
                                     2) if below.any() else None
        assert check.rul_steps is not None
        out["onnx_max_abs_diff"]["rul_steps"] = float(
            np.abs(check.rul_steps - np.clip(run.rul_predicted, 0, None)).max())
    alarms = false_alarms(run, model.step_s)
    if alarms is not None:
        out["false_alarms"] = alarms
    if run.run_to_failure:
        predictions = run.asset_predictions(model)
        out["validation_alarms"] = alarm_metrics(model, predictions, [], run.alarm_after,
                                                 run.horizon, model.step_s)
        out["warning_steps"] = warning_steps(model, predictions, run.alarm_after,
                                             float(run.horizon))
    return out

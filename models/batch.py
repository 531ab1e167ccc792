"""Offline use of a trained model: predictions for every asset and step of a CSV, and alarm metrics.

Uses the device's own code paths: features from models.features, the ONNX session
from models.onnx_model and the alarm rule from models.alarm, so what this reports is
what the gateway would do evaluating once per step.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.alarm import alarm_steps
from models.features import rolling_windows
from models.onnx_model import METADATA_FILE, Model
from models.table import AssetRows, Table, by_asset, series


@dataclass(frozen=True, slots=True)
class AssetPrediction:
    """Per time step of one asset: NaN probability/RUL where no full window exists yet."""

    name: str
    rows: np.ndarray  # indexes into the table, in time order
    times: np.ndarray
    probability: np.ndarray
    rul_steps: np.ndarray | None


def predict_assets(model: Model, table: Table, asset_col: str | None,
                   time_col: str | None) -> list[AssetPrediction]:
    """Predictions for every row of `table`, grouped by asset and ordered by time (without
    an asset column, each row is its own asset: a snapshot table)."""
    for column in model.inputs:
        table.require(column, f"the model's inputs ({', '.join(model.inputs)})")
    if asset_col is None and model.window == 1:
        return _predict_rows(model, table, time_col)
    out = []
    for asset in by_asset(table, asset_col, time_col):
        values = series(table, model.inputs, asset.rows, model.layout.codes)
        out.append(predict_asset(model, asset, values))
    return out


def _predict_rows(model: Model, table: Table, time_col: str | None) -> list[AssetPrediction]:
    """A snapshot table with a snapshot model: every row its own asset, all predicted in
    one batched call (the same numbers as one call per row)."""
    assets = by_asset(table, None, time_col)
    rows = np.arange(table.rows)
    whole = predict_asset(model, AssetRows("", rows, rows.astype(np.float64)),
                          series(table, model.inputs, rows, model.layout.codes))
    rul = whole.rul_steps
    return [AssetPrediction(a.name, a.rows, a.times, whole.probability[i:i + 1],
                            None if rul is None else rul[i:i + 1])
            for i, a in enumerate(assets)]


def predict_asset(model: Model, asset: AssetRows, values: np.ndarray) -> AssetPrediction:
    steps = len(values)
    probability = np.full(steps, np.nan)
    rul = np.full(steps, np.nan) if model.has_rul else None
    windows = rolling_windows(values, model.window)
    if len(windows):
        complete = ~np.isnan(windows).any(axis=(1, 2))
        if complete.any():
            _, prediction = model.predict_windows(windows[complete])
            ends = np.arange(model.window - 1, steps)[complete]
            probability[ends] = prediction.probability
            if rul is not None and prediction.rul_steps is not None:
                rul[ends] = prediction.rul_steps
    return AssetPrediction(asset.name, asset.rows, asset.times, probability, rul)


def alarm_metrics(model: Model, failing: list[AssetPrediction], healthy: list[AssetPrediction],
                  alarm_after: int, cooldown_steps: float, step_s: float | None,
                  min_lead_windows: float = 3.0) -> dict[str, Any]:
    """Alarm-level results: failures caught and how early, false alarms on healthy machines.

    In `failing`, each asset's last row is its failure. A failure is caught when the
    first alarm comes before that row; `recall_min_lead` counts only alarms at least
    `min_lead_windows` windows early. Healthy assets never fail: every alarm is false.
    """
    result: dict[str, Any] = {"alarm_after": alarm_after, "cooldown_steps": cooldown_steps,
                              "threshold": model.threshold}
    if failing:
        leads = [warning_lead(model, asset, alarm_after, cooldown_steps) for asset in failing]
        caught = [lead for lead in leads if lead is not None]
        min_lead = min_lead_windows * model.window
        result["failing"] = {
            "machines": len(failing),
            "caught": len(caught),
            "recall": round(len(caught) / len(failing), 4),
            "min_lead_windows": min_lead_windows,
            "recall_min_lead": round(sum(lead >= min_lead for lead in caught) / len(failing), 4),
            "lead_steps": _spread(caught),
            "lead_windows": _spread([lead / model.window for lead in caught]),
        }
    if healthy:
        false_alarms = sum(len(_alarms(model, a, alarm_after, cooldown_steps)) for a in healthy)
        steps = sum(len(a.probability) for a in healthy)
        days = steps * step_s / 86_400 if step_s else math.nan
        result["healthy"] = {
            "machines": len(healthy),
            "machine_days": round(days, 2),
            "false_alarms": false_alarms,
            "false_alarms_per_machine_day": round(false_alarms / days, 4) if days else None,
        }
    return result


def warning_lead(model: Model, asset: AssetPrediction, alarm_after: int,
                 cooldown_steps: float) -> int | None:
    """Steps from the asset's first alarm to its last row (its failure, in run-to-failure
    data); None when no alarm comes before that row."""
    last = len(asset.probability) - 1
    before = [i for i in _alarms(model, asset, alarm_after, cooldown_steps) if i < last]
    return last - before[0] if before else None


def _alarms(model: Model, asset: AssetPrediction, alarm_after: int,
            cooldown_steps: float) -> list[int]:
    # Steps without a prediction (warm-up) count as below threshold.
    probabilities = np.nan_to_num(asset.probability, nan=-1.0).tolist()
    return alarm_steps(probabilities, model.threshold, alarm_after, cooldown_steps)


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    arr = np.asarray(values, dtype=np.float64)
    return {"min": round(float(arr.min()), 2), "median": round(float(np.median(arr)), 2),
            "max": round(float(arr.max()), 2)}


def record_held_out(directory: Path, result: dict[str, Any], **sources: str | None) -> None:
    """Store held-out results in model.json under metrics.held_out (the ONNX files and
    their hashes are untouched, so a running gateway keeps its model)."""
    path = directory / METADATA_FILE
    meta = json.loads(path.read_text(encoding="utf-8"))
    meta.setdefault("metrics", {})["held_out"] = {**result, **sources}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)

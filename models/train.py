"""`millwright model train`: CSV histories -> gradient boosting -> model.onnx, rul.onnx, model.json.

Needs the `train` extra (scikit-learn, skl2onnx, onnx). Steps:
1. read the CSV, pick the inputs (every numeric column but the asset, time, label and
   excluded ones unless --features says otherwise; constant columns dropped);
2. slide windows over each asset's history with models.features (the device's code);
3. targets: failure within `horizon` steps, and for run-to-failure data the remaining
   useful life capped at `rul_cap`;
4. split by asset (no asset on both sides), fit on train assets, choose the threshold
   that maximises F1 on the validation assets;
5. export to ONNX, reload through the device's loader, check that ONNX agrees with
   scikit-learn, and record metrics, hashes and versions in model.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as dist
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from models.batch import AssetPrediction, alarm_metrics, predict_asset
from models.features import MIN_WINDOW, feature_names, rolling_features
from models.onnx_model import (
    CLASSIFIER_FILE,
    FORMAT,
    METADATA_FILE,
    ONNX_FEATURES_KEY,
    ONNX_WINDOW_KEY,
    RUL_FILE,
    load_model,
)
from models.table import AssetRows, DataError, Table, by_asset, median_step, read_table, series

# ai.onnx.ml 3 and opset 17 are what skl2onnx emits well and every onnxruntime >= 1.17 runs.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
MAX_IR_VERSION = 9


@dataclass
class TrainOptions:
    data: Path
    out: Path
    asset_col: str = "asset"
    time_col: str = "time_s"
    features: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    label_col: str | None = None
    window: int = 10
    horizon: int = 120
    rul_cap: int = 240
    validation_fraction: float = 0.25
    seed: int = 0
    estimators: int = 100
    max_depth: int = 3
    alarm_after: int = 3
    name: str = "model"
    version: str = "1"


@dataclass
class Prepared:
    """Window rows of every asset: features, targets, and which asset each row is from."""

    x: np.ndarray
    failing: np.ndarray
    rul: np.ndarray | None
    group: np.ndarray
    assets: list[AssetRows]
    values: list[np.ndarray]


@dataclass
class TrainResult:
    """The model directory, the metadata written to it, and the fitted estimators."""

    directory: Path
    metadata: dict[str, Any]
    classifier: GradientBoostingClassifier
    regressor: GradientBoostingRegressor | None


def select_inputs(table: Table, options: TrainOptions) -> tuple[list[str], list[str]]:
    """(inputs, constant columns dropped) following --features / --exclude."""
    reserved = {options.asset_col, options.time_col, options.label_col, *options.exclude}
    for column in options.exclude:
        table.require(column, "--exclude")
    if options.features:
        candidates = list(dict.fromkeys(options.features))
        for column in candidates:
            table.require(column, "--features")
            if column in reserved:
                raise DataError(f"--features: '{column}' is also the asset, time, label or an "
                                "excluded column; remove it from one of them")
            if table.numeric(column) is None:
                raise DataError(f"{table.path}: column '{column}' (from --features) is not "
                                "numeric; list only numeric columns")
    else:
        candidates = [c for c in table.columns
                      if c not in reserved and table.numeric(c) is not None]
    constant = []
    for column in candidates:
        values = table.numeric(column)
        assert values is not None
        if np.nanmax(values) == np.nanmin(values):
            constant.append(column)
    inputs = [c for c in candidates if c not in constant]
    if not inputs:
        raise DataError(f"{table.path}: no usable numeric input columns (constant: "
                        f"{', '.join(constant) or 'none'}); check --features and --exclude")
    return inputs, constant


def prepare(table: Table, inputs: list[str], options: TrainOptions) -> Prepared:
    """Feature rows and targets for every asset with at least one full window."""
    labels = None
    if options.label_col is not None:
        table.require(options.label_col, "--label-col")
        labels = table.numeric(options.label_col)
        if labels is None or not np.isin(labels[~np.isnan(labels)], (0, 1)).all():
            raise DataError(f"{table.path}: --label-col '{options.label_col}' must hold 0 or 1 "
                            "(1 = failed at that step)")
    xs: list[np.ndarray] = []
    failing: list[Any] = []
    ruls: list[Any] = []
    groups: list[Any] = []
    kept: list[Any] = []
    values: list[Any] = []
    for asset in by_asset(table, options.asset_col, options.time_col):
        data = series(table, inputs, asset.rows)
        if len(data) < options.window:
            continue
        x = rolling_features(data, options.window)
        ends = np.arange(options.window - 1, len(data))
        if labels is None:
            rul = (len(data) - 1 - ends).astype(np.float64)  # run to failure: last row failed
            soon = rul <= options.horizon
            ruls.append(np.minimum(rul, options.rul_cap))
        else:
            failed_at = np.flatnonzero(np.nan_to_num(labels[asset.rows]) == 1)
            # steps from each row to the next failure at or after it (inf when none follows)
            nxt = np.searchsorted(failed_at, ends)
            gap = np.where(nxt < len(failed_at),
                           failed_at[np.minimum(nxt, len(failed_at) - 1)] - ends, np.inf)
            soon = gap <= options.horizon
        ok = ~np.isnan(x).any(axis=1)
        xs.append(x[ok])
        failing.append(soon[ok])
        if labels is None:
            ruls[-1] = ruls[-1][ok]
        groups.append(np.full(int(ok.sum()), len(kept)))
        kept.append(asset)
        values.append(data)
    if len(kept) < 2:
        raise DataError(f"{table.path}: {len(kept)} asset(s) with at least --window "
                        f"{options.window} rows; training needs at least 2 (validation is "
                        "grouped by asset)")
    return Prepared(np.vstack(xs), np.concatenate(failing), np.concatenate(ruls) if ruls
                    else None, np.concatenate(groups), kept, values)


def split_assets(count: int, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask over assets: True for validation. At least one asset on each side."""
    rng = np.random.default_rng(seed)
    n_val = min(count - 1, max(1, round(count * fraction)))
    mask = np.zeros(count, dtype=bool)
    mask[rng.permutation(count)[:n_val]] = True
    return mask


def choose_threshold(failing: np.ndarray, probability: np.ndarray) -> float:
    """The probability cut that maximises F1 on validation rows."""
    precision, recall, thresholds = precision_recall_curve(failing, probability)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(np.clip(thresholds[int(np.argmax(f1))], 0.01, 0.99))


def to_onnx(estimator: Any, features: list[str], window: int, output: str, doc: str) -> bytes:
    """The estimator as ONNX with float32 input 'features' and the feature names embedded."""
    options = {id(estimator): {"zipmap": False}} if output == "probabilities" else None
    model = convert_sklearn(estimator, initial_types=[
        ("features", FloatTensorType([None, len(features)]))],
        options=options, target_opset=TARGET_OPSET)
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    model.doc_string = doc
    onnx.helper.set_model_props(model, {ONNX_FEATURES_KEY: ",".join(features),
                                        ONNX_WINDOW_KEY: str(window)})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def train(options: TrainOptions) -> TrainResult:
    """Train, write the model directory, and return its metadata and estimators."""
    if options.window < MIN_WINDOW or options.horizon < 1 or options.rul_cap < 1:
        raise DataError(f"--window must be >= {MIN_WINDOW}, --horizon and --rul-cap >= 1")
    started = time.perf_counter()
    table = read_table(options.data)
    inputs, constant = select_inputs(table, options)
    features = feature_names(inputs)
    data = prepare(table, inputs, options)
    validation = split_assets(len(data.assets), options.validation_fraction, options.seed)
    val_rows = validation[data.group]
    x32 = data.x.astype(np.float32)  # the device feeds float32: train on the same values
    y = data.failing
    for side, rows in (("training", ~val_rows), ("validation", val_rows)):
        if y[rows].all() or not y[rows].any():
            raise DataError(f"{table.path}: the {side} assets have "
                            f"{'only' if y[rows].all() else 'no'} rows with a failure within "
                            f"--horizon {options.horizon}; use more assets, or check "
                            "--label-col and --horizon")
    classifier = GradientBoostingClassifier(
        n_estimators=options.estimators, max_depth=options.max_depth, subsample=0.5,
        random_state=options.seed).fit(x32[~val_rows], y[~val_rows])
    p_val = classifier.predict_proba(x32[val_rows])[:, 1]
    threshold = choose_threshold(y[val_rows], p_val)
    regressor = None
    if data.rul is not None:
        regressor = GradientBoostingRegressor(
            n_estimators=options.estimators, max_depth=options.max_depth, subsample=0.5,
            random_state=options.seed).fit(x32[~val_rows], data.rul[~val_rows])
    normal = data.x[~val_rows & ~y]
    metadata: dict[str, Any] = {
        "format": FORMAT, "name": options.name, "version": options.version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "inputs": inputs, "features": features, "window": options.window,
        "horizon": options.horizon, "threshold": round(threshold, 6),
        "step_s": median_step(data.assets),
        "rul_cap": options.rul_cap if regressor is not None else None,
        "target": "run_to_failure" if options.label_col is None else "label",
        "columns": {"asset": options.asset_col, "time": options.time_col,
                    "label": options.label_col, "excluded": options.exclude,
                    "constant_dropped": constant},
        "normal": {"mean": normal.mean(axis=0).tolist(),
                   "std": np.maximum(normal.std(axis=0), 1e-9).tolist()},
        "estimator": {"type": "GradientBoosting", "n_estimators": options.estimators,
                      "max_depth": options.max_depth, "subsample": 0.5, "seed": options.seed},
        "files": {},
    }
    blobs = {CLASSIFIER_FILE: to_onnx(classifier, features, options.window, "probabilities",
                                      f"P(failure within {options.horizon} steps)")}
    metadata["files"]["classifier"] = _file_info(CLASSIFIER_FILE, blobs[CLASSIFIER_FILE],
                                                 "probabilities")
    if regressor is not None:
        blobs[RUL_FILE] = to_onnx(regressor, features, options.window, "variable",
                                  f"remaining useful life in steps, capped at {options.rul_cap}")
        metadata["files"]["rul"] = _file_info(RUL_FILE, blobs[RUL_FILE], "variable")
    _write(options.out, blobs, metadata)

    model = load_model(options.out)  # the device's loader: proves the directory is valid
    check = model.predict(data.x[val_rows])
    val_assets = np.flatnonzero(validation)
    predictions = [predict_asset(model, data.assets[i], data.values[i]) for i in val_assets]
    metadata["metrics"] = _metrics(options, data, val_rows, p_val, threshold, regressor, x32,
                                   check, model, predictions, metadata["step_s"])
    metadata["training"] = {
        "data_sha256": table.sha256, "data_file": options.data.name, "rows": table.rows,
        "assets": len(data.assets), "train_assets": int((~validation).sum()),
        "validation_assets": [data.assets[i].name for i in val_assets],
        "window_rows": len(y), "seconds": round(time.perf_counter() - started, 2),
    }
    metadata["versions"] = _versions()
    _write_json(options.out / METADATA_FILE, metadata)
    return TrainResult(options.out, metadata, classifier, regressor)


def _metrics(options: TrainOptions, data: Prepared, val_rows: np.ndarray, p_val: np.ndarray,
             threshold: float, regressor: Any, x32: np.ndarray, check: Any, model: Any,
             predictions: list[AssetPrediction], step_s: float | None) -> dict[str, Any]:
    y_val = data.failing[val_rows]
    decided = p_val >= threshold
    tp = int((decided & y_val).sum())
    metrics: dict[str, Any] = {
        "validation_rows": int(val_rows.sum()), "positive_rows": int(y_val.sum()),
        "roc_auc": round(float(roc_auc_score(y_val, p_val)), 4),
        "average_precision": round(float(average_precision_score(y_val, p_val)), 4),
        "precision": round(tp / max(int(decided.sum()), 1), 4),
        "recall": round(tp / max(int(y_val.sum()), 1), 4),
        "onnx_max_abs_diff": {"probability": float(np.abs(check.probability - p_val).max())},
    }
    metrics["f1"] = round(2 * metrics["precision"] * metrics["recall"]
                          / max(metrics["precision"] + metrics["recall"], 1e-12), 4)
    if regressor is not None and data.rul is not None:
        rul_val = data.rul[val_rows]
        rul_pred = regressor.predict(x32[val_rows])
        below = rul_val < options.rul_cap
        metrics["rul_mae_steps"] = round(float(np.abs(rul_pred[below] - rul_val[below]).mean()),
                                         2) if below.any() else None
        metrics["onnx_max_abs_diff"]["rul_steps"] = float(
            np.abs(check.rul_steps - np.clip(rul_pred, 0, None)).max())
    if options.label_col is None:
        metrics["validation_alarms"] = alarm_metrics(
            model, predictions, [], options.alarm_after, options.horizon, step_s)
    return metrics


def _file_info(name: str, blob: bytes, output: str) -> dict[str, str]:
    return {"path": name, "sha256": hashlib.sha256(blob).hexdigest(), "input": "features",
            "output": output}


def _write(out: Path, blobs: dict[str, bytes], metadata: dict[str, Any]) -> None:
    """ONNX files first, model.json last, each replaced atomically: a running gateway that
    sees a half-written directory finds the hashes disagree and keeps its current model."""
    out.mkdir(parents=True, exist_ok=True)
    for name, blob in blobs.items():
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(blob)
        os.replace(tmp, out / name)
    if RUL_FILE not in blobs:
        (out / RUL_FILE).unlink(missing_ok=True)
    _write_json(out / METADATA_FILE, metadata)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("millwright", "numpy", "scikit-learn", "skl2onnx", "onnx", "onnxruntime"):
        try:
            out[package] = dist.version(package)
        except dist.PackageNotFoundError:
            out[package] = "unknown"
    return out

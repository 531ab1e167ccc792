"""`millwright model train`: CSV -> boosting -> model.onnx, rul.onnx, model.json, report.html.

Needs the `train` extra (LightGBM, scikit-learn, onnx, matplotlib). Steps:
1. read the CSV and pick the inputs (models.dataset: numeric columns, text columns as
   categories, constant columns dropped, --exclude'd and reserved columns left out);
2. windows of `window` rows per asset with models.features (the device's code); a
   window of 1 (`--snapshot`) is one row on its own;
3. targets: failure within `horizon` steps (0: the row itself is labelled failed),
   and for run-to-failure data the remaining useful life capped at `rul_cap`;
4. split by asset (no asset on both sides); optionally search rounds, depth and rate
   with grouped CV on the training assets (models.tuning); fit with class weights;
   choose the threshold on the validation assets (best F1 or a recall target);
5. export to ONNX, reload through the device's loader, check that ONNX agrees with
   LightGBM, record metrics, hashes and versions in model.json, write report.html.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as dist
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from models.boosting import (
    SUBSAMPLE,
    Params,
    class_weights,
    fit_classifier,
    fit_regressor,
    importances,
    to_onnx,
)
from models.dataset import Columns, prepare, select_inputs, split_assets
from models.features import Layout
from models.onnx_model import (
    CLASSIFIER_FILE,
    FORMAT,
    METADATA_FILE,
    ONNX_FEATURES_KEY,
    ONNX_WINDOW_KEY,
    REPORT_FILE,
    RUL_FILE,
    load_model,
)
from models.progress import SILENT, Progress, rounds_callback
from models.scoring import choose_threshold
from models.table import DataError, Table, median_step, read_table
from models.training_metrics import Validation, metrics
from models.tuning import Grid, tune

__all__ = ["TrainOptions", "TrainResult", "choose_threshold", "split_assets", "train"]

CLASS_WEIGHTS = ("none", "sqrt", "balanced")


@dataclass
class TrainOptions:
    data: Path
    out: Path
    asset_col: str | None = "asset"
    time_col: str | None = "time_s"
    features: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    label_col: str | None = None
    snapshot: bool = False  # one row per case: window 1, horizon 0, asset and time optional
    window: int | None = None  # default 10, or 1 for a snapshot
    horizon: int | None = None  # default 120 steps, or 0 for a snapshot
    rul_cap: int = 240
    validation_fraction: float = 0.25
    seed: int = 0
    estimators: int = 100
    max_depth: int = 3
    learning_rate: float = 0.1
    class_weight: str = "none"  # or "sqrt", "balanced": docs/model.md has why not by default
    target_recall: float | None = None  # None: the threshold maximises F1
    tune: bool = False
    tune_budget_s: float = 600.0
    tune_grid: Grid = field(default_factory=Grid)
    alarm_after: int = 3
    report: bool = True
    progress: Progress = SILENT
    name: str = "model"
    version: str = "1"


@dataclass
class TrainResult:
    """The model directory, the metadata written to it, and the fitted estimators."""

    directory: Path
    metadata: dict[str, Any]
    classifier: lgb.LGBMClassifier
    regressor: lgb.LGBMRegressor | None


def _settings(options: TrainOptions, table: Table) -> tuple[Columns, int, int]:
    """The CSV's roles, the window and the horizon, or a DataError saying what to change."""
    window = options.window if options.window is not None else (1 if options.snapshot else 10)
    horizon = options.horizon if options.horizon is not None else (0 if options.snapshot
                                                                    else 120)
    if window < 1:
        raise DataError(f"--window must be >= 1 (1 = a snapshot model, each row on its own), "
                        f"got {window}")
    if options.snapshot and window != 1:
        raise DataError(f"--snapshot trains on single rows: leave out --window {window} "
                        "(or use --window without --snapshot for windows of history)")
    if horizon < 0 or options.rul_cap < 1:
        raise DataError("--horizon must be >= 0 and --rul-cap >= 1")
    if options.target_recall is not None and not 0 < options.target_recall <= 1:
        raise DataError(f"--target-recall must be in (0, 1], got {options.target_recall}")
    if options.class_weight not in CLASS_WEIGHTS:
        raise DataError(f"--class-weight must be one of {', '.join(CLASS_WEIGHTS)}, got "
                        f"'{options.class_weight}'")
    if options.snapshot and options.label_col is None:
        raise DataError("--snapshot needs --label-col: the column holding 1 for a failed "
                        "row and 0 otherwise")
    if options.label_col is not None:
        table.require(options.label_col, "--label-col")
    asset, time_col = options.asset_col, options.time_col
    if options.snapshot:  # a snapshot table may have neither: each row is then a case
        asset = asset if asset in table.text else None
        time_col = time_col if time_col in table.text else None
    columns = Columns(asset, time_col, options.label_col, tuple(options.exclude),
                      tuple(options.features) if options.features else None)
    return columns, window, horizon


def train(options: TrainOptions) -> TrainResult:
    """Train, write the model directory, and return its metadata and estimators."""
    started = time.perf_counter()
    progress = options.progress
    say = progress.note
    table = read_table(options.data)
    columns, window, horizon = _settings(options, table)
    inputs, categories, constant = select_inputs(table, columns)
    layout = Layout(tuple(inputs), window, categories)
    features = layout.names()
    data = prepare(table, columns, layout, horizon, options.rul_cap, progress)
    say(f"data: {table.rows} rows, {len(data.assets)} assets -> {len(data.failing)} "
        f"{'rows' if window == 1 else 'windows'} x {len(features)} features, "
        f"{data.failing.mean():.1%} failing")
    validation = split_assets(len(data.assets), options.validation_fraction, options.seed)
    val_rows = validation[data.group]
    x32 = data.x.astype(np.float32)  # the device feeds float32: train on the same values
    y = data.failing
    for side, rows in (("training", ~val_rows), ("validation", val_rows)):
        if y[rows].all() or not y[rows].any():
            raise DataError(f"{table.path}: the {side} assets have "
                            f"{'only' if y[rows].all() else 'no'} rows with a failure within "
                            f"--horizon {horizon}; use more assets, or check "
                            "--label-col and --horizon")
    weight = class_weights(y[~val_rows], options.class_weight)
    params = Params(options.estimators, options.max_depth, options.learning_rate)
    tuning = None
    if options.tune:
        tuning = tune(x32[~val_rows], y[~val_rows], data.group[~val_rows], weight,
                      seed=options.seed, target_recall=options.target_recall,
                      budget_s=options.tune_budget_s, grid=options.tune_grid,
                      progress=options.progress)
        params = tuning.chosen
    say(f"fitting: {params.rounds} rounds of depth {params.depth}, rate "
        f"{params.learning_rate:g}")
    with progress.bar("boosting", params.rounds, "round") as rounds:
        classifier = fit_classifier(x32[~val_rows], y[~val_rows], params, options.seed, weight,
                                    callbacks=[rounds_callback(rounds)])
    p_val = np.asarray(classifier.predict_proba(x32[val_rows]))[:, 1]
    # Stored with 6 decimals, rounded down: LightGBM gives many rows the very same
    # probability, and the cut is one of them; rounding up would drop them all.
    threshold = math.floor(choose_threshold(y[val_rows], p_val, options.target_recall)
                           * 1e6) / 1e6
    regressor = None
    if data.rul is not None:
        say("fitting: remaining useful life")
        with progress.bar("boosting RUL", params.rounds, "round") as rounds:
            regressor = fit_regressor(x32[~val_rows], data.rul[~val_rows], params,
                                      options.seed, callbacks=[rounds_callback(rounds)])
    normal = data.x[~val_rows & ~y]
    metadata: dict[str, Any] = {
        "format": FORMAT, "name": options.name, "version": options.version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "inputs": inputs, "features": features, "window": window,
        **({"categories": {k: list(v) for k, v in categories.items()}} if categories else {}),
        "horizon": horizon, "threshold": threshold,
        "threshold_rule": "best_f1" if options.target_recall is None else
                          {"target_recall": options.target_recall},
        "step_s": median_step(data.assets),
        "rul_cap": options.rul_cap if regressor is not None else None,
        "target": "run_to_failure" if options.label_col is None else "label",
        "columns": {"asset": columns.asset, "time": columns.time,
                    "label": options.label_col, "excluded": options.exclude,
                    "constant_dropped": constant},
        "normal": {"mean": normal.mean(axis=0).tolist(),
                   "std": np.maximum(normal.std(axis=0), 1e-9).tolist()},
        "estimator": {"type": "LightGBM", "n_estimators": params.rounds,
                      "max_depth": params.depth, "learning_rate": params.learning_rate,
                      "subsample": SUBSAMPLE, "class_weight": options.class_weight,
                      "seed": options.seed},
        "files": {},
    }
    if tuning is not None:
        metadata["tuning"] = tuning.record()
    embedded = {ONNX_FEATURES_KEY: ",".join(features), ONNX_WINDOW_KEY: str(window)}
    blobs = {CLASSIFIER_FILE: to_onnx(classifier, len(features), embedded,
                                      f"P(failure within {horizon} steps)")}
    metadata["files"]["classifier"] = _file_info(CLASSIFIER_FILE, blobs[CLASSIFIER_FILE],
                                                 "probabilities")
    if regressor is not None:
        blobs[RUL_FILE] = to_onnx(regressor, len(features), embedded,
                                  f"remaining useful life in steps, capped at {options.rul_cap}")
        metadata["files"]["rul"] = _file_info(RUL_FILE, blobs[RUL_FILE], "variable")
    _write(options.out, blobs, metadata)

    model = load_model(options.out)  # the device's loader: proves the directory is valid
    run = Validation(options.label_col is None, data, val_rows, validation, p_val, threshold,
                     None if regressor is None else np.asarray(regressor.predict(x32[val_rows])),
                     horizon, options.rul_cap, options.alarm_after)
    metadata["metrics"] = metrics(run, model, sum(len(b) for b in blobs.values()))
    metadata["importance"] = dict(zip(features, np.round(importances(classifier), 5).tolist(),
                                      strict=True))
    metadata["training"] = {
        "data_sha256": table.sha256, "data_file": options.data.name, "rows": table.rows,
        "columns": len(table.columns), "assets": len(data.assets),
        "train_assets": int((~validation).sum()),
        # Snapshot rows are their own assets: a count, not thousands of "row-N" names.
        **({"validation_rows": int(validation.sum())} if columns.asset is None else
           {"validation_assets": [data.assets[i].name for i in np.flatnonzero(validation)]}),
        "window_rows": len(y), "positive_share": round(float(y.mean()), 4),
        "seconds": round(time.perf_counter() - started, 2),
    }
    metadata["versions"] = _versions()
    if options.report:
        from models.report import write_report

        say("report: drawing figures")
        write_report(options.out / REPORT_FILE, metadata, run, model)
    _write_json(options.out / METADATA_FILE, metadata)
    return TrainResult(options.out, metadata, classifier, regressor)


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
    # An older model's report would describe the wrong model; train writes a new one after.
    (out / REPORT_FILE).unlink(missing_ok=True)
    _write_json(out / METADATA_FILE, metadata)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for package in ("millwright", "numpy", "scikit-learn", "lightgbm", "onnx", "onnxruntime",
                    "matplotlib"):
        try:
            out[package] = dist.version(package)
        except dist.PackageNotFoundError:
            out[package] = "unknown"
    return out


"""`millwright model train | predict | info | evaluate`: the model tooling's command line.

Bad data or a bad model directory is one line on stderr and exit status 2, never a
traceback. `train` needs the optional `train` extra; the others need only what the
device has (numpy, onnxruntime).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from models.batch import alarm_metrics, predict_assets, record_held_out
from models.describe import check, info
from models.onnx_model import Model, ModelError, load_model, resolve_model_dir
from models.table import DataError, read_table

EXIT_BAD_INPUT = 2


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except (DataError, ModelError) as exc:
        print(f"millwright model {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _csv_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="millwright model",
                                     description="Train, inspect and run failure models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model directory from CSV histories or snapshots")
    p.add_argument("--data", type=Path, required=True,
                   help="CSV: one row per asset per step, or one row per snapshot")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--asset-col", default="asset", help="column naming the asset (asset)")
    p.add_argument("--time-col", default="time_s",
                   help="column ordering the steps: numbers or ISO 8601 (time_s)")
    p.add_argument("--features", type=_csv_list, default=None, metavar="A,B,C",
                   help="input columns (default: every other numeric, non-constant column)")
    p.add_argument("--exclude", type=_csv_list, default=[], metavar="A,B",
                   help="columns never to use as inputs (ids, failure-type flags)")
    p.add_argument("--label-col", default=None,
                   help="1 = failed at that step (default: run-to-failure, each asset's last "
                        "row is its failure)")
    p.add_argument("--snapshot", action="store_true",
                   help="rows are labelled snapshots, not histories: window 1, horizon 0, "
                        "asset and time columns optional; needs --label-col")
    p.add_argument("--window", type=int, default=None,
                   help="steps per feature window (10; 1 = each row on its own)")
    p.add_argument("--horizon", type=int, default=None,
                   help="predict failure within this many steps (120; 0 with --snapshot)")
    p.add_argument("--rul-cap", type=int, default=240,
                   help="remaining useful life is capped at this many steps (240)")
    p.add_argument("--validation-fraction", type=float, default=0.25,
                   help="share of assets held out for validation (0.25)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split and the models (0)")
    p.add_argument("--estimators", type=int, default=100, help="boosting rounds (100)")
    p.add_argument("--max-depth", type=int, default=3, help="depth of each tree (3)")
    p.add_argument("--learning-rate", type=float, default=0.1, help="boosting rate (0.1)")
    p.add_argument("--tune", action="store_true",
                   help="search rounds, depth and rate with grouped cross-validation")
    p.add_argument("--tune-budget-s", type=float, default=600.0,
                   help="start no new search step after this many seconds (600)")
    p.add_argument("--class-weight", choices=("none", "sqrt", "balanced"), default="none",
                   help="weigh rare failing rows up by the square root of the healthy-to-"
                        "failing ratio (sqrt) or by the ratio (balanced); the threshold is "
                        "chosen on validation rows either way (none)")
    p.add_argument("--target-recall", type=float, default=None, metavar="R",
                   help="threshold: the highest that catches this share of failing rows on "
                        "validation (default: the best F1)")
    p.add_argument("--no-report", dest="report", action="store_false",
                   help="do not write report.html")
    p.add_argument("--progress", action="store_true",
                   help="progress bars and lines on stderr even when it is not a terminal")
    p.add_argument("--alarm-after", type=int, default=3,
                   help="evaluations above threshold before an alarm, for metrics (3)")
    p.add_argument("--name", default=None, help="model name (default: the --out folder name)")
    p.add_argument("--version", default="1", help="model version (1)")
    p.set_defaults(handler=_train)

    p = sub.add_parser("predict", help="probability, alarm and RUL for every step of a CSV")
    p.add_argument("--model", required=True, help="model directory, or 'bundled'")
    p.add_argument("--data", type=Path, required=True, help="CSV with the model's input columns")
    p.add_argument("--out", type=Path, required=True, help="CSV to write")
    p.add_argument("--last", action="store_true", help="only each asset's last step")
    p.add_argument("--asset-col", default=None, help="default: the training data's")
    p.add_argument("--time-col", default=None, help="default: the training data's")
    p.set_defaults(handler=_predict)

    p = sub.add_parser("info", help="a model's metadata and features, after checking its files")
    p.add_argument("--model", required=True, help="model directory, or 'bundled'")
    p.add_argument("--json", action="store_true", help="print model.json as it is")
    p.add_argument("--report", action="store_true",
                   help="print the path of the model's report.html (to open in a browser)")
    p.set_defaults(handler=info)

    p = sub.add_parser("check", help="check a model directory (and a CSV against it); list "
                                     "the features it uses")
    p.add_argument("--model", required=True, help="model directory, or 'bundled'")
    p.add_argument("--data", type=Path, default=None,
                   help="a CSV to check for the model's inputs and known categories")
    p.set_defaults(handler=check)

    p = sub.add_parser("evaluate", help="alarm-level results on run-to-failure and healthy CSVs")
    p.add_argument("--model", required=True, help="model directory, or 'bundled'")
    p.add_argument("--data", type=Path, default=None,
                   help="run-to-failure CSV (each asset's last row is its failure)")
    p.add_argument("--healthy", type=Path, default=None,
                   help="CSV of machines that never fail (every alarm is false)")
    p.add_argument("--alarm-after", type=int, default=3, help="as the asset's alarm_after (3)")
    p.add_argument("--cooldown-steps", type=float, default=None,
                   help="quiet steps after an alarm (default: the model's horizon)")
    p.add_argument("--min-lead-windows", type=float, default=3.0,
                   help="an alarm this many windows before failure counts as early enough (3)")
    p.add_argument("--asset-col", default=None, help="default: the training data's")
    p.add_argument("--time-col", default=None, help="default: the training data's")
    p.add_argument("--record", action="store_true",
                   help="store the results in model.json under metrics.held_out")
    p.set_defaults(handler=_evaluate)
    return parser


def _train(args: argparse.Namespace) -> int:
    try:
        from models.progress import on_terminal
        from models.train import TrainOptions, train
    except ImportError as exc:
        print(f"millwright model train: needs the training tools ({exc.name} is missing); "
              "install them with: pip install 'millwright[train]'", file=sys.stderr)
        return EXIT_BAD_INPUT
    options = TrainOptions(
        data=args.data, out=args.out, asset_col=args.asset_col, time_col=args.time_col,
        features=args.features, exclude=args.exclude, label_col=args.label_col,
        snapshot=args.snapshot, window=args.window, horizon=args.horizon,
        rul_cap=args.rul_cap, validation_fraction=args.validation_fraction, seed=args.seed,
        estimators=args.estimators, max_depth=args.max_depth, learning_rate=args.learning_rate,
        class_weight=args.class_weight, target_recall=args.target_recall, tune=args.tune,
        tune_budget_s=args.tune_budget_s, alarm_after=args.alarm_after, report=args.report,
        progress=on_terminal(args.progress),
        name=args.name or args.out.resolve().name, version=args.version,
    )
    meta = train(options).metadata
    m = meta["metrics"]
    print(f"wrote {args.out}: {len(meta['inputs'])} inputs ({', '.join(meta['inputs'])}), "
          f"{len(meta['features'])} features, threshold {meta['threshold']:.3f}")
    print(f"validation: ROC AUC {m['roc_auc']}, precision {m['precision']}, recall "
          f"{m['recall']}, F1 {m['f1']}, RUL MAE {m.get('rul_mae_steps')} steps; "
          f"trained in {meta['training']['seconds']} s")
    if "tuning" in meta:
        t = meta["tuning"]
        print(f"tuning: chose {t['chosen']['rounds']} rounds, depth {t['chosen']['depth']}, "
              f"rate {t['chosen']['learning_rate']} ({t['score']} {t['cv_score']} in "
              f"{t['folds']}-fold grouped CV; default {t['default_cv_score']})")
    if meta["columns"]["constant_dropped"]:
        print(f"dropped constant columns: {', '.join(meta['columns']['constant_dropped'])}")
    if args.report:
        print(f"report: {args.out / 'report.html'}")
    return 0


def _columns(args: argparse.Namespace, model: Model) -> tuple[str | None, str | None]:
    """The asset and time columns: given, or the training data's (None: it had none)."""
    columns = model.metadata.get("columns", {})
    return (args.asset_col or columns.get("asset", "asset"),
            args.time_col or columns.get("time", "time_s"))


def _predict(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    table = read_table(args.data)
    asset_col, time_col = _columns(args, model)
    predictions = predict_assets(model, table, asset_col, time_col)
    header = [asset_col or "row", *([time_col] if time_col else []), "probability", "alarm",
              "rul_steps"]
    if model.step_s:
        header.append("rul_s")
    written = 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for asset in predictions:
            indexes = range(len(asset.probability))
            for i in (indexes[-1:] if args.last else indexes):
                p = float(asset.probability[i])
                rul = float(asset.rul_steps[i]) if asset.rul_steps is not None else math.nan
                row = [asset.name, *([table.text[time_col][asset.rows[i]]] if time_col else []),
                       _fmt(p, 6), "" if math.isnan(p) else int(p >= model.threshold),
                       _fmt(rul, 1)]
                if model.step_s:
                    row.append(_fmt(rul * model.step_s, 0))
                writer.writerow(row)
                written += 1
    print(f"wrote {written} rows for {len(predictions)} assets to {args.out}")
    return 0


def _fmt(value: float, digits: int) -> str:
    return "" if math.isnan(value) else f"{value:.{digits}f}"


def _evaluate(args: argparse.Namespace) -> int:
    if args.data is None and args.healthy is None:
        print("millwright model evaluate: give --data (run-to-failure) and/or --healthy",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    model = load_model(args.model)
    asset_col, time_col = _columns(args, model)
    failing = predict_assets(model, read_table(args.data), asset_col, time_col) \
        if args.data else []
    healthy = predict_assets(model, read_table(args.healthy), asset_col, time_col) \
        if args.healthy else []
    cooldown = args.cooldown_steps if args.cooldown_steps is not None else model.horizon
    result = alarm_metrics(model, failing, healthy, args.alarm_after, cooldown, model.step_s,
                           args.min_lead_windows)
    print(json.dumps(result, indent=2))
    if args.record:
        record_held_out(resolve_model_dir(args.model), result,
                        data=args.data.name if args.data else None,
                        healthy_data=args.healthy.name if args.healthy else None)
    return 0

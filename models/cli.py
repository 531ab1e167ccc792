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
from models.onnx_model import METADATA_FILE, Model, ModelError, load_model, resolve_model_dir
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

    p = sub.add_parser("train", help="train a model directory from CSV histories")
    p.add_argument("--data", type=Path, required=True, help="CSV: one row per asset per step")
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
    p.add_argument("--window", type=int, default=10, help="steps per feature window (10)")
    p.add_argument("--horizon", type=int, default=120,
                   help="predict failure within this many steps (120)")
    p.add_argument("--rul-cap", type=int, default=240,
                   help="remaining useful life is capped at this many steps (240)")
    p.add_argument("--validation-fraction", type=float, default=0.25,
                   help="share of assets held out for validation (0.25)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split and the models (0)")
    p.add_argument("--estimators", type=int, default=100, help="boosting rounds (100)")
    p.add_argument("--max-depth", type=int, default=3, help="depth of each tree (3)")
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

    p = sub.add_parser("info", help="a model's metadata, after checking its files")
    p.add_argument("--model", required=True, help="model directory, or 'bundled'")
    p.add_argument("--json", action="store_true", help="print model.json as it is")
    p.set_defaults(handler=_info)

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
        from models.train import TrainOptions, train
    except ImportError as exc:
        print(f"millwright model train: needs the training tools ({exc.name} is missing); "
              "install them with: pip install 'millwright[train]'", file=sys.stderr)
        return EXIT_BAD_INPUT
    options = TrainOptions(
        data=args.data, out=args.out, asset_col=args.asset_col, time_col=args.time_col,
        features=args.features, exclude=args.exclude, label_col=args.label_col,
        window=args.window, horizon=args.horizon, rul_cap=args.rul_cap,
        validation_fraction=args.validation_fraction, seed=args.seed,
        estimators=args.estimators, max_depth=args.max_depth, alarm_after=args.alarm_after,
        name=args.name or args.out.resolve().name, version=args.version,
    )
    meta = train(options).metadata
    m = meta["metrics"]
    print(f"wrote {args.out}: {len(meta['inputs'])} inputs ({', '.join(meta['inputs'])}), "
          f"{len(meta['features'])} features, threshold {meta['threshold']:.3f}")
    print(f"validation: ROC AUC {m['roc_auc']}, precision {m['precision']}, recall "
          f"{m['recall']}, RUL MAE {m.get('rul_mae_steps')} steps; "
          f"trained in {meta['training']['seconds']} s")
    if meta["columns"]["constant_dropped"]:
        print(f"dropped constant columns: {', '.join(meta['columns']['constant_dropped'])}")
    return 0


def _columns(args: argparse.Namespace, model: Model) -> tuple[str, str]:
    columns = model.metadata.get("columns", {})
    return (args.asset_col or columns.get("asset", "asset"),
            args.time_col or columns.get("time", "time_s"))


def _predict(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    table = read_table(args.data)
    asset_col, time_col = _columns(args, model)
    predictions = predict_assets(model, table, asset_col, time_col)
    header = [asset_col, time_col, "probability", "alarm", "rul_steps"]
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
                row = [asset.name, table.text[time_col][asset.rows[i]],
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


def _info(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    meta = model.metadata
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    step = meta.get("step_s")
    def span(steps: int) -> str:
        if not step:
            return ""
        seconds = steps * step
        return f" ({seconds / 60:.3g} min)" if seconds < 3600 else f" ({seconds / 3600:.3g} h)"

    lines = [
        f"model      {model.name} version {model.version} ({model.directory})",
        f"status     ok: files match {METADATA_FILE}",
        f"inputs     {', '.join(model.inputs)}",
        f"features   {len(model.features)} ({', '.join(model.features[:4])}, ...)",
        f"window     {model.window} steps{span(model.window)}",
        f"horizon    {model.horizon} steps{span(model.horizon)}",
        f"threshold  {model.threshold:.4f}",
        "rul        " + (f"yes, capped at {meta.get('rul_cap')} steps" if model.has_rul else "no"),
    ]
    for role, info in meta["files"].items():
        lines.append(f"file       {role}: {info['path']} sha256 {info['sha256'][:16]}...")
    metrics = meta.get("metrics", {})
    for key in ("roc_auc", "average_precision", "precision", "recall", "f1", "rul_mae_steps"):
        if key in metrics:
            lines.append(f"metric     {key} = {metrics[key]}")
    held = metrics.get("held_out", {})
    if "failing" in held:
        lead = held["failing"]["lead_steps"] or {}
        lines.append(f"held out   recall {held['failing']['recall']} of "
                     f"{held['failing']['machines']} failures; warning before failure "
                     f"(steps): min {lead.get('min')}, median {lead.get('median')}, "
                     f"max {lead.get('max')}")
    if "healthy" in held:
        lines.append(f"held out   {held['healthy']['false_alarms_per_machine_day']} false "
                     f"alarms per healthy machine-day ({held['healthy']['machine_days']} days)")
    training = meta.get("training", {})
    if training:
        lines.append(f"trained on {training.get('data_file')} sha256 "
                     f"{str(training.get('data_sha256'))[:16]}..., {training.get('assets')} "
                     f"assets, {training.get('seconds')} s")
    print("\n".join(lines))
    return 0


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

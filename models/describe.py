"""`millwright model info | check`: what a model directory holds and the features it uses.

Both load the directory through the device's own loader first, so "ok" means the gateway
would accept it. `check --data` also reads a CSV the way `predict` would and says which
of the model's inputs it lacks and which category values the model never saw (they are
encoded as "none of the known categories").
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from models.onnx_model import BUNDLED_DIR, METADATA_FILE, REPORT_FILE, Model, load_model
from models.table import DataError, read_table


def _wrapped(label: str, items: list[str]) -> list[str]:
    text = textwrap.wrap(", ".join(items), width=88) or [""]
    return [f"{label:<11}{text[0]}", *(f"{'':<11}{line}" for line in text[1:])]


def feature_lines(model: Model) -> list[str]:
    """The inputs, their categories, and every feature the model computes, in order."""
    meta = model.metadata
    lines = _wrapped("inputs", model.inputs)
    for name, values in model.categories.items():
        lines.append(f"{'category':<11}{name}: {', '.join(values)} (one-hot; other values: "
                     "none of them)")
    shape = "snapshot: each reading on its own" if model.window == 1 else \
        f"window statistics over {model.window} readings"
    lines += _wrapped("features", [f"{len(model.features)} ({shape})"])
    lines += _wrapped("", model.features)
    columns = meta.get("columns", {})
    if columns.get("excluded"):
        lines += _wrapped("excluded", list(columns["excluded"]))
    if columns.get("constant_dropped"):
        lines += _wrapped("constant", list(columns["constant_dropped"]))
    return lines


def info(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    meta = model.metadata
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    report = model.directory / REPORT_FILE
    if args.report:
        if not report.is_file():
            raise DataError(f"{report}: no report; `millwright model train` writes one "
                            "beside the model (unless --no-report)")
        print(report.resolve())
        return 0
    step = meta.get("step_s")

    def span(steps: int) -> str:
        if not step:
            return ""
        seconds = steps * step
        return f" ({seconds / 60:.3g} min)" if seconds < 3600 else f" ({seconds / 3600:.3g} h)"

    estimator = meta.get("estimator", {})
    lines = [
        f"model      {model.name} version {model.version} ({model.directory})",
        f"status     ok: files match {METADATA_FILE}",
        *feature_lines(model),
        f"window     {model.window} steps{span(model.window)}",
        f"horizon    {model.horizon} steps{span(model.horizon)}",
        f"threshold  {model.threshold:.4f} ({_rule(meta.get('threshold_rule', 'best_f1'))})",
        "rul        " + (f"yes, capped at {meta.get('rul_cap')} steps" if model.has_rul else "no"),
        f"estimator  {estimator.get('type')}: {estimator.get('n_estimators')} rounds, depth "
        f"{estimator.get('max_depth')}, rate {estimator.get('learning_rate', 0.1)}"
        + (" (tuned)" if "tuning" in meta else ""),
    ]
    for role, file in meta["files"].items():
        lines.append(f"file       {role}: {file['path']} sha256 {file['sha256'][:16]}...")
    metrics = meta.get("metrics", {})
    for key in ("roc_auc", "average_precision", "precision", "recall", "f1", "rul_mae_steps",
                "latency_us_per_row", "onnx_bytes"):
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
    if report.is_file():
        lines.append(f"report     {report}")
    if model.directory.resolve() == BUNDLED_DIR.resolve():
        lines.append(BUNDLED_NOTE)
    print("\n".join(lines))
    return 0


BUNDLED_NOTE = ("note       the bundled model was trained on simulated machines only "
                "(simulators/machine.py):\n"
                "           its alarms on your machines are a demonstration, not a prediction; "
                "train one on\n"
                "           their histories with `millwright model train` (docs/model.md, "
                "\"Train on your own data\")")


def _rule(rule: object) -> str:
    if isinstance(rule, dict) and "target_recall" in rule:
        return f"the highest reaching recall {rule['target_recall']} on validation"
    return "the best F1 on validation"


def check(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    print(f"{model.directory}: ok, {model.name} version {model.version}")
    print("\n".join(feature_lines(model)))
    if args.data is None:
        return 0
    table = read_table(args.data)
    missing = [name for name in model.inputs if name not in table.text]
    if missing:
        raise DataError(f"{args.data}: lacks the model's input column(s) {', '.join(missing)}; "
                        "rename the columns or train on data that has them")
    unseen = []
    for name, known in model.categories.items():
        values = {v.strip() for v in table.text[name]} - set(known) - {""}
        if values:
            unseen.append(f"'{name}' has values the model never saw: "
                          f"{', '.join(sorted(values)[:5])}")
    for line in unseen:
        print(f"warning: {args.data}: {line}", file=sys.stderr)
    print(f"{args.data}: {table.rows} rows hold every input of the model")
    return 0

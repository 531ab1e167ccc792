"""report.html: the evidence for trusting a trained model, in one self-contained file.

Written beside model.json by `millwright model train`. Figures are PNGs embedded as
data URIs, so the file opens offline, can be mailed, and travels with the model. Every
number in its tables is read from the metadata written to model.json in the same run
(tagged `data-key="..."`, so a test can compare them); the figures are drawn from the
validation rows and assets.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from models import report_figures as figures
from models.onnx_model import Model
from models.training_metrics import Validation


def _img(key: str, png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img id="fig-{key}" alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}'
            "</figcaption></figure>")


def _rows(pairs: list[tuple[str, str, Any]]) -> str:
    """Table rows of (label, key, value): the key tags the cell for tests."""
    return "".join(f'<tr><th>{html.escape(label)}</th><td data-key="{key}">'
                   f"{html.escape(str(value))}</td></tr>" for label, key, value in pairs)


def _figures(meta: dict[str, Any], run: Validation, model: Model) -> list[str]:
    m = meta["metrics"]
    out = [
        _img("confusion", figures.confusion(m["confusion"], model.threshold),
             "Validation rows at the chosen threshold."),
        _img("precision-recall", figures.precision_recall(
            run.failing, run.probability, model.threshold, m["precision"], m["recall"]),
            "Precision against recall; the dot is the chosen threshold."),
    ]
    if run.rul is not None and run.rul_predicted is not None:
        out.append(_img("rul", figures.rul(run.rul, run.rul_predicted, run.rul_cap),
                        "Predicted against true remaining useful life (validation rows)."))
    if "warning_steps" in m:
        names = list(m["warning_steps"])
        out.append(_img("warning", figures.warning_times(
            names, [m["warning_steps"][n] for n in names], model.step_s, model.window),
            f"First alarm before each validation failure (alarm rule: {run.alarm_after} "
            "evaluations in a row)."))
    if "false_alarms" in m:
        alarms = m["false_alarms"]
        per = alarms["per_asset"]
        out.append(_img("false-alarms", figures.false_alarms(
            [a["asset"] for a in per],
            [a["false_alarms"] / a["days"] if a["days"] else 0.0 for a in per],
            alarms["false_alarms_per_asset_day"] or 0.0),
            "Alarms with no failure within the horizon, per asset-day."))
    names = list(meta["importance"])
    out.append(_img("importance", figures.importances(
        names, [meta["importance"][n] for n in names]),
        "Share of the classifier's split gain per feature."))
    if "tuning" in meta:
        candidates = meta["tuning"]["candidates"]
        chosen = meta["tuning"]["chosen"]
        index = next(i for i, c in enumerate(candidates)
                     if (c["rounds"], c["depth"], c["learning_rate"])
                     == (chosen["rounds"], chosen["depth"], chosen["learning_rate"]))
        out.append(_img("tuning", figures.tuning(
            [c["rounds"] * c["depth"] for c in candidates],
            [c["cv_score"] for c in candidates], index, meta["tuning"]["score"]),
            "Every candidate of the search: grouped CV score against device cost."))
    return out


def _tables(meta: dict[str, Any]) -> str:
    training, m, est = meta["training"], meta["metrics"], meta["estimator"]
    data = [("file", "data_file", training["data_file"]),
            ("SHA-256", "data_sha256", training["data_sha256"]),
            ("rows x columns", "shape", f"{training['rows']} x {training['columns']}"),
            ("assets (training / validation)", "assets",
             f"{training['assets']} ({training['train_assets']} / "
             f"{training.get('validation_rows', len(training.get('validation_assets', [])))})"),
            ("window rows", "window_rows", training["window_rows"]),
            ("failing share", "positive_share", training["positive_share"])]
    model = [("inputs", "inputs", ", ".join(meta["inputs"])),
             ("categorical", "categories", "; ".join(
                 f"{k}: {', '.join(v)}" for k, v in meta.get("categories", {}).items()) or "none"),
             ("excluded columns", "excluded", ", ".join(meta["columns"]["excluded"]) or "none"),
             ("features", "feature_count", len(meta["features"])),
             ("window / horizon (steps)", "window_horizon",
              f"{meta['window']} / {meta['horizon']}"),
             ("threshold", "threshold", meta["threshold"]),
             ("estimator", "estimator", f"{est['type']}, {est['n_estimators']} rounds, depth "
              f"{est['max_depth']}, rate {est['learning_rate']}, class weight "
              f"{est['class_weight']}"),
             ("ONNX size (bytes)", "onnx_bytes", m["onnx_bytes"]),
             ("one row on the device (µs)", "latency_us_per_row", m["latency_us_per_row"])]
    c = m["confusion"]
    scores = [("validation rows (failing)", "validation_rows",
               f"{m['validation_rows']} ({m['positive_rows']})"),
              ("ROC AUC", "roc_auc", m["roc_auc"]),
              ("average precision", "average_precision", m["average_precision"]),
              ("precision", "precision", m["precision"]), ("recall", "recall", m["recall"]),
              ("F1", "f1", m["f1"]),
              ("TP / FP / FN / TN", "confusion", f"{c['tp']} / {c['fp']} / {c['fn']} / "
                                                 f"{c['tn']}")]
    if m.get("rul_mae_steps") is not None:
        scores.append(("RUL mean absolute error (steps)", "rul_mae_steps", m["rul_mae_steps"]))
    if "false_alarms" in m:
        scores.append(("false alarms per asset-day", "false_alarms_per_asset_day",
                       m["false_alarms"]["false_alarms_per_asset_day"]))
    else:
        scores.append(("false alarms per asset-day", "false_alarms_per_asset_day",
                       "n/a: the table has no time step (snapshots); see the confusion matrix"))
    out = (f"<h2>Data</h2><table>{_rows(data)}</table><h2>Model</h2><table>{_rows(model)}"
           f"</table><h2>Validation (assets never trained on)</h2><table>{_rows(scores)}"
           "</table>")
    if "tuning" in meta:
        t = meta["tuning"]
        best = sorted(t["candidates"], key=lambda x: -x["cv_score"])[:10]
        rows = "".join(f"<tr><td>{x['rounds']}</td><td>{x['depth']}</td>"
                       f"<td>{x['learning_rate']}</td><td>{x['cv_score']}</td>"
                       f"<td>{x['cv_average_precision']}</td></tr>" for x in best)
        out += (f"<h2>Tuning</h2><p>{len(t['candidates'])} candidates, {t['folds']}-fold "
                f"cross-validation grouped by asset, {t['seconds']} s; score {t['score']}: "
                f'chosen <span data-key="tuning_cv_score">{t["cv_score"]}</span>, default '
                f'<span data-key="default_cv_score">{t["default_cv_score"]}</span>.</p>'
                "<table><tr><th>rounds</th><th>depth</th><th>rate</th><th>CV score</th>"
                f"<th>CV average precision</th></tr>{rows}</table>")
    return out


STYLE = ("body{font-family:sans-serif;max-width:1000px;margin:auto;padding:1em;color:#222}"
         "table{border-collapse:collapse;margin-bottom:1em}th,td{border:1px solid #ccc;"
         "padding:3px 8px;text-align:left;font-size:14px}figure{display:inline-block;"
         "margin:0.5em}figcaption{font-size:13px;color:#555;max-width:500px}")


def write_report(path: Path, meta: dict[str, Any], run: Validation, model: Model) -> None:
    """Write report.html for a model whose metadata (with metrics) is `meta`."""
    title = f"Millwright model {meta['name']} version {meta['version']}"
    body = (f"<h1>{html.escape(title)}</h1><p>Trained {html.escape(meta['created'])}; "
            f"alarms when P(failure within {meta['horizon']} steps) &ge; "
            f"{meta['threshold']}.</p>" + _tables(meta)
            + "<h2>Figures</h2>" + "".join(_figures(meta, run, model)))
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>'
            f"{html.escape(title)}</title><style>{STYLE}</style></head><body>{body}"
            "</body></html>\n")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)


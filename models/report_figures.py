"""The training report's figures, drawn with matplotlib (Agg: no display needed) as PNG bytes.

Each function takes plain arrays and returns one PNG, so the report module only
arranges them. Small figures at a modest resolution keep report.html near 100-300 kB.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: a training machine or CI has no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import precision_recall_curve  # noqa: E402

SIZE = (5.6, 3.6)
DPI = 90


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    return buffer.getvalue()


def confusion(counts: dict[str, int], threshold: float) -> bytes:
    """The 2x2 validation confusion matrix at the chosen threshold."""
    cells = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])
    figure, axes = plt.subplots(figsize=(4.2, 3.6))
    axes.imshow(cells, cmap="Blues")
    for (i, j), value in np.ndenumerate(cells):
        axes.text(j, i, f"{value:,}", ha="center", va="center",
                  color="white" if value > cells.max() / 2 else "black", fontsize=12)
    axes.set_xticks([0, 1], ["no alarm", "alarm"])
    axes.set_yticks([0, 1], ["healthy", "failing"])
    axes.set_xlabel(f"predicted (p >= {threshold:.3f})")
    axes.set_ylabel("actual (validation rows)")
    axes.set_title("Confusion matrix at the threshold")
    return _png(figure)


def precision_recall(failing: np.ndarray, probability: np.ndarray, threshold: float,
                     precision_at: float, recall_at: float) -> bytes:
    """The PR curve of the validation rows with the chosen threshold marked."""
    precision, recall, _ = precision_recall_curve(failing, probability)
    figure, axes = plt.subplots(figsize=SIZE)
    axes.plot(recall, precision, color="tab:blue", lw=1.5)
    axes.plot([recall_at], [precision_at], "o", color="tab:red", ms=8,
              label=f"threshold {threshold:.3f}: precision {precision_at:.3f}, "
                    f"recall {recall_at:.3f}")
    axes.axhline(failing.mean(), color="grey", lw=0.8, ls="--", label="chance")
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0, 1.01)
    axes.set_ylim(0, 1.01)
    axes.legend(loc="lower left", fontsize=8)
    axes.set_title("Precision-recall on validation rows")
    return _png(figure)


def rul(true_steps: np.ndarray, predicted_steps: np.ndarray, cap: int) -> bytes:
    """Predicted against true remaining useful life on validation rows."""
    figure, axes = plt.subplots(figsize=SIZE)
    axes.hexbin(true_steps, predicted_steps, gridsize=40, cmap="viridis", mincnt=1, bins="log")
    axes.plot([0, cap], [0, cap], color="tab:red", lw=1, label="perfect")
    axes.set_xlabel("true RUL (steps, capped)")
    axes.set_ylabel("predicted RUL (steps)")
    axes.legend(loc="upper left", fontsize=8)
    axes.set_title("Remaining useful life, validation rows")
    return _png(figure)


def warning_times(assets: Sequence[str], steps: Sequence[int | None], step_s: float | None,
                  window: int) -> bytes:
    """How long before each validation failure the first alarm came (missed: a red x)."""
    scale, unit = (step_s / 3600, "hours") if step_s else (1.0, "steps")
    caught = [(s or 0) * scale for s in steps]
    figure, axes = plt.subplots(figsize=(SIZE[0], max(2.4, 0.22 * len(assets) + 1)))
    positions = np.arange(len(assets))
    axes.barh(positions, caught, color="tab:green")
    missed = [i for i, s in enumerate(steps) if s is None]
    if missed:
        axes.plot([0] * len(missed), missed, "x", color="tab:red", ms=8, label="missed")
    axes.axvline(3 * window * scale, color="grey", ls="--", lw=0.8, label="3 windows")
    axes.set_yticks(positions, assets, fontsize=7)
    axes.set_xlabel(f"warning before failure ({unit})")
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title("Warning time before each validation failure")
    return _png(figure)


def false_alarms(assets: Sequence[str], per_day: Sequence[float], overall: float) -> bytes:
    """False alarms per asset-day for each validation asset."""
    figure, axes = plt.subplots(figsize=(SIZE[0], max(2.4, 0.22 * len(assets) + 1)))
    positions = np.arange(len(assets))
    axes.barh(positions, per_day, color="tab:orange")
    axes.axvline(overall, color="black", lw=1, ls="--", label=f"all: {overall:.3g} per day")
    axes.set_yticks(positions, assets, fontsize=7)
    axes.set_xlabel("false alarms per asset-day")
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title("False alarms per asset-day, validation assets")
    return _png(figure)


def importances(names: Sequence[str], shares: Sequence[float], top: int = 15) -> bytes:
    """The features carrying the most split gain."""
    order = np.argsort(shares)[::-1][:top][::-1]
    figure, axes = plt.subplots(figsize=(SIZE[0], 0.25 * len(order) + 1.2))
    axes.barh(np.arange(len(order)), [shares[i] for i in order], color="tab:purple")
    axes.set_yticks(np.arange(len(order)), [names[i] for i in order], fontsize=7)
    axes.set_xlabel("share of split gain")
    axes.set_title(f"Feature importance (top {len(order)} of {len(names)})")
    return _png(figure)


def tuning(visits: Sequence[int], scores: Sequence[float], chosen: int, rule: str) -> bytes:
    """Every searched candidate's CV score against its cost on the device."""
    figure, axes = plt.subplots(figsize=SIZE)
    axes.scatter(visits, scores, s=14, color="tab:blue", label="candidates")
    axes.scatter([visits[chosen]], [scores[chosen]], s=60, color="tab:red", label="chosen")
    axes.set_xlabel("tree nodes visited per row (rounds x depth)")
    axes.set_ylabel(f"grouped CV {rule}")
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title("Tuning: score against cost")
    return _png(figure)

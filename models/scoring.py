"""Scores of probabilities against failures: the threshold rule, F1, precision at a recall.

The threshold is chosen on validation rows, either for the best F1 or, with a recall
target ("catch at least 95 % of failing rows"), as the highest cut that still reaches
it: the fewest false alarms for that recall. The --tune search (`score`) compares models
on a related but not identical measure, taken over every cut rather than at one: the
best F1, or the best precision among the cuts that reach the recall target (the chosen
threshold is the highest such cut, not necessarily the most precise, and is clipped to
[0.01, 0.99]), so a tuning score can differ from the metrics at the stored threshold.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve

#: Thresholds stay inside (0, 1): model.json requires it and the device compares with >=.
LOWEST, HIGHEST = 0.01, 0.99


def _curve(failing: np.ndarray, probability: np.ndarray
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    precision, recall, thresholds = precision_recall_curve(failing, probability)
    return precision[:-1], recall[:-1], thresholds  # the last point has no threshold


def choose_threshold(failing: np.ndarray, probability: np.ndarray,
                     target_recall: float | None = None) -> float:
    """The probability cut that maximises F1, or the highest one reaching `target_recall`."""
    precision, recall, thresholds = _curve(failing, probability)
    if target_recall is None:
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        cut = thresholds[int(np.argmax(f1))]
    else:
        reaching = np.flatnonzero(recall >= target_recall)
        cut = thresholds[reaching[-1]] if reaching.size else thresholds[0]
    return float(np.clip(cut, LOWEST, HIGHEST))


def best_f1(failing: np.ndarray, probability: np.ndarray) -> float:
    precision, recall, _ = _curve(failing, probability)
    return float((2 * precision * recall / np.maximum(precision + recall, 1e-12)).max())


def precision_at_recall(failing: np.ndarray, probability: np.ndarray, target: float) -> float:
    precision, recall, _ = _curve(failing, probability)
    reaching = recall >= target
    return float(precision[reaching].max()) if reaching.any() else 0.0


def average_precision(failing: np.ndarray, probability: np.ndarray) -> float:
    return float(average_precision_score(failing, probability))


def score(failing: np.ndarray, probability: np.ndarray, target_recall: float | None) -> float:
    """What the search maximises: best F1, or precision at the recall target."""
    if target_recall is None:
        return best_f1(failing, probability)
    return precision_at_recall(failing, probability, target_recall)


def at_threshold(failing: np.ndarray, probability: np.ndarray,
                 threshold: float) -> dict[str, Any]:
    """Confusion counts and precision, recall, F1 when alarming at p >= threshold."""
    decided = probability >= threshold
    tp = int((decided & failing).sum())
    fp = int((decided & ~failing).sum())
    fn = int((~decided & failing).sum())
    tn = int((~decided & ~failing).sum())
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
            "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4)}

"""model.json read and checked: every field the device relies on, or a ModelError naming it.

Numpy-free and onnxruntime-free: `models.onnx_model` loads the sessions after this says
the metadata is sound. The feature list must be the one `models.features.Layout`
computes from the inputs, the window and the categorical inputs' categories.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from models.features import MIN_WINDOW, Layout

FORMAT = "millwright-model/1"
METADATA_FILE = "model.json"
CLASSIFIER_FILE = "model.onnx"
RETRAIN = "retrain with `millwright model train`, or copy the model directory again as a whole"


class ModelError(ValueError):
    """A model directory that cannot be used; the message names the file and the fix."""


def layout_of(meta: dict[str, Any]) -> Layout:
    """The feature layout a checked model.json describes."""
    categories = {name: tuple(values) for name, values in (meta.get("categories") or {}).items()}
    return Layout(tuple(meta["inputs"]), meta["window"], categories)


def read_metadata(directory: Path) -> dict[str, Any]:
    """model.json, with every field the device relies on checked."""
    path = directory / METADATA_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing; a model directory holds {CLASSIFIER_FILE} and "
                         f"{METADATA_FILE}, {RETRAIN}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"{path}: not readable JSON ({exc}); {RETRAIN}") from None
    except RecursionError:  # json's parser recurses once per nested list or object
        raise ModelError(f"{path}: not readable JSON (nested too deeply); {RETRAIN}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelError(f"{path}: not a Millwright model (format must be '{FORMAT}'); {RETRAIN}")

    def bad(field: str, why: str) -> ModelError:
        return ModelError(f"{path}: '{field}' {why}; {RETRAIN}")

    for key in ("name", "version"):
        if not isinstance(meta.get(key), str | int) or not str(meta.get(key)):
            raise bad(key, "must be a non-empty string")
    inputs = meta.get("inputs")
    # Types first: set() needs hashable items, and JSON lists and objects are not.
    if (not isinstance(inputs, list) or not inputs
            or not all(isinstance(i, str) and i for i in inputs)
            or len(set(inputs)) != len(inputs)):
        raise bad("inputs", "must be a non-empty list of distinct names")
    window = meta.get("window")
    if not isinstance(window, int) or isinstance(window, bool) or window < MIN_WINDOW:
        raise bad("window", f"must be an integer >= {MIN_WINDOW}")
    horizon = meta.get("horizon")
    # 0: the label says the row itself is failed (snapshot tables)
    if not isinstance(horizon, int) or isinstance(horizon, bool) or horizon < 0:
        raise bad("horizon", "must be an integer >= 0")
    threshold = meta.get("threshold")
    if not isinstance(threshold, int | float) or not 0.0 < threshold < 1.0:
        raise bad("threshold", "must be a number between 0 and 1")
    step_s = meta.get("step_s")
    if step_s is not None and (not isinstance(step_s, int | float) or not step_s > 0):
        raise bad("step_s", "must be a positive number or null")
    categories = meta.get("categories") or {}
    if not isinstance(categories, dict) or any(
        name not in inputs or not isinstance(values, list) or not values
        or not all(isinstance(v, str) and "," not in v for v in values)
        or len(set(values)) != len(values)
        for name, values in categories.items()
    ):
        raise bad("categories", "must map input names to lists of distinct category texts "
                  "without commas")
    expected = layout_of(meta).names()
    if meta.get("features") != expected:
        raise bad("features", "does not match the features this version computes from "
                  f"'inputs' ({', '.join(expected[:3])}, ...)")
    normal = meta.get("normal")
    if not isinstance(normal, dict) or any(
        not isinstance(normal.get(k), list) or len(normal[k]) != len(expected)
        or not all(isinstance(v, int | float) and math.isfinite(v) for v in normal[k])
        for k in ("mean", "std")
    ) or any(v <= 0 for v in normal["std"]):
        raise bad("normal", f"must hold 'mean' and positive 'std' lists of {len(expected)} numbers")
    files = meta.get("files")
    if not isinstance(files, dict) or "classifier" not in files:
        raise bad("files", "must describe at least the 'classifier' file")
    for role, info in files.items():
        if role not in ("classifier", "rul") or not isinstance(info, dict) or not all(
            isinstance(info.get(k), str) and info.get(k) for k in ("path", "sha256", "input",
                                                                   "output")
        ):
            raise bad(f"files.{role}", "must be 'classifier' or 'rul' with path, sha256, "
                      "input and output")
        if not _plain_file_name(info["path"]):
            raise bad(f"files.{role}.path", "must be a file name inside the model directory")
    return meta


def _plain_file_name(name: str) -> bool:
    """A name for a file directly inside a directory, that the file system can open."""
    if Path(name).name != name or name in (".", "..") or "\0" in name:
        return False
    try:
        os.fsencode(name)  # a lone surrogate from a JSON \udXXX escape is not encodable
    except UnicodeEncodeError:
        return False
    return True



"""A model directory (model.onnx, optional rul.onnx, model.json), checked and run in onnxruntime.

This is the only code that runs a model, on the device and in `millwright model
predict` alike. It needs numpy and onnxruntime only (no training libraries).
Loading refuses a directory whose files do not match their metadata: the SHA-256 of
each ONNX file, the feature names embedded in the ONNX file, its input and output
shapes, and the feature list implied by the inputs (models.features). Every refusal
is a `ModelError` whose message names the file and the fix.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from models.features import Layout
from models.metadata import (
    CLASSIFIER_FILE,
    FORMAT,
    METADATA_FILE,
    RETRAIN,
    ModelError,
    layout_of,
    read_metadata,
)

__all__ = ["CLASSIFIER_FILE", "FORMAT", "METADATA_FILE", "RETRAIN", "Model", "ModelError",
           "Prediction", "load_model", "read_metadata", "resolve_model_dir", "session_options"]

RUL_FILE = "rul.onnx"
#: The training report `model train` writes beside the model (unless --no-report).
REPORT_FILE = "report.html"
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
#: Key of the ONNX metadata property holding the comma-joined feature names.
ONNX_FEATURES_KEY = "millwright.features"
#: Key of the ONNX metadata property holding the window length the model was trained on.
ONNX_WINDOW_KEY = "millwright.window"
def resolve_model_dir(model: str | Path) -> Path:
    """The directory an asset's `model` names: "bundled" is the packaged model."""
    return BUNDLED_DIR if str(model) == "bundled" else Path(model)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_signature(directory: Path) -> tuple[tuple[str, int, int, int], ...]:
    """(name, inode, mtime_ns, size) of the model files: changes when any is replaced."""
    out = []
    base = os.fspath(directory)
    for name in (METADATA_FILE, CLASSIFIER_FILE, RUL_FILE):
        try:
            st = os.stat(os.path.join(base, name))
        except OSError:
            continue
        out.append((name, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Prediction:
    """Per row: failure probability within the horizon, and remaining useful life in steps."""

    probability: np.ndarray
    rul_steps: np.ndarray | None


class Model:
    """A validated model directory with its onnxruntime sessions; build with `load_model`."""

    def __init__(self, directory: Path, metadata: dict[str, Any],
                 classifier: ort.InferenceSession, rul: ort.InferenceSession | None) -> None:
        self.directory = directory
        self.metadata = metadata
        self.name: str = metadata["name"]
        self.version: str = str(metadata["version"])
        self.inputs: list[str] = list(metadata["inputs"])
        self.features: list[str] = list(metadata["features"])
        self.window: int = metadata["window"]
        self.layout: Layout = layout_of(metadata)
        #: input name -> its categories (text), for inputs that are categorical
        self.categories: dict[str, tuple[str, ...]] = dict(self.layout.categories)
        self.horizon: int = metadata["horizon"]
        self.threshold: float = float(metadata["threshold"])
        self.step_s: float | None = metadata.get("step_s")
        self.hash: str = metadata["files"]["classifier"]["sha256"]
        self.normal_mean = np.asarray(metadata["normal"]["mean"], dtype=np.float64)
        self.normal_std = np.asarray(metadata["normal"]["std"], dtype=np.float64)
        self._classifier = classifier
        self._rul = rul
        self._classifier_input = metadata["files"]["classifier"]["input"]
        self._probability_output = metadata["files"]["classifier"]["output"]
        self._rul_input = metadata["files"].get("rul", {}).get("input")
        self._rul_output = metadata["files"].get("rul", {}).get("output")

    @property
    def has_rul(self) -> bool:
        return self._rul is not None

    def predict(self, features: np.ndarray) -> Prediction:
        """One batched call per session for (n, features) rows."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"features must have shape (n, {len(self.features)}), got {x.shape}")
        try:
            (probabilities,) = self._classifier.run([self._probability_output],
                                                    {self._classifier_input: x})
            rul = None
            if self._rul is not None:
                (rul_out,) = self._rul.run([self._rul_output], {self._rul_input: x})
                rul = np.clip(np.asarray(rul_out, dtype=np.float64).reshape(-1), 0.0, None)
        except Exception as exc:  # onnxruntime's errors share no base class but Exception
            raise ModelError(f"{self.directory}: onnxruntime failed to run the model "
                             f"({_first_line(exc)})") from exc
        return Prediction(np.asarray(probabilities, dtype=np.float64)[:, 1], rul)

    def predict_windows(self, windows: np.ndarray) -> tuple[np.ndarray, Prediction]:
        """Features and prediction for (n, window, inputs) windows."""
        features = self.layout.features(windows)
        return features, self.predict(features)

    def deviations(self, features: np.ndarray, top: int = 3) -> list[dict[str, Any]]:
        """The features of one row furthest from normal operation in training, in std units."""
        z = (features - self.normal_mean) / self.normal_std
        order = np.argsort(-np.abs(z))[:top]
        return [
            {"feature": self.features[i], "value": float(features[i]),
             "normal_mean": float(self.normal_mean[i]), "z": round(float(z[i]), 2)}
            for i in order
        ]


def load_model(directory: str | Path) -> Model:
    """Read, check and load a model directory; ModelError when anything does not match."""
    directory = resolve_model_dir(directory)
    if not directory.is_dir():
        raise ModelError(f"{directory}: no such model directory; train one with "
                         "`millwright model train` or use model = \"bundled\"")
    metadata = read_metadata(directory)
    classifier = _session(directory, "classifier", metadata)
    rul = _session(directory, "rul", metadata) if "rul" in metadata["files"] else None
    return Model(directory, metadata, classifier, rul)


def _session(directory: Path, role: str, meta: dict[str, Any]) -> ort.InferenceSession:
    info = meta["files"][role]
    path = directory / info["path"]
    try:
        digest = sha256_file(path)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read ({exc.strerror or exc}); {RETRAIN}") from None
    if digest != info["sha256"]:
        raise ModelError(f"{path}: SHA-256 {digest[:12]}... does not match {METADATA_FILE} "
                         f"({info['sha256'][:12]}...); the file is damaged or from another "
                         f"training run, {RETRAIN}")
    not_utf8 = (f"{path}: holds names or metadata that are not valid UTF-8, so it is damaged "
                f"or not written by Millwright; {RETRAIN}")
    try:
        # enable_fallback=0: on a failure onnxruntime would print a banner to stdout and retry
        # with its fallback providers, which for CPU only is the same load again.
        session = ort.InferenceSession(str(path), sess_options=session_options(),
                                       providers=["CPUExecutionProvider"], enable_fallback=0)
    except UnicodeDecodeError:  # onnxruntime's error quotes a name from the file that is not UTF-8
        raise ModelError(not_utf8) from None
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        raise ModelError(f"{path}: onnxruntime cannot load it ({_first_line(exc)}); "
                         f"{RETRAIN}") from None
    try:
        # onnxruntime decodes the names and metadata strings of the file only here, as UTF-8.
        inputs = session.get_inputs()
        outputs = {o.name for o in session.get_outputs()}
        embedded = session.get_modelmeta().custom_metadata_map
    except UnicodeDecodeError:
        raise ModelError(not_utf8) from None
    count = len(meta["features"])
    if len(inputs) != 1 or inputs[0].name != info["input"] or inputs[0].type != "tensor(float)" \
            or len(inputs[0].shape) != 2 or inputs[0].shape[1] != count:
        got = ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
        raise ModelError(f"{path}: expects input(s) {got}, but {METADATA_FILE} describes "
                         f"'{info['input']}' float [n, {count}]; {RETRAIN}")
    if info["output"] not in outputs:
        raise ModelError(f"{path}: has no output '{info['output']}' named in {METADATA_FILE}; "
                         f"{RETRAIN}")
    if embedded.get(ONNX_FEATURES_KEY) != ",".join(meta["features"]):
        raise ModelError(f"{path}: the feature names embedded in the ONNX file do not match "
                         f"{METADATA_FILE} 'features' (order matters); {RETRAIN}")
    if embedded.get(ONNX_WINDOW_KEY) != str(meta["window"]):
        raise ModelError(f"{path}: trained on windows of {embedded.get(ONNX_WINDOW_KEY)} steps "
                         f"but {METADATA_FILE} says 'window' {meta['window']}; {RETRAIN}")
    return session


def session_options() -> ort.SessionOptions:
    """One thread, sequential, no spinning: a small device shares its cores with the gateway."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    # Fatal only: a refused file is reported once, by our ModelError, not also by onnxruntime.
    options.log_severity_level = 4
    return options


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__

"""Gradient boosting for failure models: LightGBM fits, and their export to ONNX.

Why LightGBM and not scikit-learn's GradientBoosting: at equal size and speed on the
device (56 kB and ~10 µs per row for 100 trees of depth 3, both) it trains about 25x
faster (2.1 s against 54 s on the bundled model's data), which is what makes a search
with grouped cross-validation affordable (docs/benchmarks.md has the measurements).

The ONNX file is written here from LightGBM's own tree dump, not by a converter: a
threshold is a double in LightGBM, and rounding it to the nearest float32 (what
converters do) sends a float32 reading equal to the rounded value down the other
branch (measured: up to 0.009 of probability). Rounding every threshold *down* to a
float32 makes `x <= t` decide exactly as LightGBM does for every float32 reading.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import onnx
from onnx import TensorProto, helper

# What every onnxruntime >= 1.17 runs: ai.onnx.ml 3 holds TreeEnsembleRegressor.
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
IR_VERSION = 9
SUBSAMPLE = 0.5


@dataclass(frozen=True, order=True)
class Params:
    """One point of the search: boosting rounds, depth of each tree, learning rate."""

    rounds: int = 100
    depth: int = 3
    learning_rate: float = 0.1

    @property
    def visits(self) -> int:
        """Tree nodes visited per row: what a prediction costs on the device."""
        return self.rounds * self.depth


DEFAULT = Params()


def _settings(params: Params, seed: int) -> dict[str, Any]:
    return {"n_estimators": params.rounds, "max_depth": params.depth,
            "num_leaves": 2 ** params.depth, "learning_rate": params.learning_rate,
            "subsample": SUBSAMPLE, "subsample_freq": 1, "random_state": seed,
            # One thread and a fixed histogram layout: the same data gives the same model.
            "n_jobs": 1, "deterministic": True, "force_row_wise": True, "verbose": -1}


def fit_classifier(x: np.ndarray, y: np.ndarray, params: Params, seed: int,
                   weight: np.ndarray | None = None,
                   callbacks: list[Callable[[Any], None]] | None = None) -> lgb.LGBMClassifier:
    """`callbacks` are LightGBM's, called after each boosting round (progress)."""
    return lgb.LGBMClassifier(**_settings(params, seed)).fit(
        x, y.astype(np.int64), sample_weight=weight, callbacks=callbacks)


def fit_regressor(x: np.ndarray, y: np.ndarray, params: Params, seed: int,
                  callbacks: list[Callable[[Any], None]] | None = None) -> lgb.LGBMRegressor:
    return lgb.LGBMRegressor(**_settings(params, seed)).fit(x, y, callbacks=callbacks)


def class_weights(y: np.ndarray, how: str) -> np.ndarray | None:
    """Per-row weights for rare failures: None for "none"; "balanced" gives both classes the
    same total weight; "sqrt" weighs each failing row by the square root of the healthy-to-
    failing ratio (half-way, on a log scale). The threshold is chosen on validation data
    afterwards, so weights change what the trees attend to, not where alarms start."""
    positives = int(y.sum())
    negatives = len(y) - positives
    if how == "none" or not positives or not negatives:
        return None
    ratio = negatives / positives
    up = ratio if how == "balanced" else math.sqrt(ratio)
    return np.where(y, up, 1.0)


def importances(model: lgb.LGBMModel) -> np.ndarray:
    """Each feature's share of the total split gain."""
    gain = model.booster_.feature_importance(importance_type="gain").astype(np.float64)
    return gain / gain.sum() if gain.sum() > 0 else gain


def _float32_at_or_below(value: float) -> float:
    rounded = np.float32(value)
    if float(rounded) > value:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)


def _ensemble(booster: lgb.Booster, n_features: int, output: str) -> onnx.NodeProto:
    """A TreeEnsembleRegressor summing every tree's leaf: LightGBM's raw score."""
    a: dict[str, list[Any]] = {k: [] for k in (
        "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_values", "nodes_modes",
        "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true",
        "target_treeids", "target_nodeids", "target_ids", "target_weights")}
    for tree_id, tree in enumerate(booster.dump_model()["tree_info"]):
        pending = [tree["tree_structure"]]
        ids = {id(pending[0]): 0}
        while pending:
            node = pending.pop()
            node_id = ids[id(node)]
            a["nodes_treeids"].append(tree_id)
            a["nodes_nodeids"].append(node_id)
            if "leaf_value" in node:
                a["nodes_featureids"].append(0)
                a["nodes_values"].append(0.0)
                a["nodes_modes"].append("LEAF")
                a["nodes_truenodeids"].append(0)
                a["nodes_falsenodeids"].append(0)
                a["nodes_missing_value_tracks_true"].append(0)
                a["target_treeids"].append(tree_id)
                a["target_nodeids"].append(node_id)
                a["target_ids"].append(0)
                a["target_weights"].append(float(node["leaf_value"]))
                continue
            if node["decision_type"] != "<=":
                raise ValueError(f"unsupported split {node['decision_type']!r} in tree {tree_id}")
            for child in ("left_child", "right_child"):
                ids[id(node[child])] = len(ids)
                pending.append(node[child])
            a["nodes_featureids"].append(int(node["split_feature"]))
            a["nodes_values"].append(_float32_at_or_below(float(node["threshold"])))
            a["nodes_modes"].append("BRANCH_LEQ")
            a["nodes_truenodeids"].append(ids[id(node["left_child"])])
            a["nodes_falsenodeids"].append(ids[id(node["right_child"])])
            # Readings are never NaN here (the device skips them), but say what LightGBM does.
            a["nodes_missing_value_tracks_true"].append(
                int(node["missing_type"] == "NaN" and node["default_left"]))
    if a["nodes_featureids"] and max(a["nodes_featureids"]) >= n_features:
        raise ValueError("the booster uses more features than the model declares")
    attributes: dict[str, Any] = a
    return helper.make_node("TreeEnsembleRegressor", ["features"], [output],
                            domain="ai.onnx.ml", n_targets=1, aggregate_function="SUM",
                            post_transform="NONE", base_values=[0.0], **attributes)


def to_onnx(model: lgb.LGBMModel, n_features: int, properties: dict[str, str],
            doc: str) -> bytes:
    """The fitted model as ONNX: input float32 'features' [n, n_features]; a classifier
    outputs 'probabilities' [n, 2] (no failure, failure), a regressor 'variable' [n, 1]."""
    booster = model.booster_
    features = helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, n_features])
    if isinstance(model, lgb.LGBMClassifier):
        objective = booster.dump_model()["objective"]
        scale = float(objective.split("sigmoid:")[1]) if "sigmoid:" in objective else math.nan
        if not objective.startswith("binary") or scale != 1.0:
            raise ValueError(f"unsupported classifier objective {objective!r}")
        nodes = [
            _ensemble(booster, n_features, "raw"),
            helper.make_node("Sigmoid", ["raw"], ["p_failure"]),
            helper.make_node("Sub", ["one", "p_failure"], ["p_healthy"]),
            helper.make_node("Concat", ["p_healthy", "p_failure"], ["probabilities"], axis=1),
        ]
        initializers = [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])]
        output = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])
    else:
        nodes = [_ensemble(booster, n_features, "variable")]
        initializers = []
        output = helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])
    graph = helper.make_graph(nodes, "millwright", [features], [output], initializers)
    onnx_model = helper.make_model(
        graph, ir_version=IR_VERSION, producer_name="millwright",
        opset_imports=[helper.make_opsetid(domain, version)
                       for domain, version in TARGET_OPSET.items()])
    onnx_model.doc_string = doc
    helper.set_model_props(onnx_model, properties)
    onnx.checker.check_model(onnx_model)
    return onnx_model.SerializeToString()

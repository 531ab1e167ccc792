"""Predictor benchmarks: evaluation latency per tick for 1, 100 and 1,000 assets, and training time.

- tick latency: `Predictor.evaluate()` with N assets on the bundled model, all due and
  all with a new reading (healthy machines, so no events), median over many ticks.
  It covers finding due assets, the staleness checks, gathering the windows, the
  features (models.features), the batched onnxruntime call (1 thread) and the
  per-asset alarm rule; from 64 assets the batch runs in a worker thread, so that
  hand-off is included. Raw: the bare onnxruntime call alone on the same
  (N, features) float32 input in the same session options: the floor.
- observe: the cost per reading of `Predictor.observe` (routing + ring buffer).
- single row: one `Model.predict` call for one row, beside the bare session call.
- training: `python -m models.make_bundled`'s training step on its recipe (the
  quick run trains a 12-machine recipe instead); raw is null.

`python -m bench.predictor [--quick]` runs this suite alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from gateway.config import AssetConfig
from gateway.frames import Frame
from gateway.predictor import Predictor
from models.onnx_model import Model, load_model, session_options
from simulators.machine import SIGNALS, Machine


def figure(metric: str, value: float, unit: str, raw: float | None) -> dict[str, Any]:
    return {"metric": metric, "value": round(value, 3), "unit": unit,
            "raw": None if raw is None else round(raw, 3),
            "ratio": None if not raw else round(value / raw, 2)}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def _tick_latency(assets: int, ticks: int) -> tuple[float, float, float]:
    """(median evaluate() µs, median bare session µs, observe µs per reading)."""
    clock = Clock()
    configs = [AssetConfig(name=f"bench-{i}", inputs={s: f"bench-{i}/{s}" for s in SIGNALS},
                           evaluate_every_s=1.0, stale_after_s=1e9) for i in range(assets)]
    predictor = Predictor(configs, clock=clock)
    predictor.load()
    machines = [Machine(c.name, seed=i, life_s=float("inf")) for i, c in enumerate(configs)]
    model = load_model("bundled")
    timings, observe_s, readings_seen = [], 0.0, 0
    for tick in range(model.window + ticks):
        batch = [Frame(m.name, clock.now, dict(m.step(60.0).signals()), clock.now)
                 for m in machines]
        started = time.perf_counter()
        predictor.observe(batch)
        observe_s += time.perf_counter() - started
        readings_seen += sum(len(f.values) for f in batch)
        clock.now += 1.0
        started = time.perf_counter()
        await predictor.evaluate()  # healthy machines: an alarm is rare (false-alarm rate)
        if tick >= model.window:
            timings.append(time.perf_counter() - started)
    features = np.random.default_rng(0).normal(size=(assets, len(model.features)))
    bare = bare_median_s(model, features.astype(np.float32), ticks)
    return (statistics.median(timings) * 1e6, bare * 1e6, observe_s / readings_seen * 1e6)


def bare_median_s(model: Model, features: np.ndarray, repeats: int) -> float:
    """Median seconds of the bare sessions on `features` (float32 rows)."""
    run_bare = _bare_sessions(model)
    bare = []
    for _ in range(repeats):
        started = time.perf_counter()
        run_bare(features)
        bare.append(time.perf_counter() - started)
    return statistics.median(bare)


def _bare_sessions(model: Model) -> Callable[[np.ndarray], None]:
    """The floor: plain onnxruntime sessions on the model's files, same options, no wrapper."""
    sessions = [(ort.InferenceSession(str(model.directory / info["path"]), session_options(),
                                      providers=["CPUExecutionProvider"]), info["output"])
                for info in model.metadata["files"].values()]

    def run(features: np.ndarray) -> None:
        for session, output in sessions:
            session.run([output], {"features": features})

    return run


def _single_row(repeats: int) -> tuple[float, float]:
    model = load_model("bundled")
    row = np.asarray(model.normal_mean, dtype=np.float64)[None, :]
    x32 = row.astype(np.float32)
    run_bare = _bare_sessions(model)
    ours, bare = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict(row)
        ours.append(time.perf_counter() - started)
        started = time.perf_counter()
        run_bare(x32)
        bare.append(time.perf_counter() - started)
    return statistics.median(ours) * 1e6, statistics.median(bare) * 1e6


def _training_seconds(quick: bool) -> tuple[float, int]:
    from models.make_bundled import QUICK, Recipe, build

    with tempfile.TemporaryDirectory() as tmp:
        meta = build(Path(tmp) / "model", QUICK if quick else Recipe())
        size = sum(p.stat().st_size for p in (Path(tmp) / "model").iterdir())
    return float(meta["training"]["seconds"]), size


def main(quick: bool) -> list[dict[str, Any]]:
    logging.getLogger("gateway.predictor").setLevel(logging.ERROR)
    results = []
    ticks = {1: 300, 100: 100, 1000: 30} if quick else {1: 2000, 100: 500, 1000: 100}
    for assets, count in ticks.items():
        ours, bare, observe = asyncio.run(_tick_latency(assets, count))
        results.append(figure(f"predictor_tick_{assets}_assets", ours, "us", bare))
        if assets == 1000:
            results.append(figure("predictor_observe_per_reading", observe, "us", None))
    ours, bare = _single_row(500 if quick else 5000)
    results.append(figure("model_predict_one_row", ours, "us", bare))
    seconds, size = _training_seconds(quick)
    results.append(figure("bundled_training" + ("_quick_recipe" if quick else ""), seconds,
                           "s", None))
    results.append(figure("bundled_model_size", load_model_size(), "kB", None))
    if quick:
        results[-2]["note"] = f"12-machine recipe, model {size / 1024:.0f} kB"
    return results


def load_model_size() -> float:
    model = load_model("bundled")
    return sum(p.stat().st_size for p in model.directory.iterdir()) / 1024


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.predictor")
    parser.add_argument("--quick", action="store_true")
    for line in main(parser.parse_args().quick):
        print(json.dumps(line))

"""Training benchmarks: default against `--tune`, and what each model costs on the device.

For two shapes of data, each trained with the defaults and with `--tune`:
- run to failure: simulated machines (seeds 1000+, as the bundled model; 200 machines,
  40 with --quick), windows of 10;
- the shipped bundled model (LightGBM), for reference, evaluated the same way;
- snapshots: simulators/snapshots.py's labelled table (6,000 rows, 3,000 with --quick),
  scored on another seed's 3,000 rows through the device's code.
Figures per model: validation F1 (held-out F1 for snapshots), training seconds, ONNX
bytes, and the predictor's cost per asset per evaluation: `Predictor.evaluate()` with
1 and with 100 assets due (features, the batched onnxruntime call on one thread, the
alarm rule), median over many ticks, beside the bare sessions on the same rows.

`python -m bench.training [--quick]` runs this suite alone.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.predictor import Clock, bare_median_s, figure
from gateway.config import AssetConfig
from gateway.frames import Frame
from gateway.predictor import Predictor
from models.batch import predict_assets
from models.onnx_model import BUNDLED_DIR, load_model
from models.scoring import at_threshold
from models.table import read_table
from models.train import TrainOptions, train
from simulators.dataset import write_dataset
from simulators.snapshots import write_snapshots

LEAKS = ["udi", "product_id", "failure_mode"]


async def _per_asset_us(directory: Path, rows: list[dict[str, str]], assets: int,
                        ticks: int) -> tuple[float, float]:
    """(median evaluate() µs per asset, bare sessions µs per asset) with `assets` due."""
    model = load_model(directory)
    clock = Clock()
    configs = [AssetConfig(name=f"a{i}", model=str(directory), evaluate_every_s=1.0,
                           stale_after_s=1e9, sample_every_s=0.0,
                           inputs={n: f"a{i}/{n}" for n in model.inputs})
               for i in range(assets)]
    predictor = Predictor(configs, clock=clock)
    predictor.load()

    def value(name: str, text: str) -> float | str:
        return text if name in model.categories else float(text)

    timings = []
    for tick in range(model.window + ticks):
        frames = [Frame(c.name, clock.now, {n: value(n, rows[(tick * assets + i) % len(rows)][n])
                                            for n in model.inputs}, clock.now)
                  for i, c in enumerate(configs)]
        predictor.observe(frames)
        clock.now += 1.0
        started = time.perf_counter()
        await predictor.evaluate()
        if tick >= model.window:
            timings.append(time.perf_counter() - started)
    bare = bare_median_s(model, np.tile(model.normal_mean.astype(np.float32), (assets, 1)),
                         ticks)
    return statistics.median(timings) * 1e6 / assets, bare * 1e6 / assets


def _model_figures(label: str, directory: Path, rows: list[dict[str, str]], quick: bool,
                   score: float, score_name: str) -> list[dict[str, Any]]:
    meta = json.loads((directory / "model.json").read_text())
    size = sum(p.stat().st_size for p in directory.glob("*.onnx"))
    out = [figure(f"{label}_{score_name}", score, "", None),
           figure(f"{label}_training", meta["training"]["seconds"], "s", None),
           figure(f"{label}_onnx_size", size / 1024, "kB", None)]
    for assets, ticks in ((1, 300 if quick else 2000), (100, 50 if quick else 300)):
        ours, bare = asyncio.run(_per_asset_us(directory, rows, assets, ticks))
        out.append(figure(f"{label}_per_asset_evaluation_{assets}_due", ours, "us", bare))
    est = meta["estimator"]
    out[0]["note"] = (f"{est['n_estimators']} rounds, depth {est['max_depth']}, rate "
                      f"{est['learning_rate']}")
    return out


def _rows(path: Path, limit: int = 2000) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return [row for _, row in zip(range(limit), csv.DictReader(f), strict=False)]


def main(quick: bool) -> list[dict[str, Any]]:
    logging.getLogger("gateway.predictor").setLevel(logging.ERROR)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="millwright-bench-train-") as tmp:
        work = Path(tmp)
        histories = work / "histories.csv"
        write_dataset(histories, 40 if quick else 200, 1000)
        rows = _rows(histories)
        # The reference in the same run: the shipped bundled model (LightGBM's trees).
        for assets, ticks in ((1, 300 if quick else 2000), (100, 50 if quick else 300)):
            ours, bare = asyncio.run(_per_asset_us(BUNDLED_DIR, rows, assets, ticks))
            results.append(figure(f"bundled_per_asset_evaluation_{assets}_due", ours, "us",
                                   bare))
        for tune in (False, True):
            out = work / f"rtf-{tune}"
            meta = train(TrainOptions(data=histories, out=out, tune=tune, report=False))
            label = f"run_to_failure_{'tuned' if tune else 'default'}"
            results += _model_figures(label, out, rows, quick,
                                      meta.metadata["metrics"]["f1"], "validation_f1")
        table, held_out = work / "snapshots.csv", work / "held_out.csv"
        write_snapshots(table, 3000 if quick else 6000, seed=1)
        write_snapshots(held_out, 3000, seed=2)
        rows = _rows(table)
        held_out_table = read_table(held_out)
        failed = held_out_table.numeric("failed") == 1
        for tune in (False, True):
            out = work / f"snap-{tune}"
            train(TrainOptions(data=table, out=out, snapshot=True, label_col="failed",
                               exclude=LEAKS, tune=tune, report=False))
            model = load_model(out)
            probability = np.array([p.probability[0] for p in predict_assets(
                model, held_out_table, None, None)])
            f1 = at_threshold(failed, probability, model.threshold)["f1"]
            label = f"snapshot_{'tuned' if tune else 'default'}"
            results += _model_figures(label, out, rows, quick, f1, "held_out_f1")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.training")
    parser.add_argument("--quick", action="store_true")
    for line in main(parser.parse_args().quick):
        print(json.dumps(line))

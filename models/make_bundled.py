"""Rebuilds the bundled model in one command: simulate, train, evaluate on held-out machines.

    python -m models.make_bundled            # writes models/bundled (needs the train extra)

Training machines, held-out failing machines and healthy machines come from disjoint
seed ranges of the simulator's machine model, so the held-out numbers recorded in
model.json (metrics.held_out) are on machines the model has never seen. Every machine
runs at speed setpoints that change at random (`vary_speed`, simulators/dataset.py), so
the model knows wear at any speed: a press slowed to answer its alarm reads as a press
wearing more slowly, not as a worn one (the demo's `--answer-alarms`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.batch import alarm_metrics, predict_assets, record_held_out
from models.onnx_model import BUNDLED_DIR, load_model
from models.table import read_table
from models.train import TrainOptions, train
from simulators.dataset import write_dataset


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the bundled model."""

    train_machines: int = 200
    train_seed: int = 1000
    heldout_machines: int = 100
    heldout_seed: int = 50_000
    healthy_machines: int = 50
    healthy_seed: int = 90_000
    healthy_hours: float = 24.0
    step_s: float = 60.0
    window: int = 10
    horizon: int = 120
    rul_cap: int = 240
    alarm_after: int = 3
    vary_speed: bool = True


QUICK = Recipe(train_machines=12, heldout_machines=6, healthy_machines=3, healthy_hours=12.0)


def build(out: Path, recipe: Recipe = Recipe(), work: Path | None = None) -> dict[str, Any]:
    """Simulate, train into `out`, evaluate on held-out machines; returns the metadata."""
    with tempfile.TemporaryDirectory(prefix="millwright-bundled-") as tmp:
        work = work or Path(tmp)
        train_csv, heldout_csv, healthy_csv = (work / "train.csv", work / "heldout.csv",
                                               work / "healthy.csv")
        write_dataset(train_csv, recipe.train_machines, recipe.train_seed, recipe.step_s,
                      vary_speed=recipe.vary_speed)
        train(TrainOptions(data=train_csv, out=out, window=recipe.window,
                           horizon=recipe.horizon, rul_cap=recipe.rul_cap,
                           alarm_after=recipe.alarm_after, name="millwright-bundled",
                           version="1"))
        write_dataset(heldout_csv, recipe.heldout_machines, recipe.heldout_seed, recipe.step_s,
                      vary_speed=recipe.vary_speed)
        write_dataset(healthy_csv, recipe.healthy_machines, recipe.healthy_seed, recipe.step_s,
                      healthy_hours=recipe.healthy_hours, vary_speed=recipe.vary_speed)
        model = load_model(out)
        speeds = ", at varying speeds" if recipe.vary_speed else ""
        failing = predict_assets(model, read_table(heldout_csv), "asset", "time_s")
        healthy = predict_assets(model, read_table(healthy_csv), "asset", "time_s")
        result = alarm_metrics(model, failing, healthy, recipe.alarm_after, recipe.horizon,
                               model.step_s)
        record_held_out(
            out, result,
            data=f"simulator seeds {recipe.heldout_seed}-"
                 f"{recipe.heldout_seed + recipe.heldout_machines - 1}, run to failure{speeds}",
            healthy_data=f"simulator seeds {recipe.healthy_seed}-"
                         f"{recipe.healthy_seed + recipe.healthy_machines - 1}, never wear, "
                         f"{recipe.healthy_hours:g} h each{speeds}",
        )
    meta = json.loads((out / "model.json").read_text(encoding="utf-8"))
    meta["training"]["recipe"] = recipe.__dict__
    meta["training"]["command"] = "python -m models.make_bundled"
    staged = out / ".model.json.tmp"
    staged.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    staged.replace(out / "model.json")
    return meta


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.make_bundled",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=BUNDLED_DIR,
                        help=f"model directory to write ({BUNDLED_DIR})")
    parser.add_argument("--quick", action="store_true",
                        help="a small recipe for smoke tests (not the bundled model)")
    args = parser.parse_args(argv)
    meta = build(args.out, QUICK if args.quick else Recipe())
    held = meta["metrics"]["held_out"]
    print(f"wrote {args.out}: threshold {meta['threshold']:.3f}, validation ROC AUC "
          f"{meta['metrics']['roc_auc']}, trained in {meta['training']['seconds']} s")
    print(f"held out: recall {held['failing']['recall']} of {held['failing']['machines']} "
          f"failures, lead {held['failing']['lead_steps']} steps; "
          f"{held['healthy']['false_alarms_per_machine_day']} false alarms per healthy "
          f"machine-day over {held['healthy']['machine_days']} days")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A labelled snapshot table with a known failure rule, in the shape plants keep: one row per case.

Each row is one machining run: a product grade (L/M/H), air and process temperature,
spindle speed, torque and tool wear, and whether it failed. Failures follow two rules
that a snapshot model has to find from single rows:
- *power*: torque x angular speed outside POWER_BAND_W (too little or too much power);
- *wear*: tool wear above the grade's limit (WEAR_LIMIT_MIN) while torque is above
  WEAR_TORQUE_NM: the grade, a text column, matters.
About 4-5 % of rows fail. The table also holds what real tables hold and a model must
not use: a row id (`udi`), a product id that is unique per row (`product_id`, each
"asset" appears once), and `failure_mode`, which names the rule that fired and so
leaks the label (leave it out with --exclude).
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np

COLUMNS = ("udi", "product_id", "grade", "air_temp_k", "process_temp_k", "speed_rpm",
           "torque_nm", "tool_wear_min", "failure_mode", "failed")
GRADES = ("L", "M", "H")
GRADE_SHARES = (0.5, 0.3, 0.2)
POWER_BAND_W = (3300.0, 9800.0)
WEAR_LIMIT_MIN = {"L": 200.0, "M": 215.0, "H": 230.0}
WEAR_TORQUE_NM = 45.0


def failure_mode(grade: str, speed_rpm: float, torque_nm: float, tool_wear_min: float) -> str:
    """The rule: '' for a healthy run, else which failure it is."""
    power = torque_nm * speed_rpm * 2 * math.pi / 60
    if not POWER_BAND_W[0] <= power <= POWER_BAND_W[1]:
        return "power"
    if tool_wear_min > WEAR_LIMIT_MIN[grade] and torque_nm > WEAR_TORQUE_NM:
        return "wear"
    return ""


def write_snapshots(out: Path, rows: int, seed: int) -> float:
    """Write `rows` labelled snapshots to `out`; returns the share that failed."""
    rng = np.random.default_rng(seed)
    grades = rng.choice(GRADES, size=rows, p=GRADE_SHARES)
    air = rng.normal(300.0, 2.0, rows)
    process = air + 10.0 + rng.normal(0.0, 1.0, rows)
    speed = np.clip(rng.normal(1540.0, 170.0, rows), 1100.0, 2900.0)
    torque = np.clip(rng.normal(40.0, 8.0, rows), 4.0, 80.0)
    wear = rng.uniform(0.0, 250.0, rows)
    failed = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for i in range(rows):
            mode = failure_mode(str(grades[i]), speed[i], torque[i], wear[i])
            failed += bool(mode)
            writer.writerow([i + 1, f"{grades[i]}{seed % 1000:03d}{i:06d}", grades[i],
                             f"{air[i]:.1f}", f"{process[i]:.1f}", f"{speed[i]:.0f}",
                             f"{torque[i]:.1f}", f"{wear[i]:.0f}", mode or "none",
                             int(bool(mode))])
    return failed / rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.snapshots",
                                     description="Write a labelled snapshot table as CSV.")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT.csv")
    parser.add_argument("--rows", type=int, default=6000, help="snapshots to write (6000)")
    parser.add_argument("--seed", type=int, default=1, help="seed (1)")
    args = parser.parse_args(argv)
    share = write_snapshots(args.out, args.rows, args.seed)
    print(f"wrote {args.rows} snapshots to {args.out}: {share:.1%} failed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

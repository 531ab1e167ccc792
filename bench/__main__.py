"""`python -m bench [--quick] [--only NAME ...]`: every benchmark, one JSON line per figure.

Each figure stands beside the raw limit measured in the same run on the same machine:
{"metric": ..., "value": ..., "unit": ..., "raw": ..., "ratio": ...}.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

SUITES = ("core", "frames", "sparkplug_bytes", "sparkplug_drain", "modbus", "opcua",
          "mqtt_ingest", "predictor", "training", "reconnect", "chaos", "jetstream_drain",
          "jetstream_chaos")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: under a minute in all")
    parser.add_argument("--only", nargs="+", choices=SUITES, default=list(SUITES))
    args = parser.parse_args(argv)
    failed = 0
    for name in args.only:
        started = time.perf_counter()
        try:
            results = importlib.import_module(f"bench.{name}").main(args.quick)
        except Exception as exc:  # noqa: BLE001 - one suite failing must not hide the others
            failed += 1
            print(json.dumps({"suite": name, "error": f"{type(exc).__name__}: {exc}"}), flush=True)
            continue
        for result in results:
            print(json.dumps({"suite": name, **result}), flush=True)
        print(json.dumps({"suite": name, "seconds": round(time.perf_counter() - started, 1)}),
              file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""maintenance_needed as Sparkplug metrics: the same fields as the CloudEvent, one metric each.

Under `Maintenance/` (of the asset's device) or `Maintenance/{asset}/` (of the node), with
the datatypes a birth declares in advance:

| metric | datatype | CloudEvent field |
|---|---|---|
| probability, threshold | Double | `probability`, `threshold` |
| horizon_steps, window, evaluations_above | Int64 | same names |
| horizon_s, rul_s (unit s), rul_steps | Double (null when absent) | same names |
| model/name, model/version, model/sha256 | String | `model.name`, `.version`, `.sha256` |
| drivers, inputs | String (JSON text) | `drivers`, `inputs` |

The metric timestamp is the event's `time`. `maintenance_fields` turns the metrics back into
the CloudEvent's `data` (less `asset`, which the topic and metric path say).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.sparkplug import datatypes as dt

_METRICS: tuple[tuple[str, int, str | None], ...] = (
    ("probability", dt.DOUBLE, None),
    ("threshold", dt.DOUBLE, None),
    ("horizon_steps", dt.INT64, None),
    ("horizon_s", dt.DOUBLE, "s"),
    ("rul_steps", dt.DOUBLE, None),
    ("rul_s", dt.DOUBLE, "s"),
    ("evaluations_above", dt.INT64, None),
    ("window", dt.INT64, None),
    ("model/name", dt.STRING, None),
    ("model/version", dt.STRING, None),
    ("model/sha256", dt.STRING, None),
    ("drivers", dt.STRING, None),
    ("inputs", dt.STRING, None),
)
_JSON = ("drivers", "inputs")


def maintenance_metrics() -> tuple[tuple[str, int, str | None], ...]:
    """(key, datatype, unit) of every maintenance metric, in birth order."""
    return _METRICS


def maintenance_values(data: dict[str, Any]) -> dict[str, Any]:
    """key -> value for one maintenance_needed event's data (None where it has none)."""
    model = data.get("model") or {}
    out: dict[str, Any] = {}
    for key, datatype, _unit in _METRICS:
        if key.startswith("model/"):
            value = model.get(key.removeprefix("model/"))
            out[key] = None if value is None else str(value)
        elif key in _JSON:
            out[key] = None if data.get(key) is None else orjson.dumps(data[key]).decode()
        else:
            value = data.get(key)
            if datatype == dt.DOUBLE and value is not None:
                value = float(value)
            out[key] = value
    return out


def maintenance_fields(values: dict[str, Any]) -> dict[str, Any]:
    """The CloudEvent's data fields from metric key -> value (the inverse of
    `maintenance_values`; JSON metrics parsed, model fields regrouped)."""
    out: dict[str, Any] = {}
    model: dict[str, Any] = {}
    for key, _datatype, _unit in _METRICS:
        if key not in values:
            continue
        value = values[key]
        if key.startswith("model/"):
            model[key.removeprefix("model/")] = value
        elif key in _JSON:
            out[key] = None if value is None else orjson.loads(value)
        else:
            out[key] = value
    if model:
        out["model"] = model
    return out

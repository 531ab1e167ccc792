"""The pieces a Sparkplug payload is built from: messages, metrics, properties, times, node metrics.

Conventions chosen here (docs/sparkplug.md):
- `Quality` is the spec's property (Int32: 0 BAD, 192 GOOD, 500 STALE), sent only for a
  value that is not good; Millwright's `uncertain` travels as 500, the nearest code.
- Births carry `engUnit` (String, when the point has a unit) and `readOnly` (Boolean) as
  properties, named after Ignition's tag properties in Sparkplug's lowerCamel style.
- Metric timestamps are the sample time of each value; the payload's is the sending time.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.sparkplug import datatypes as dt
from gateway.sparkplug import sparkplug_b_pb2 as pb
from gateway.sparkplug.node import MetricDef

GATEWAY = "_gateway"  # the device name gateway/events.py gives the gateway's own events
QUALITY = "Quality"
QUALITY_CODES = {"bad": 0, "good": 192, "uncertain": 500}
QUALITY_NAMES = {0: "bad", 192: "good", 500: "uncertain"}
ENG_UNIT = "engUnit"
READ_ONLY = "readOnly"
REBIRTH = "Node Control/Rebirth"

# Node metrics, born in every NBIRTH in this order (aliases follow it).
NODE_METRICS: tuple[tuple[str, int], ...] = (
    ("bdSeq", dt.UINT64),
    (REBIRTH, dt.BOOLEAN),
    ("Gateway/outbox_depth", dt.UINT64),
    ("Gateway/oldest_age_s", dt.DOUBLE),
    ("Gateway/drops", dt.UINT64),
    ("Gateway/dropped_readings", dt.UINT64),
    ("Gateway/last_drop", dt.STRING),
    ("Gateway/status", dt.STRING),
    ("Gateway/status_reason", dt.STRING),
)


@dataclass(frozen=True, slots=True)
class Health:
    """The gateway's own figures the NBIRTH carries."""

    outbox_depth: int = 0
    oldest_age_s: float = 0.0
    drops: int = 0  # events dropped so far (all reasons)
    dropped_readings: int = 0


@dataclass(frozen=True, slots=True)
class Message:
    """One MQTT message to publish. The spec publishes all but NDEATH (the will, QoS 1) at
    QoS 0 and none retained; which QoS the uplink uses is its decision (docs/sparkplug.md)."""

    topic: str
    payload: bytes
    verb: str
    device: str | None = None
    seq: int | None = None


class NotBorn(RuntimeError):
    """A message was asked for out of the session's order (see the message)."""


def ms(value: str | float) -> int:
    """Milliseconds since the epoch (UTC) from an RFC 3339 text, as events carry times, or
    from epoch seconds."""
    if isinstance(value, int | float):
        return int(round(value * 1000))
    moment = datetime.fromisoformat(value)
    return calendar.timegm(moment.utctimetuple()) * 1000 + moment.microsecond // 1000


def add_metric(payload: pb.Payload, definition: MetricDef, value: Any, stamp: int, *,
               historical: bool = False, quality: str = "good", birth: bool = False,
               datatype: bool = False, fits: bool | None = None) -> pb.Payload.Metric:
    """Append one metric: name, datatype and properties in a birth, the alias always (and the
    datatype too with `datatype`); a value its datatype cannot carry travels as null (`fits`:
    the caller already knows whether it does)."""
    metric = payload.metrics.add(alias=definition.alias, timestamp=stamp)
    if birth:
        metric.name = definition.name
    if birth or datatype:
        metric.datatype = definition.datatype
    if historical:
        metric.is_historical = True
    if not (dt.fits(definition.datatype, value) if fits is None else fits):
        value, quality = None, "bad"
    dt.put_value(metric, definition.datatype, value)
    if birth and definition.unit:
        add_property(metric, ENG_UNIT, dt.STRING, definition.unit)
    if birth and definition.name != "bdSeq" and not definition.name.startswith("Node Control/"):
        add_property(metric, READ_ONLY, dt.BOOLEAN, not definition.writable)
    if quality != "good":
        add_property(metric, QUALITY, dt.INT32, QUALITY_CODES.get(quality, 0))
    return metric


def add_property(metric: pb.Payload.Metric, key: str, datatype: int, value: Any) -> None:
    """Add one property to `metric`'s PropertySet (String, Boolean or a 32-bit integer)."""
    metric.properties.keys.append(key)
    prop = metric.properties.values.add(type=datatype)
    if datatype == dt.STRING:
        prop.string_value = str(value)
    elif datatype == dt.BOOLEAN:
        prop.boolean_value = bool(value)
    else:
        prop.int_value = int(value) & 0xFFFF_FFFF

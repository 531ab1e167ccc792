"""MQTT payloads to frames, without I/O: topic filters, dotted paths into JSON, timestamps.

`decode(plan, topic, payload, receive_time)` never raises on a payload: whatever
arrives becomes one frame (the message's values, at its timestamp) and/or
`Rejection`s with a reason (a metric label) and a detail (for the log). A message
that yields no value at all is rejected whole.

Paths: "" is the whole payload (a bare `21.5` or `true` is valid JSON), "a.b"
walks JSON objects, and a decimal segment indexes a JSON array ("axes.0.rms").
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from gateway.frames import Frame, Quality, Value
from gateway.topics import check_topic

if TYPE_CHECKING:
    from drivers.mqtt.config import MqttDeviceConfig

# Reasons are the `reason` label of gateway.metrics.DEVICE_REJECTED.
OVERSIZED = "oversized"
MALFORMED = "malformed"
UNEXPECTED_TOPIC = "unexpected_topic"
BAD_DEVICE = "bad_device"
BAD_TIMESTAMP = "bad_timestamp"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"

# 9999-12-31T23:59:59Z: beyond it an RFC 3339 timestamp cannot be written.
MAX_TIMESTAMP_S = 253_402_300_799.0
_UNIT_DIVISOR = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INT_KINDS = frozenset({None, "number", "integer"})  # point types an in-range int is good for
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LONG_DIGITS = re.compile(rb"\d{19}")
_MISSING: Any = object()


# -- topics and paths (also used by the config model) --------------------------------


def validate_filter(topic_filter: str) -> None:
    """ValueError, naming the fix, when `topic_filter` is not a valid MQTT topic filter."""
    check_topic(topic_filter, filter=True)


def device_level(topic_filter: str) -> int:
    """The index of the single '+' level that names the device."""
    levels = topic_filter.split("/")
    plus = [index for index, level in enumerate(levels) if level == "+"]
    if len(plus) != 1:
        raise ValueError(
            f"device_from_topic needs exactly one '+' level in topic to name the device, "
            f"e.g. \"plant/+/telemetry\"; '{topic_filter}' has {len(plus)}"
        )
    return plus[0]


def topic_matches(filter_levels: tuple[str, ...], topic: str) -> bool:
    """True when `topic` matches the filter split into `filter_levels`."""
    levels = topic.split("/")
    for index, wanted in enumerate(filter_levels):
        if wanted == "#":
            # '#' also matches the parent level; wildcards never match '$SYS'-style topics.
            return not (index == 0 and topic.startswith("$"))
        if index >= len(levels):
            return False
        if wanted == "+":
            if index == 0 and levels[0].startswith("$"):
                return False
        elif wanted != levels[index]:
            return False
    return len(levels) == len(filter_levels)


def parse_path(path: str) -> tuple[str, ...]:
    """The segments of a dotted path; ValueError for an empty segment."""
    if path == "":
        return ()
    segments = tuple(path.split("."))
    if any(segment == "" for segment in segments):
        raise ValueError(
            f"'{path}' has an empty segment; separate keys with single dots, e.g. "
            "\"signals.temperature_c\", or use \"\" for the whole payload"
        )
    return segments


# -- the compiled plan -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PointPlan:
    name: str
    path: tuple[str, ...]
    type: str | None
    unit: str | None


@dataclass(frozen=True, slots=True)
class Plan:
    """What `decode` needs, compiled once from the device's config."""

    device: str
    topic_filter: str
    points: tuple[PointPlan, ...]
    device_level: int | None = None
    timestamp_path: tuple[str, ...] | None = None
    timestamp_unit: str = "s"
    max_payload_bytes: int = 65_536
    filter_levels: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "filter_levels", tuple(self.topic_filter.split("/")))

    @classmethod
    def from_config(cls, config: MqttDeviceConfig) -> Plan:
        return cls(
            device=config.name,
            topic_filter=config.topic,
            points=tuple(PointPlan(p.name, parse_path(p.path), p.type, p.unit)
                         for p in config.points),
            device_level=device_level(config.topic) if config.device_from_topic else None,
            timestamp_path=(parse_path(config.timestamp_path)
                            if config.timestamp_path is not None else None),
            timestamp_unit=config.timestamp_unit,
            max_payload_bytes=config.max_payload_bytes,
        )


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: str
    detail: str


@dataclass(slots=True)
class Decoded:
    """The frame a message gave (None when nothing in it is usable), and what was rejected."""

    frame: Frame | None = None
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def rejected(self) -> bool:
        """True when nothing of the message can be used."""
        return self.frame is None


# -- decoding ----------------------------------------------------------------------


def decode(plan: Plan, topic: str | None, payload: bytes, receive_time: float) -> Decoded:
    """The frame in one message; never raises for any topic or payload."""
    if topic is None:
        return _reject(BAD_DEVICE, "the topic is not valid UTF-8")
    if not topic_matches(plan.filter_levels, topic):
        return _reject(UNEXPECTED_TOPIC, f"topic '{_short(topic)}' does not match "
                       f"'{plan.topic_filter}' (a subscription left in the broker session "
                       "by an earlier config?)")
    device = plan.device
    if plan.device_level is not None:
        device = topic.split("/")[plan.device_level]
        if not device or len(device) > 128 or _CONTROL.search(device) or device == "_gateway":
            return _reject(BAD_DEVICE, f"topic '{_short(topic)}' names no usable device "
                           "(1-128 characters, no control characters, not '_gateway')")
    if len(payload) > plan.max_payload_bytes:
        return _reject(OVERSIZED, f"{len(payload)} bytes on '{_short(topic)}' exceed "
                       f"max_payload_bytes = {plan.max_payload_bytes}")
    try:
        document = _parse(payload)
    except UnicodeDecodeError:
        return _reject(MALFORMED, f"payload on '{_short(topic)}' is not UTF-8 text")
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integers too long to convert.
        return _reject(MALFORMED, f"payload on '{_short(topic)}' is not JSON: "
                       f"{_short(str(exc), 120)}")

    source_time = None
    if plan.timestamp_path is not None:
        raw_time = _resolve(document, plan.timestamp_path)
        source_time, problem = _timestamp(raw_time, plan.timestamp_unit)
        if problem:
            return _reject(BAD_TIMESTAMP, f"timestamp '{'.'.join(plan.timestamp_path)}' "
                           f"on '{_short(topic)}' {problem}")

    decoded = Decoded()
    values: dict[str, Value] = {}
    qualities: dict[str, Quality] = {}
    for point in plan.points:
        raw = _resolve(document, point.path)
        if raw is _MISSING:
            decoded.rejections.append(Rejection(
                MISSING_FIELD, f"point '{point.name}': no '{'.'.join(point.path)}' in the "
                f"payload on '{_short(topic)}'"))
            continue
        value, quality, problem = _value(raw, point.type)
        if problem:
            decoded.rejections.append(Rejection(
                WRONG_TYPE, f"point '{point.name}' on '{_short(topic)}': {problem}"))
            continue
        values[point.name] = value
        if quality != "good":
            qualities[point.name] = quality
    if values:
        decoded.frame = Frame(device, receive_time if source_time is None else source_time,
                              values, receive_time, qualities)
    return decoded


def _parse(payload: bytes) -> Any:
    """The JSON document: orjson's fast parse, or the json module's, whose errors and values
    the rest of the codec expects, for what orjson refuses (NaN, lone surrogate escapes,
    very deep nesting) or would change (an integer of 19 digits or more may be past 64 bits,
    which orjson turns into an inexact float, and the codec must refuse)."""
    if not _LONG_DIGITS.search(payload):
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass
    return json.loads(payload.decode("utf-8"))


def _reject(reason: str, detail: str) -> Decoded:
    return Decoded(rejections=[Rejection(reason, detail)])


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _resolve(document: Any, path: tuple[str, ...]) -> Any:
    node = document
    for segment in path:
        if isinstance(node, dict):
            node = node.get(segment, _MISSING)
            if node is _MISSING:
                return _MISSING
        elif isinstance(node, list) and segment.isascii() and segment.isdigit():
            index = int(segment)
            if index >= len(node):
                return _MISSING
            node = node[index]
        else:
            return _MISSING
    return node


def _describe(raw: Any) -> str:
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return "a bool"
    if isinstance(raw, int | float):
        return "a number"
    if isinstance(raw, str):
        return "a string"
    return "an object" if isinstance(raw, dict) else "an array"


def _value(raw: Any, kind: str | None) -> tuple[Value, Quality, str]:
    """(value, quality, problem); JSON null is a reading of bad quality, whatever the type."""
    # The common cases first (a finite float, an int in range, for a point that takes it):
    # at 1,000 messages/s the general checks below were the largest cost of our own code.
    cls = type(raw)
    if cls is float:
        if (kind is None or kind == "number") and math.isfinite(raw):
            return raw, "good", ""
    elif cls is int and kind in _INT_KINDS and _INT64_MIN <= raw <= _INT64_MAX:
        return raw, "good", ""
    if raw is None:
        return None, "bad", ""
    if isinstance(raw, float) and not math.isfinite(raw):
        return None, "bad", ""  # NaN or Infinity (Python's JSON reads them): JSON null, bad
    if isinstance(raw, str) and not raw.isascii():
        try:
            raw.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate escape such as "\ud800"
            return None, "bad", "the string is not valid Unicode (a lone surrogate)"
    if kind == "integer" and isinstance(raw, float) and math.isfinite(raw) and raw.is_integer():
        raw = int(raw)
    if isinstance(raw, int) and not isinstance(raw, bool) and not _INT64_MIN <= raw <= _INT64_MAX:
        # The envelope (and most JSON consumers) cannot carry it exactly.
        return None, "bad", f"integer {_short(str(raw), 40)} is outside the 64-bit range"
    is_number = isinstance(raw, int | float) and not isinstance(raw, bool)
    if kind is None:
        if isinstance(raw, bool | str) or is_number:
            return raw, "good", ""
    elif kind == "number" and is_number:
        return raw, "good", ""
    elif kind == "integer" and is_number:
        if isinstance(raw, int):
            return raw, "good", ""
        return None, "bad", f"expected an integer, got {raw!r}"
    elif kind == "bool" and isinstance(raw, bool):
        return raw, "good", ""
    elif kind == "string" and isinstance(raw, str):
        return raw, "good", ""
    return None, "bad", f"expected {kind or 'a number, bool or string'}, got {_describe(raw)}"


def _timestamp(raw: Any, unit: str) -> tuple[float | None, str]:
    """(epoch seconds, problem) from a number in `unit` or an RFC 3339 / ISO 8601 string."""
    if raw is _MISSING:
        return None, "is missing"
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        try:
            seconds = raw / _UNIT_DIVISOR[unit]
        except OverflowError:
            return None, "is out of range"
    elif isinstance(raw, str):
        try:
            moment = datetime.fromisoformat(raw)
        except ValueError:
            return None, f"is not an ISO 8601 time: {_short(raw, 60)!r}"
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # a time without an offset is taken as UTC
        try:
            seconds = moment.timestamp()
        except (OverflowError, ValueError):
            return None, "is out of range"
    else:
        return None, f"must be a number ({unit} since 1970) or an ISO 8601 string, " \
                     f"got {_describe(raw)}"
    if not (math.isfinite(seconds) and 0.0 <= seconds <= MAX_TIMESTAMP_S):
        return None, f"is out of range (got {raw!r} in {unit})"
    return seconds, ""

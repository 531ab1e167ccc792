"""Commands from the cloud, pure: parse an `io.millwright.command` and decide whether it may run.

No I/O and no clock of its own (the caller passes `now`), so every refusal is a
table-driven test. The runner (gateway/command_runner.py) executes what passes and
the ledger (gateway/command_ledger.py) remembers what ran.

A command is a CloudEvent (structured JSON) on `{prefix}/command/{device}`:
`{"specversion": "1.0", "type": "io.millwright.command", "id": ..., "source": ...,
"time": RFC 3339, "data": {"values": {point: value, ...}}}`. The device is the topic's
last level; `subject` and `data.device`, when given, must name the same device (a
command that disagrees with its own topic is malformed: the broker's ACL is on the
topic, so the topic is what the operator was allowed to address).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from gateway.cloudevents import CloudEventError, decode
from gateway.events import CLOCK_SANE_AFTER
from gateway.value_ranges import INT_RANGES

COMMAND_TYPE = "io.millwright.command"
RESULT_TYPE = "io.millwright.command_result"

Status = Literal["done", "rejected", "failed", "expired", "uncertain"]
STATUSES: tuple[Status, ...] = ("done", "rejected", "failed", "expired", "uncertain")
Value = bool | int | float | str

MAX_COMMAND_BYTES = 64 * 1024
MAX_VALUES = 256
MAX_ID_CHARS = 256

# Point types (as drivers name them) by what a command value must be.
_BOOL_TYPES = frozenset({"bool", "boolean", "coil"})
_INT_TYPES = frozenset({"int16", "uint16", "int32", "uint32", "int64", "uint64", "int8",
                        "uint8", "integer", "int", "sbyte", "byte"})
_FLOAT_TYPES = frozenset({"float32", "float64", "float", "double", "number"})
_TEXT_TYPES = frozenset({"string", "str", "text"})


class WritablePoint(Protocol):
    """What the checks read of a point's config (gateway.config_base.PointWriting + name)."""

    name: str
    writable: bool
    min: float | None
    max: float | None
    allowed: list[bool | int | float | str] | None


@dataclass(frozen=True, slots=True)
class Command:
    """A well-formed command, not yet checked against the config or the clock."""

    id: str
    device: str
    time: float  # epoch seconds, from the command's own `time`
    values: dict[str, Value]


@dataclass
class Refused(Exception):
    """The command must not run: its one result has this status and reason."""

    status: Status
    reason: str
    command_id: str | None = None
    device: str = ""
    values: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status}: {self.reason}"


def payload_key(payload: bytes) -> str:
    """The result's key for a command too malformed to carry a usable id."""
    return "malformed:" + hashlib.blake2b(payload, digest_size=16).hexdigest()


def parse(payload: bytes, device: str) -> Command:
    """The command in one MQTT message to `{prefix}/command/{device}`; Refused (rejected,
    "malformed: ...") when it is not one. The id, when it can be read, is kept on the
    refusal so the result names the command."""
    if len(payload) > MAX_COMMAND_BYTES:
        raise Refused("rejected", f"malformed: command of {len(payload)} bytes is over "
                      f"{MAX_COMMAND_BYTES}", device=device)
    try:
        decoded = decode(payload, max_bytes=MAX_COMMAND_BYTES)
    except CloudEventError as exc:
        raise Refused("rejected", f"malformed: {exc}", device=device) from None
    if len(decoded) != 1:
        raise Refused("rejected", "malformed: one command per message, not a batch",
                      device=device)
    event = decoded[0]
    command_id = event["id"]
    if len(command_id) > MAX_ID_CHARS:
        raise Refused("rejected", f"malformed: id longer than {MAX_ID_CHARS} characters",
                      device=device)

    def malformed(reason: str) -> Refused:
        return Refused("rejected", f"malformed: {reason}", command_id, device)

    if event["type"] != COMMAND_TYPE:
        raise malformed(f"type is '{str(event['type'])[:80]}', not '{COMMAND_TYPE}'")
    if "time" not in event:
        raise malformed("no time: a command must say when it was issued (RFC 3339)")
    when = _epoch(event["time"])
    if when is None:
        raise malformed("time is not RFC 3339 with a zone (e.g. 2026-12-06T08:00:00Z)")
    data = event.get("data")
    if not isinstance(data, dict):
        raise malformed('data must be an object: {"values": {point: value}}')
    for named, where in ((event.get("subject"), "subject"), (data.get("device"), "data.device")):
        if named is not None and named != device:
            raise malformed(f"{where} names device '{str(named)[:128]}' but the topic names "
                            f"'{device}'; they must agree")
    unknown = sorted(set(data) - {"values", "device"})
    if unknown:
        raise malformed(f"unknown key data.{unknown[0][:40]}; data holds only values "
                        "(and device)")
    values = data.get("values")
    if not isinstance(values, dict) or not values:
        raise malformed('data.values must be a non-empty object {point: value}')
    if len(values) > MAX_VALUES:
        raise malformed(f"more than {MAX_VALUES} values in one command")
    for point, value in values.items():
        if isinstance(value, bool | str) or (isinstance(value, int | float) and (
                not isinstance(value, float) or math.isfinite(value))):
            continue
        raise malformed(f"the value of '{point[:128]}' must be a number, true/false or "
                        f"text, not {type(value).__name__}")
    return Command(command_id, device, when, dict(values))


def _epoch(text: Any) -> float | None:
    try:
        moment = datetime.fromisoformat(str(text).replace("z", "Z"))
    except ValueError:
        return None
    return None if moment.tzinfo is None else moment.timestamp()


def check(command: Command, points: Sequence[WritablePoint] | None, *, online: bool,
          now: float, max_age_s: float) -> None:
    """Refused unless `command` may run now. `points` are its device's points (None: no such
    device). Order: the clock and the age first (a stale command is `expired` whatever it
    says), then the device, each point and value, and last whether the device is online."""
    def refuse(status: Status, reason: str) -> Refused:
        return Refused(status, reason, command.id, command.device, dict(command.values))

    if now < CLOCK_SANE_AFTER:
        raise refuse("rejected", "the gateway's clock is not synchronised, so the command's "
                     "age cannot be checked; commands are refused until the clock is set "
                     "(check NTP on the gateway)")
    age = now - command.time
    if age > max_age_s:
        raise refuse("expired", f"the command is {age:.1f} s old, over commands.max_age_s "
                     f"= {max_age_s:g}")
    if age < -max_age_s:
        raise refuse("rejected", f"the command's time is {-age:.1f} s in the future (over "
                     f"commands.max_age_s = {max_age_s:g}); check the sender's clock")
    if points is None:
        raise refuse("rejected", f"unknown device '{command.device}'")
    by_name = {point.name: point for point in points}
    for name, value in command.values.items():
        point = by_name.get(name)
        if point is None:
            raise refuse("rejected", f"unknown point '{name[:128]}' of device "
                         f"'{command.device}'")
        if not getattr(point, "writable", False):
            raise refuse("rejected", f"point '{name}' is not writable (the config does not "
                         "say writable = true)")
        problem = value_problem(point, value)
        if problem:
            raise refuse("rejected", f"point '{name}': {problem}")
    if not online:
        raise refuse("rejected", f"device '{command.device}' is offline")


def value_problem(point: WritablePoint, value: Value) -> str | None:
    """Why `value` cannot be written to `point` (its type, min/max, allowed), or None."""
    kind = str(getattr(point, "type", "") or "").lower()
    if kind in _INT_TYPES and _scaled(point):
        # The type names the raw register; the command's value is the engineering value
        # (raw * scale + offset), so any number may do. The driver refuses, with the raw
        # value and range, one whose raw value does not fit.
        kind = f"scaled {kind}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"wrong type: {kind} takes a number, not {value!r}"
    if kind in _BOOL_TYPES and not isinstance(value, bool):
        return f"wrong type: {kind} takes true or false, not {value!r}"
    if kind in _INT_TYPES and (isinstance(value, bool) or not _integral(value)):
        return f"wrong type: {kind} takes an integer, not {value!r}"
    if kind in _FLOAT_TYPES and (isinstance(value, bool) or not isinstance(value, int | float)):
        return f"wrong type: {kind} takes a number, not {value!r}"
    if kind in _TEXT_TYPES and not isinstance(value, str):
        return f"wrong type: {kind} takes text, not {value!r}"
    if kind in INT_RANGES and isinstance(value, int | float) and not isinstance(value, bool):
        low, high = INT_RANGES[kind]
        if not low <= value <= high:
            return f"out of range: {value!r} does not fit {kind} ({low}..{high})"
    limits = point.min is not None or point.max is not None
    if limits and (isinstance(value, bool) or not isinstance(value, int | float)):
        return f"wrong type: the point has min/max, so it takes a number, not {value!r}"
    if point.min is not None and value < point.min:  # type: ignore[operator]
        return f"out of range: {value!r} is below min {point.min:g}"
    if point.max is not None and value > point.max:  # type: ignore[operator]
        return f"out of range: {value!r} is above max {point.max:g}"
    if point.allowed is not None and not any(_same(value, a) for a in point.allowed):
        return f"not allowed: {value!r} is not one of {point.allowed!r}"
    return None


def _scaled(point: WritablePoint) -> bool:
    """Whether the point's value is its raw value scaled (a Modbus scale or offset)."""
    return getattr(point, "scale", 1) != 1 or getattr(point, "offset", 0) != 0


def _integral(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


def _same(value: Value, allowed: Value) -> bool:
    # true is not 1 and "1" is not 1: a value is allowed only as the kind it was listed.
    if isinstance(value, bool) or isinstance(allowed, bool):
        return isinstance(value, bool) and isinstance(allowed, bool) and value == allowed
    if isinstance(value, str) or isinstance(allowed, str):
        return isinstance(value, str) and isinstance(allowed, str) and value == allowed
    return value == allowed


def result_data(command_id: str | None, device: str, status: Status, reason: str = "",
                written: Mapping[str, Any] | None = None,
                read_back: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `data` of an `io.millwright.command_result` event."""
    return {"command_id": command_id, "device": device, "status": status, "reason": reason,
            "written": dict(written or {}), "read_back": dict(read_back or {})}

"""The CloudEvents 1.0 envelope every event travels in, and the events the gateway makes.

A driver produces frames (gateway/frames.py); the runtime turns each into one
telemetry `Event`; the outbox assigns the per-source `seq` and encodes the event to
its JSON wire form once, at commit time, so the uplink only concatenates stored bytes.

Ids are deterministic: the same frame (or the same prediction inputs) always yields
the same id, so a redelivered device message or a replayed outbox row is
recognisably the same event to the outbox and to every cloud consumer.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.frames import Frame, PointSpec

SPEC_VERSION = "1.0"
# 2: telemetry is one frame per event (`data.values`), described once by `device_birth`.
SCHEMA_VERSION = "2"
TYPE_PREFIX = "io.millwright."

TELEMETRY = "telemetry"
MAINTENANCE_NEEDED = "maintenance_needed"
DEVICE_STATUS = "device_status"
DATA_DROPPED = "data_dropped"
DEVICE_BIRTH = "device_birth"
COMMAND_RESULT = "command_result"
KINDS = (TELEMETRY, COMMAND_RESULT, MAINTENANCE_NEEDED, DEVICE_STATUS, DATA_DROPPED,
         DEVICE_BIRTH)

# Eviction order when the outbox is full: lowest priority goes first.
# A command's result goes with maintenance, last: the operator is waiting for it.
PRIORITY = {TELEMETRY: 0, DEVICE_STATUS: 2, DATA_DROPPED: 2, DEVICE_BIRTH: 2,
            COMMAND_RESULT: 3, MAINTENANCE_NEEDED: 3}

# A Pi without an RTC boots in 1970 until NTP answers; anything before this is a guess.
CLOCK_SANE_AFTER = 1_700_000_000.0


@dataclass(slots=True)
class Event:
    """A CloudEvent waiting for its `seq`; `encode` gives the wire form."""

    id: str
    kind: str
    device: str
    subject: str
    time: float
    data: dict[str, Any]
    time_text: str | None = None  # `time` already formatted, when the maker had it
    readings: int = 0  # the values a telemetry event carries (0 for the other kinds)

    @property
    def priority(self) -> int:
        return PRIORITY[self.kind]

    def encode(self, source: str, seq: int) -> str:
        """The structured-mode JSON for this event with the given source and seq.

        Raises orjson.JSONEncodeError only for data no JSON can carry (e.g. an object
        of an unknown type); text that is not valid Unicode and integers beyond 64 bits
        are first made representable (see `_jsonable`).
        """
        envelope = {
            "specversion": SPEC_VERSION,
            "id": self.id,
            "source": source,
            "type": TYPE_PREFIX + self.kind,
            "time": self.time_text or rfc3339(self.time),
            "subject": self.subject,
            "datacontenttype": "application/json",
            "seq": seq,
            "schemaversion": SCHEMA_VERSION,
            "data": self.data,
        }
        try:
            return orjson.dumps(envelope, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        except orjson.JSONEncodeError:
            return orjson.dumps(_jsonable(envelope), option=orjson.OPT_SERIALIZE_NUMPY).decode()


_SECOND_PREFIXES: dict[int, str] = {}


def rfc3339(ts: float) -> str:
    """Epoch seconds as an RFC 3339 UTC timestamp with microseconds.

    On the ingest hot path: the formatted second is cached, only microseconds vary.
    """
    second = math.floor(ts)
    # Rounded, not truncated: 1767225600.123 is stored as ...600.12299990654 and must
    # still read back as .123000.
    micros = round((ts - second) * 1e6)
    if micros >= 1_000_000:
        second, micros = second + 1, 0
    prefix = _SECOND_PREFIXES.get(second)
    if prefix is None:
        if len(_SECOND_PREFIXES) > 4096:
            _SECOND_PREFIXES.clear()
        prefix = _SECOND_PREFIXES[second] = time.strftime("%Y-%m-%dT%H:%M:%S",
                                                          time.gmtime(second))
    return f"{prefix}.{micros:06d}Z"


def clock_synchronised(ts: float) -> bool:
    """False for timestamps from a clock that has obviously not been set yet."""
    return ts >= CLOCK_SANE_AFTER


def event_id(*parts: object) -> str:
    """A deterministic 128-bit id from the parts that make an event what it is."""
    h = hashlib.blake2b(digest_size=16)
    h.update("\x1f".join(map(_canonical, parts)).encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def _canonical(part: object) -> str:
    if isinstance(part, float):
        return repr(part)
    if isinstance(part, dict | list | tuple):
        return json.dumps(part, sort_keys=True, separators=(",", ":"), default=str)
    return str(part)


def _jsonable(node: Any) -> Any:
    """`node` with lone surrogates replaced (U+FFFD) and integers beyond 64 bits as floats.

    The slow path, taken only when the fast encoder refused an event: a device that
    sends broken text or huge numbers still gets its reading through, visibly mangled.
    """
    if isinstance(node, str):
        return clean_text(node)
    if isinstance(node, bool):
        return node
    if isinstance(node, int) and not -(2**63) <= node < 2**64:
        return float(node) if abs(node) < 1e308 else None
    if isinstance(node, dict):
        return {clean_text(str(k)): _jsonable(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_jsonable(v) for v in node]
    return node


def clean_text(text: str) -> str:
    """Valid Unicode for any str: each lone surrogate (e.g. an undecodable byte) becomes U+FFFD."""
    try:
        text.encode()
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in text)


def telemetry(frame: Frame) -> Event:
    """The telemetry event for one frame (on the ingest hot path: each time formatted once)."""
    taken_text = rfc3339(frame.time)
    data: dict[str, Any] = {"device": frame.device, "time": taken_text, "values": frame.values}
    key = [frame.device, repr(frame.time), _json_text(frame.values)]
    if frame.quality:
        data["quality"] = frame.quality
        key.append(_json_text(frame.quality))
    if frame.times:
        data["times"] = {point: rfc3339(at) for point, at in frame.times.items()}
        key.append(_json_text(frame.times))
    if frame.time < CLOCK_SANE_AFTER:
        data["clock_unsynchronised"] = True
    # Text a device sent that is not valid Unicode still hashes (see clean_text).
    digest = hashlib.blake2b("\x1f".join(key).encode("utf-8", "surrogatepass"), digest_size=16)
    return Event(
        id=digest.hexdigest(),
        kind=TELEMETRY,
        device=frame.device,
        subject=frame.device,
        time=frame.time,
        data=data,
        time_text=taken_text,
        readings=len(frame.values),
    )


def _json_text(node: Any) -> str:
    """`node` as JSON text for hashing: orjson's, or (for text that is not valid Unicode or
    integers beyond 64 bits, which orjson refuses) the json module's."""
    try:
        return orjson.dumps(node).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(node, default=str)


def device_birth(device: str, points: Sequence[PointSpec], at: float | None = None) -> Event:
    """What a device's points are (name, type, unit, writable): sent once, not with every value.

    A birth is an event of its time: the id hashes the description and that time.
    """
    described = [p.as_json() for p in points]
    return _of_device(device, DEVICE_BIRTH, {"device": device, "points": described}, at,
                      described)


def device_status(device: str, status: str, reason: str = "", at: float | None = None) -> Event:
    """An online/offline announcement for one device."""
    return _of_device(device, DEVICE_STATUS,
                      {"device": device, "status": status, "reason": reason}, at, status)


def _of_device(device: str, kind: str, data: dict[str, Any], at: float | None,
               what: object) -> Event:
    """An event about one device, its id hashing the device, the kind, `what` and the time."""
    now = time.time() if at is None else at
    return Event(id=event_id(device, kind, what, now), kind=kind, device=device,
                 subject=device, time=now, data=data)


def data_dropped(
    counts: dict[str, int], first_time: float, last_time: float, devices: list[str],
    at: float | None = None, readings: dict[str, int] | None = None,
    extra: dict[str, Any] | None = None,
) -> Event:
    """The announcement that the outbox dropped events, with counts by reason: of events,
    and of the readings the dropped telemetry carried; `extra` adds fields (e.g. where a
    damaged outbox was moved, and which seqs were lost)."""
    now = time.time() if at is None else at
    lost = readings or {}
    data = {
        "dropped": sum(counts.values()),
        "by_reason": counts,
        "readings": sum(lost.values()),
        "readings_by_reason": lost,
        "first_time": rfc3339(first_time),
        "last_time": rfc3339(last_time),
        "devices": sorted(devices),
        **(extra or {}),
    }
    return Event(
        id=event_id(DATA_DROPPED, now, data),
        kind=DATA_DROPPED,
        device="_gateway",
        subject="_gateway",
        time=now,
        data=data,
    )


def maintenance_needed(asset: str, data: dict[str, Any], inputs_key: object,
                       at: float) -> Event:
    """A prediction that `asset` needs maintenance; the id hashes the inputs behind it."""
    return Event(
        id=event_id(asset, MAINTENANCE_NEEDED, inputs_key),
        kind=MAINTENANCE_NEEDED,
        device=asset,
        subject=asset,
        time=at,
        data=data,
    )


def command_result(key: str, device: str, data: dict[str, Any], at: float) -> Event:
    """The one result of a command (gateway/command_runner.py); `key` is the command's id
    (or, for a command too malformed to have one, a hash of its payload). The event id
    hashes only the key: a result sent again is the same event, so consumers keep one."""
    return Event(id=event_id(key, COMMAND_RESULT), kind=COMMAND_RESULT, device=device,
                 subject=device, time=at, data=data)

"""Decoding what the gateway publishes: structured-mode CloudEvents 1.0 JSON, one event or a batch.

`decode(payload)` is the consumer's side of gateway/events.py: an MQTT message
holds one CloudEvent (a JSON object, `application/cloudevents+json`) or a batch
(a JSON array of them, `application/cloudevents-batch+json`), zstd-compressed when
the gateway runs with `cloud.compression = "zstd"` (the MQTT 5 user property
content-encoding says so; the zstd frame's magic number is recognised too, so one
call decodes either form). It returns the
events as dicts, or raises `CloudEventError` with one line saying what is wrong
and where (`event 3 of the batch: ...`). It never raises anything else, whatever
the bytes: a consumer can count a rejection and carry on.

Checked: UTF-8 JSON (no BOM, no NaN/Infinity, bounded nesting and size); the
required attributes `specversion` ("1.0"), `id`, `source`, `type` as non-empty
strings; the optional ones the gateway sets (`time` as RFC 3339, `subject`,
`datacontenttype`, `dataschema`) as strings; attribute names as CloudEvents
allows (lower-case ASCII letters and digits); extension values as scalars; and
the gateway's own extensions `seq` (a non-negative integer) and `schemaversion`.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import orjson
import zstandard

__all__ = ["CloudEventError", "MAX_PAYLOAD_BYTES", "SPEC_VERSION", "decode", "telemetry_readings"]

SPEC_VERSION = "1.0"
# The largest message the uplink may be configured to send (cloud.batch_max_bytes' cap).
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024

REQUIRED = ("specversion", "id", "source", "type")
OPTIONAL_STRINGS = ("subject", "datacontenttype", "dataschema", "schemaversion")
_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]+")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"  # no JSON text starts with '(' : the two cannot be confused
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}):(\d{2})(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


class CloudEventError(ValueError):
    """The payload is not a valid CloudEvent (or batch); the message says what and where."""


def decode(payload: bytes | bytearray | memoryview, *, max_bytes: int = MAX_PAYLOAD_BYTES,
           content_encoding: str | None = None) -> list[dict[str, Any]]:
    """The events in one message: `[event]` for a single event, the list for a batch.

    `content_encoding` is the message's MQTT 5 user property of that name, when it has
    one ("zstd"); without it a zstd frame is still recognised by its magic number.
    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise CloudEventError(f"payload must be bytes, got {type(payload).__name__}")
    if len(payload) > max_bytes:
        raise CloudEventError(f"payload of {len(payload)} bytes exceeds the {max_bytes}-byte "
                              "limit")
    if content_encoding not in (None, "identity", "zstd"):
        raise CloudEventError(f"content-encoding '{_short(content_encoding, 40)}' is not "
                              "supported; the gateway sends zstd or nothing")
    if content_encoding == "zstd" or bytes(payload[:4]) == ZSTD_MAGIC:
        payload = _unzstd(payload, max_bytes)
    try:
        document = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        # Covers invalid UTF-8, a BOM, NaN/Infinity, lone surrogates and nesting past 1024.
        raise CloudEventError(f"payload is not JSON: {_short(str(exc), 120)}") from None
    if isinstance(document, dict):
        _check_event(document, "the event")
        return [document]
    if isinstance(document, list):
        for index, event in enumerate(document):
            where = f"event {index} of the batch"
            if not isinstance(event, dict):
                raise CloudEventError(f"{where}: must be a JSON object, got {_kind(event)}")
            _check_event(event, where)
        return document
    raise CloudEventError(f"payload must be a JSON object (one event) or an array (a batch), "
                          f"got {_kind(document)}")


def _unzstd(payload: bytes | bytearray | memoryview, max_bytes: int) -> bytes:
    """The decompressed payload, read at most `max_bytes` + 1 far (a frame's own claimed
    size is not trusted, so a small bomb cannot allocate gigabytes)."""
    try:
        with zstandard.ZstdDecompressor().stream_reader(bytes(payload)) as reader:
            out = bytearray()
            while len(out) <= max_bytes:
                chunk = reader.read(max_bytes + 1 - len(out))
                if not chunk:
                    break
                out += chunk
    except zstandard.ZstdError as exc:
        raise CloudEventError(f"payload is not valid zstd: {_short(str(exc), 120)}") from None
    if len(out) > max_bytes:
        raise CloudEventError(f"payload decompresses to more than the {max_bytes}-byte limit")
    return bytes(out)


def telemetry_readings(event: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The readings in one telemetry event: (device, point, time, value, quality) for each
    value, with its own time and quality where the frame names one (schemaversion 2), or
    the one reading of a schemaversion 1 event."""
    data = event.get("data") or {}
    if "values" not in data:  # schemaversion 1: one reading per event
        return [(data.get("device"), data.get("point"), data.get("source_time") or
                 event.get("time"), data.get("value"), data.get("quality", "good"))]
    times = data.get("times") or {}
    quality = data.get("quality") or {}
    return [(data["device"], point, times.get(point, data["time"]), value,
             quality.get(point, "good")) for point, value in data["values"].items()]


def _check_event(event: dict[str, Any], where: str) -> None:
    for name in REQUIRED:
        value = event.get(name)
        if value is None:
            raise CloudEventError(f"{where}: required attribute '{name}' is missing")
        if not isinstance(value, str) or not value:
            raise CloudEventError(f"{where}: '{name}' must be a non-empty string, got "
                                  f"{_show(value)}")
    if event["specversion"] != SPEC_VERSION:
        raise CloudEventError(f"{where}: 'specversion' must be \"{SPEC_VERSION}\", got "
                              f"{_show(event['specversion'])}")
    if "data" in event and "data_base64" in event:
        raise CloudEventError(f"{where}: has both 'data' and 'data_base64'; one at most")
    for name, value in event.items():
        if name in ("data", "data_base64"):
            continue
        if not _ATTRIBUTE_NAME.fullmatch(name):
            raise CloudEventError(f"{where}: attribute name {_show(name)} is not allowed; "
                                  "names are lower-case ASCII letters and digits")
        if isinstance(value, dict | list):
            raise CloudEventError(f"{where}: attribute '{name}' must be a string, number or "
                                  f"boolean, got {_kind(value)}")
    for name in OPTIONAL_STRINGS:
        value = event.get(name)
        if value is not None and not isinstance(value, str):
            raise CloudEventError(f"{where}: '{name}' must be a string, got {_show(value)}")
    if event.get("time") is not None:
        _check_time(event["time"], where)
    if "data_base64" in event and not isinstance(event["data_base64"], str):
        raise CloudEventError(f"{where}: 'data_base64' must be a string")
    seq = event.get("seq")
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or seq < 0):
        raise CloudEventError(f"{where}: 'seq' must be a non-negative integer, got {_show(seq)}")


def _check_time(value: Any, where: str) -> None:
    problem = f"{where}: 'time' must be an RFC 3339 timestamp, got {_show(value)}"
    if not isinstance(value, str):
        raise CloudEventError(problem)
    match = _RFC3339.fullmatch(value)
    if match is None:
        raise CloudEventError(problem)
    day, hour_minute, second, fraction, offset = match.groups()
    # RFC 3339 allows a leap second (:60), which datetime cannot hold: check it as :59.
    if second == "60":
        second = "59"
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        datetime.fromisoformat(f"{day}T{hour_minute}:{second}{(fraction or '')[:7]}{offset}")
    except ValueError:
        raise CloudEventError(problem) from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _show(value: Any) -> str:
    if isinstance(value, dict | list):
        return _kind(value)
    return _short(repr(value), 60)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."

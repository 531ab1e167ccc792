"""Sparkplug topic names, the ids that go in them, and the primary host's STATE messages.

Topics (Sparkplug 3.0, chapter "Topics and Messages"):
`spBv1.0/{group_id}/{NBIRTH|NDEATH|NDATA|NCMD}/{edge_node_id}`,
`spBv1.0/{group_id}/{DBIRTH|DDEATH|DDATA|DCMD}/{edge_node_id}/{device_id}` and the host's
`spBv1.0/STATE/{host_id}`. An id is any UTF-8 text but `+`, `/` and `#`; it is never empty,
and (MQTT's own rule for topic names) holds no U+0000. The STATE payload is JSON
`{"online": bool, "timestamp": ms}` in 3.0; the 2.2 text `ONLINE`/`OFFLINE` is understood too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import orjson

NAMESPACE = "spBv1.0"

NodeVerb = Literal["NBIRTH", "NDEATH", "NDATA", "NCMD"]
DeviceVerb = Literal["DBIRTH", "DDEATH", "DDATA", "DCMD"]
NODE_VERBS: tuple[NodeVerb, ...] = ("NBIRTH", "NDEATH", "NDATA", "NCMD")
DEVICE_VERBS: tuple[DeviceVerb, ...] = ("DBIRTH", "DDEATH", "DDATA", "DCMD")

_RESERVED = {"+": "plus", "/": "slash", "#": "number sign", "\x00": "NUL"}


def check_id(value: str, where: str) -> str:
    """`value` if it can be a Sparkplug group, edge node, device or host id; else a ValueError
    naming `where` (the config key or the device) and the fix."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}: must be a non-empty string")
    for ch, label in _RESERVED.items():
        if ch in value:
            raise ValueError(
                f"{where}: {value!r} holds '{ch}' ({label}), which Sparkplug reserves "
                "in group, edge node and device ids; rename it without + / # (e.g. use - or _)"
                if ch != "\x00" else
                f"{where}: {value!r} holds a NUL character, which no MQTT topic can carry; "
                "remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{where}: {value!r} is not valid UTF-8 text (a lone surrogate); "
                         "rename it") from None
    return value


def node_topic(group_id: str, verb: NodeVerb, edge_node_id: str) -> str:
    """`spBv1.0/{group}/{verb}/{edge_node}` for a message of the node itself."""
    if verb not in NODE_VERBS:
        raise ValueError(f"{verb!r} is not a node message type; use one of {NODE_VERBS}")
    return f"{NAMESPACE}/{group_id}/{verb}/{edge_node_id}"


def device_topic(group_id: str, verb: DeviceVerb, edge_node_id: str, device_id: str) -> str:
    """`spBv1.0/{group}/{verb}/{edge_node}/{device}` for a message of one device; the device
    name is checked (`check_id`), since it comes from the device's config, not ours."""
    if verb not in DEVICE_VERBS:
        raise ValueError(f"{verb!r} is not a device message type; use one of {DEVICE_VERBS}")
    check_id(device_id, f"device {device_id!r}")
    return f"{NAMESPACE}/{group_id}/{verb}/{edge_node_id}/{device_id}"


def state_topic(host_id: str) -> str:
    """`spBv1.0/STATE/{host_id}`: where a primary host says whether it is online (3.0)."""
    return f"{NAMESPACE}/STATE/{host_id}"


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed Sparkplug topic: `verb` is NBIRTH...DCMD or STATE (then `edge_node_id` is the
    host id and `group_id` is empty)."""

    group_id: str
    verb: str
    edge_node_id: str
    device_id: str | None = None


def parse_topic(topic: str) -> Topic:
    """The parts of a Sparkplug topic; ValueError for anything else."""
    parts = topic.split("/")
    if len(parts) == 3 and parts[0] == NAMESPACE and parts[1] == "STATE":
        return Topic("", "STATE", parts[2])
    if parts[0] != NAMESPACE or len(parts) not in (4, 5):
        raise ValueError(f"{topic!r} is not a Sparkplug B topic (spBv1.0/group/TYPE/node[/device])")
    group, verb, node = parts[1], parts[2], parts[3]
    device = parts[4] if len(parts) == 5 else None
    expected = DEVICE_VERBS if device is not None else NODE_VERBS
    if verb not in expected:
        raise ValueError(f"{topic!r}: message type {verb!r} does not fit a "
                         f"{'device' if device is not None else 'node'} topic")
    return Topic(group, verb, node, device)


@dataclass(frozen=True, slots=True)
class HostState:
    """What a STATE message said: `timestamp` (ms) is None for the 2.2 text form."""

    online: bool
    timestamp: int | None = None


def parse_state(payload: bytes | str) -> HostState:
    """The host's state from a STATE payload: 3.0 JSON `{"online": bool, "timestamp": ms}`,
    or the 2.2 text `ONLINE` / `OFFLINE`. ValueError, saying what is wrong, for anything else."""
    raw = payload.encode() if isinstance(payload, str) else bytes(payload)
    text = raw.strip()
    if text in (b"ONLINE", b"OFFLINE"):
        return HostState(text == b"ONLINE")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValueError(f"STATE payload is neither JSON nor ONLINE/OFFLINE: "
                         f"{raw[:60]!r}") from None
    if not isinstance(document, dict):
        raise ValueError("STATE payload must be a JSON object "
                         "{\"online\": ..., \"timestamp\": ...}")
    online, stamp = document.get("online"), document.get("timestamp")
    if not isinstance(online, bool):
        raise ValueError(f"STATE payload: 'online' must be true or false, got {online!r}")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or stamp < 0:
        raise ValueError(f"STATE payload: 'timestamp' must be milliseconds since the epoch, "
                         f"got {stamp!r}")
    return HostState(online, int(stamp))


def state_payload(online: bool, timestamp_ms: int) -> bytes:
    """A 3.0 STATE payload (what a host publishes; the tests' hosts use it)."""
    return orjson.dumps({"online": online, "timestamp": timestamp_ms})


class HostWatch:
    """The primary host's last known state. A 3.0 STATE older than the last one seen is
    ignored (the spec's rule: a stale OFFLINE must not take the node off); the 2.2 text form,
    having no timestamp, always counts."""

    def __init__(self) -> None:
        self.online = False
        self._last_stamp: int | None = None

    def observe(self, state: HostState) -> bool:
        """Take one STATE message; True when the host's online flag changed."""
        if state.timestamp is not None:
            if self._last_stamp is not None and state.timestamp < self._last_stamp:
                return False
            self._last_stamp = state.timestamp
        changed = state.online != self.online
        self.online = state.online
        return changed

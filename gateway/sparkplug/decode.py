"""Reading what a Sparkplug edge node sends: protobuf bytes -> plain dicts, aliases resolved.

The consumer's side of gateway/sparkplug/translate.py, as gateway/cloudevents.py is of
the CloudEvents envelope. `decode(payload)` gives one payload as a dict on its own;
`Reader` follows births per edge node (as a host does), so the metrics of a DDATA or NDATA,
which carry only aliases, come back with their names, datatypes and signed values.
Anything that is not a Sparkplug B payload raises `SparkplugError` (one line). A payload
compressed in Eclipse Tahu's convention (uuid `SPBV1.0_COMPRESSED`, gateway/sparkplug/
compression.py) is unwrapped first; `compression` then names its algorithm.

A decoded payload: `{"timestamp", "seq", "compression", "metrics": [metric...]}`; a metric:
`{"name", "alias", "timestamp", "datatype" (name, e.g. "Float"), "value", "is_null",
"is_historical", "quality" ("good" | "bad" | "uncertain"), "properties": {key: value}}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf.message import DecodeError

from gateway.sparkplug import datatypes as dt
from gateway.sparkplug import sparkplug_b_pb2 as pb
from gateway.sparkplug.compression import CompressionError, is_wrapped, unwrap
from gateway.sparkplug.names import Topic, parse_topic
from gateway.sparkplug.payloads import QUALITY, QUALITY_NAMES

__all__ = ["Reader", "SparkplugError", "decode"]

MAX_PAYLOAD_BYTES = 64 * 1024 * 1024


class SparkplugError(ValueError):
    """The bytes are not a Sparkplug B payload, or break the session's rules (the message
    says which)."""


def decode(payload: bytes, known: Mapping[int, tuple[str, int]] | None = None) -> dict[str, Any]:
    """One payload as a dict; `known` maps alias -> (name, datatype) from the births, for
    data messages that carry aliases only."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SparkplugError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    message = _parse(bytes(payload))
    compression = None
    if is_wrapped(message):
        try:
            inner, compression = unwrap(message, MAX_PAYLOAD_BYTES)
        except CompressionError as exc:
            raise SparkplugError(str(exc)) from None
        message = _parse(inner)
    known = known or {}
    metrics = []
    for metric in message.metrics:
        name, datatype = metric.name if metric.HasField("name") else None, None
        if metric.HasField("alias") and metric.alias in known:
            born_name, datatype = known[metric.alias]
            name = name or born_name
        if metric.HasField("datatype"):
            datatype = metric.datatype
        properties = _properties(metric.properties) if metric.HasField("properties") else {}
        code = properties.get(QUALITY)
        metrics.append({
            "name": name,
            "alias": metric.alias if metric.HasField("alias") else None,
            "timestamp": metric.timestamp if metric.HasField("timestamp") else None,
            "datatype": dt.NAMES.get(datatype) if datatype is not None else None,
            "value": dt.get_value(metric, datatype),
            "is_null": metric.is_null,
            "is_historical": metric.is_historical,
            "quality": "good" if code is None else QUALITY_NAMES.get(code, "bad"),
            "properties": properties,
        })
    return {
        "timestamp": message.timestamp if message.HasField("timestamp") else None,
        "seq": message.seq if message.HasField("seq") else None,
        "compression": compression,
        "metrics": metrics,
    }


def _parse(payload: bytes) -> pb.Payload:
    try:
        return pb.Payload.FromString(payload)
    except DecodeError as exc:
        raise SparkplugError(f"not a Sparkplug B payload: {exc}") from None


def _properties(props: pb.Payload.PropertySet) -> dict[str, Any]:
    if len(props.keys) != len(props.values):
        raise SparkplugError(f"a PropertySet has {len(props.keys)} keys but "
                             f"{len(props.values)} values")
    return {key: dt.get_value(value, value.type if value.HasField("type") else None)
            for key, value in zip(props.keys, props.values, strict=True)}


class Reader:
    """A host's view of edge nodes: births define aliases; data is read through them.

    `read(topic, payload)` returns the decoded payload with `topic` (group, verb, node,
    device) added. It checks what a host checks: an NBIRTH has seq 0, each later message
    of the node has the seq after the last (mod 256), no data of a node or device comes
    before its birth, and a data alias was born. `errors` collects what broke (a host
    would ask for a rebirth); reading goes on.
    """

    def __init__(self) -> None:
        self.aliases: dict[tuple[str, str], dict[int, tuple[str | None, str, int]]] = {}
        self.seq: dict[tuple[str, str], int | None] = {}
        self.born: dict[tuple[str, str], set[str | None]] = {}
        self.bd_seq: dict[tuple[str, str], int] = {}
        self.errors: list[str] = []

    def read(self, topic: str, payload: bytes) -> dict[str, Any]:
        where = parse_topic(topic)
        if where.verb == "STATE":
            raise SparkplugError("STATE is JSON, not a Sparkplug B payload: use parse_state")
        node = (where.group_id, where.edge_node_id)
        device = where.device_id
        aliases = self.aliases.setdefault(node, {})
        known = {alias: (name, datatype) for alias, (_d, name, datatype) in aliases.items()}
        decoded = decode(payload, known)
        decoded["topic"] = where
        self._check_seq(node, where, decoded)
        if where.verb == "NBIRTH":
            self.born[node] = {None}
            for key in [k for k, v in aliases.items() if v[0] is None]:
                del aliases[key]
            for metric in decoded["metrics"]:
                if metric["name"] == "bdSeq":
                    self.bd_seq[node] = metric["value"]
        if where.verb in ("NBIRTH", "DBIRTH"):
            self._learn(node, device, decoded)
        elif where.verb in ("NDATA", "DDATA"):
            if device not in self.born.get(node, set()):
                self.errors.append(f"{topic}: data before its birth")
            for metric in decoded["metrics"]:
                if metric["alias"] is not None and metric["alias"] not in aliases:
                    self.errors.append(f"{topic}: alias {metric['alias']} was never born")
        elif where.verb == "DDEATH":
            self.born.get(node, set()).discard(device)
        elif where.verb == "NDEATH":
            self.born[node] = set()
        return decoded

    def _learn(self, node: tuple[str, str], device: str | None,
               decoded: dict[str, Any]) -> None:
        aliases = self.aliases[node]
        for metric in decoded["metrics"]:
            if metric["name"] is None or metric["datatype"] is None:
                self.errors.append(f"birth of {device or 'the node'}: a metric without "
                                   "name or datatype")
                continue
            alias = metric["alias"]
            if alias is not None:
                owner = aliases.get(alias)
                if owner is not None and (owner[0], owner[1]) != (device, metric["name"]):
                    self.errors.append(f"alias {alias} of {device}/{metric['name']} is already "
                                       f"{owner[0]}/{owner[1]}")
                datatype = pb.DataType.Value(metric["datatype"])
                aliases[alias] = (device, metric["name"], datatype)
        self.born.setdefault(node, set()).add(device)

    def _check_seq(self, node: tuple[str, str], where: Topic, decoded: dict[str, Any]) -> None:
        seq = decoded["seq"]
        if where.verb in ("NDEATH", "NCMD", "DCMD"):
            if seq is not None:
                self.errors.append(f"{where.verb} carries a seq ({seq}); it must not")
            return
        if seq is None:
            self.errors.append(f"{where.verb} of {where.device_id or where.edge_node_id} "
                               "has no seq")
            return
        if where.verb == "NBIRTH":
            if seq != 0:
                self.errors.append(f"NBIRTH has seq {seq}; it must be 0")
        else:
            last = self.seq.get(node)
            if last is None or seq != (last + 1) % 256:
                self.errors.append(f"{where.verb} of {where.device_id or where.edge_node_id}: "
                                   f"seq {seq} after {last}")
        self.seq[node] = seq

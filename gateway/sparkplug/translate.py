"""Stored CloudEvents into Sparkplug B messages, at send time: births, deaths, DDATA, NDATA.

One outbox of CloudEvents serves every cloud format; under `sparkplug_b` the uplink hands
each stored event (decoded, as gateway/events.py made it) to `Translator.translate`, which
returns the messages to publish, in order, with their seq: a frame becomes a DDATA (aliases
only), preceded by a DBIRTH when its device is not born in this session or its points
changed (a new point, a value its metric's datatype cannot carry: aliases are kept). The
mapping of every kind of event is in docs/sparkplug.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import orjson
from google.protobuf.message import DecodeError

from gateway.sparkplug import datatypes as dt
from gateway.sparkplug import names
from gateway.sparkplug import sparkplug_b_pb2 as pb
from gateway.sparkplug.commands import COMMAND_METRICS, result_metrics
from gateway.sparkplug.maintenance import maintenance_metrics, maintenance_values
from gateway.sparkplug.node import DeviceDefs, NodeSession
from gateway.sparkplug.payloads import (
    GATEWAY,
    NODE_METRICS,
    REBIRTH,
    Health,
    Message,
    NotBorn,
    add_metric,
    ms,
)

__all__ = ["Health", "Message", "NotBorn", "Translator"]

_SCALARS = (bool, int, float, str)


class Translator:
    """Events into messages for one edge node. No I/O (the session's `begin` does its own)."""

    def __init__(self, session: NodeSession, group_id: str, edge_node_id: str, *,
                 asset_devices: Mapping[str, str | None] | None = None,
                 datatype_in_data: bool = False,
                 clock: Callable[[], float] = time.time,
                 health: Callable[[], Health] | None = None, commands: bool = False) -> None:
        self.session = session
        self.group_id = names.check_id(group_id, "cloud.sparkplug.group_id")
        self.edge_node_id = names.check_id(edge_node_id, "cloud.sparkplug.edge_node_id")
        # asset -> the device whose metrics its maintenance_needed updates (None: the node).
        self.asset_devices = dict(asset_devices or {})
        self.datatype_in_data = datatype_in_data
        self.clock = clock
        self.health = Health()
        # Where the node's figures come from (the outbox's own counts); None: from the
        # data_dropped events translated so far.
        self.health_source = health
        self._node_last: dict[str, tuple[Any, int]] = {}
        self._offline: set[str] = set()
        self.commands = commands  # command results are node metrics, born in the NBIRTH
        for name, datatype in NODE_METRICS + (COMMAND_METRICS if commands else ()):
            session.define_node_metric(name, datatype)
        for asset, device in self.asset_devices.items():
            if device is None:
                self._define_node_maintenance(asset)

    # -- what the caller needs -------------------------------------------------------------

    def death(self) -> Message:
        """The NDEATH to register as the will (QoS 1, not retained) of the CONNECT that
        `session.begin()` numbered: the bdSeq metric, by name, and no seq."""
        if self.session.bd_seq is None:
            raise NotBorn("call session.begin() before the CONNECT: the will needs its bdSeq")
        payload = pb.Payload(timestamp=self._now())
        metric = payload.metrics.add(name="bdSeq", timestamp=payload.timestamp,
                                     datatype=dt.UINT64)
        metric.long_value = self.session.bd_seq
        return self._message(payload, "NDEATH", None)

    def births(self, health: Health | None = None) -> list[Message]:
        """NBIRTH (seq 0) and a DBIRTH for every known device not offline: after the CONNECT,
        and again on the host's `Node Control/Rebirth`."""
        if self.session.bd_seq is None:
            raise NotBorn("call session.begin() before the CONNECT and births")
        if health is not None:
            self.health = health
        elif self.health_source is not None:
            self.health = self.health_source()
        self.session.rebirth()
        out = [self._node_birth()]
        for device in self.session.devices:
            if device not in self._offline:
                out.append(self._device_birth(device))
        return out

    def needs_birth(self, device: str) -> bool:
        """Whether a frame of `device` would need a DBIRTH first (translate sends it)."""
        return device not in self.session.born

    def remember_birth(self, device: str, points: Iterable[Any]) -> None:
        """Describe `device` from its driver's points (PointSpec or their JSON), e.g. at start,
        when the outbox no longer holds its device_birth; born at its next frame."""
        self._describe(device, [p if isinstance(p, dict) else p.as_json() for p in points])

    def is_rebirth_request(self, payload: bytes) -> bool:
        """Whether an NCMD payload asks for `Node Control/Rebirth` = true (by name or alias)."""
        alias = self.session.node_metrics[REBIRTH].alias
        try:
            command = pb.Payload.FromString(payload)
        except DecodeError:  # an undecodable command is simply not a rebirth
            return False
        return any((m.name == REBIRTH or (not m.name and m.alias == alias))
                   and m.WhichOneof("value") == "boolean_value" and m.boolean_value
                   for m in command.metrics)

    # -- events ----------------------------------------------------------------------------

    def translate(self, event: dict[str, Any], *, historical: bool = False) -> list[Message]:
        """The messages for one stored event, in the order to publish (possibly none).
        `historical` flags every data metric `is_historical` (store-and-forward)."""
        if not self.session.node_born:
            raise NotBorn("send births() after the CONNECT before any event")
        kind = str(event.get("type", "")).removeprefix("io.millwright.")
        data = event.get("data") or {}
        if kind == "telemetry":
            return self._telemetry(data, historical)
        if kind == "device_birth":
            self._describe(data["device"], data.get("points") or [])
            self._offline.discard(data["device"])
            return [self._device_birth(data["device"])]
        if kind == "device_status":
            return self._status(data, event, historical)
        if kind == "maintenance_needed":
            return self._maintenance(data, event, historical)
        if kind == "command_result":
            return [self._node_data(result_metrics(data), ms(event["time"]), historical)] \
                if self.commands else []
        if kind == "data_dropped":
            # The outbox counted the drop before it announced it: its figures include it.
            self.health = self.health_source() if self.health_source is not None else Health(
                self.health.outbox_depth, self.health.oldest_age_s,
                self.health.drops + int(data.get("dropped", 0)),
                self.health.dropped_readings + int(data.get("readings", 0)))
            at = ms(event["time"])
            return [self._node_data({"Gateway/drops": self.health.drops,
                                     "Gateway/dropped_readings": self.health.dropped_readings,
                                     "Gateway/last_drop": orjson.dumps(data).decode()},
                                    at, historical)]
        return []

    def _telemetry(self, data: dict[str, Any], historical: bool) -> list[Message]:
        device, values = data["device"], data.get("values") or {}
        if not all(v is None or isinstance(v, _SCALARS) for v in values.values()):
            # JSON can hold what no metric can (an array, an object): it travels as its text.
            values = {p: v if v is None or isinstance(v, _SCALARS) else
                      orjson.dumps(v).decode() for p, v in values.items()}
        quality, times = data.get("quality") or {}, data.get("times") or {}
        frame_ms = ms(data["time"])
        out: list[Message] = []
        defs = self.session.devices.get(device)
        if defs is None:  # never described: infer the types from this frame
            defs = self._describe(device, [{"name": p, "type": None} for p in values],
                                  values, inferred=True)
        missing = [p for p in values if p not in defs.metrics]
        misfit = [p for p, v in values.items()
                  if p in defs.metrics and not dt.fits(defs.metrics[p].datatype, v)]
        # After a redefinition every value fits its (re)typed metric: checked once per value.
        if missing or misfit:
            specs = [(m.name, dt.retype(m.datatype, values[m.name]) if m.name in misfit
                      else m.datatype, m.unit, m.writable) for m in defs.metrics.values()]
            specs += [(p, dt.datatype_of_value(values[p]), None, False) for p in missing]
            defs = self._define(device, specs, defs.inferred)
        self._offline.discard(device)
        if device not in self.session.born:
            out.append(self._device_birth(device))
        payload = pb.Payload(timestamp=self._now())
        for point, value in values.items():
            stamp = ms(times[point]) if point in times else frame_ms
            grade = quality.get(point, "good" if value is not None else "bad")  # null: never good
            add_metric(payload, defs.metrics[point], value, stamp, historical=historical,
                       quality=grade, datatype=self.datatype_in_data, fits=True)
            defs.last[point] = (value, stamp, grade)
        out.append(self._message(payload, "DDATA", device))
        return out

    def _status(self, data: dict[str, Any], event: dict[str, Any],
                historical: bool) -> list[Message]:
        device, status = data.get("device"), data.get("status")
        if device == GATEWAY or device is None:
            return [self._node_data({"Gateway/status": str(status),
                                     "Gateway/status_reason": str(data.get("reason", ""))},
                                    ms(event["time"]), historical)]
        if status == "offline":
            self._offline.add(device)
            if device in self.session.born:
                self.session.born.discard(device)
                return [self._message(pb.Payload(timestamp=self._now()), "DDEATH", device)]
            return []
        if status == "online":
            self._offline.discard(device)
            if device in self.session.devices and device not in self.session.born:
                return [self._device_birth(device)]
        return []

    def _maintenance(self, data: dict[str, Any], event: dict[str, Any],
                     historical: bool) -> list[Message]:
        asset = str(data.get("asset") or event.get("subject"))
        at = ms(event["time"])
        if asset not in self.asset_devices:  # an asset nobody named: on the node
            self.asset_devices[asset] = None
            self._define_node_maintenance(asset)
            return self.births(None) + self._maintenance(data, event, historical)
        device = self.asset_devices[asset]
        values = maintenance_values(data)
        if device is None:
            return [self._node_data({f"Maintenance/{asset}/{k}": v for k, v in values.items()},
                                    at, historical)]
        out: list[Message] = []
        defs = self.session.devices.get(device)
        if defs is None or "Maintenance/probability" not in defs.metrics:
            specs = [] if defs is None else [(m.name, m.datatype, m.unit, m.writable)
                                             for m in defs.metrics.values()]
            defs = self._define(device, specs, defs is None or defs.inferred)
        if device not in self.session.born:
            out.append(self._device_birth(device))
        payload = pb.Payload(timestamp=self._now())
        for key, value in values.items():
            metric = defs.metrics[f"Maintenance/{key}"]
            add_metric(payload, metric, value, at, historical=historical,
                       datatype=self.datatype_in_data)
            defs.last[metric.name] = (value, at, "good")
        out.append(self._message(payload, "DDATA", device))
        return out

    # -- building blocks -------------------------------------------------------------------

    def _describe(self, device: str, points: list[dict[str, Any]],
                  values: Mapping[str, Any] | None = None, inferred: bool = False) -> DeviceDefs:
        known = self.session.devices.get(device)
        last = known.last if known is not None else {}
        specs = []
        for point in points:
            name = str(point["name"])
            value = (values or {}).get(name, last.get(name, (None,))[0])
            datatype = dt.datatype_of(point.get("type"), value)
            if not dt.fits(datatype, value):
                datatype = dt.datatype_of_value(value)
            specs.append((name, datatype, point.get("unit"), bool(point.get("writable"))))
        return self._define(device, specs, inferred)

    def _define(self, device: str, specs: list[tuple[str, int, str | None, bool]],
                inferred: bool) -> DeviceDefs:
        """(Re)define `device` with `specs`, plus the maintenance metrics when an asset's
        maintenance_needed lands on it (they are in every DBIRTH of that device)."""
        specs = [spec for spec in specs if not spec[0].startswith("Maintenance/")]
        if device in self.asset_devices.values():
            specs += [(f"Maintenance/{key}", datatype, unit, False)
                      for key, datatype, unit in maintenance_metrics()]
        return self.session.define_device(device, specs, inferred=inferred)

    def _define_node_maintenance(self, asset: str) -> None:
        for key, datatype, _unit in maintenance_metrics():
            self.session.define_node_metric(f"Maintenance/{asset}/{key}", datatype)

    def _node_birth(self) -> Message:
        now = self._now()
        health = self.health
        current: dict[str, Any] = {
            "bdSeq": self.session.bd_seq, REBIRTH: False,
            "Gateway/outbox_depth": health.outbox_depth,
            "Gateway/oldest_age_s": float(health.oldest_age_s),
            "Gateway/drops": health.drops, "Gateway/dropped_readings": health.dropped_readings,
        }
        payload = pb.Payload(timestamp=now)
        for name, definition in self.session.node_metrics.items():
            value, stamp = (current[name], now) if name in current else \
                self._node_last.get(name, (None, now))
            add_metric(payload, definition, value, stamp, birth=True)
        self.session.node_born = True
        return self._message(payload, "NBIRTH", None)

    def _device_birth(self, device: str) -> Message:
        defs = self.session.devices[device]
        now = self._now()
        payload = pb.Payload(timestamp=now)
        for name, definition in defs.metrics.items():
            value, stamp, grade = defs.last.get(name, (None, now, "good"))
            add_metric(payload, definition, value, stamp, quality=grade, birth=True)
        self.session.born.add(device)
        return self._message(payload, "DBIRTH", device)

    def _node_data(self, values: Mapping[str, Any], at: int, historical: bool) -> Message:
        payload = pb.Payload(timestamp=self._now())
        for name, value in values.items():
            add_metric(payload, self.session.node_metrics[name], value, at,
                       historical=historical, datatype=self.datatype_in_data)
            self._node_last[name] = (value, at)
        return self._message(payload, "NDATA", None)

    def _message(self, payload: pb.Payload, verb: str, device: str | None) -> Message:
        seq = None
        if verb != "NDEATH":
            seq = payload.seq = self.session.next_seq()
        topic = (names.node_topic(self.group_id, cast(names.NodeVerb, verb), self.edge_node_id)
                 if device is None else
                 names.device_topic(self.group_id, cast(names.DeviceVerb, verb),
                                    self.edge_node_id, device))
        return Message(topic, payload.SerializeToString(), verb, device, seq)

    def _now(self) -> int:
        return ms(self.clock())


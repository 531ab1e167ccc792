"""Sparkplug B, the pure layer: stored events -> Sparkplug messages -> what a host decodes.

No broker: each test translates CloudEvents as gateway/events.py makes them, and reads the
bytes back with the host-side `Reader`, which checks the session rules a host checks
(NBIRTH seq 0, seq continuity mod 256, births before data, aliases born).
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway import events
from gateway.frames import Frame, PointSpec
from gateway.sparkplug import datatypes as dt
from gateway.sparkplug import sparkplug_b_pb2 as pb
from gateway.sparkplug.config import SparkplugSection, asset_devices, sparkplug_problems
from gateway.sparkplug.decode import Reader, SparkplugError, decode
from gateway.sparkplug.maintenance import maintenance_fields
from gateway.sparkplug.names import (
    HostState,
    HostWatch,
    check_id,
    device_topic,
    node_topic,
    parse_state,
    parse_topic,
    state_payload,
    state_topic,
)
from gateway.sparkplug.node import BDSEQ_FILE, BdSeqFile, NodeSession
from gateway.sparkplug.payloads import Health, Message, NotBorn
from gateway.sparkplug.translate import Translator

T0 = 1_790_000_000.0
POINTS = [PointSpec("TI-101", "float32", "degC"), PointSpec("PI-102", "float64", "bar"),
          PointSpec("count", "int16"), PointSpec("running", "bool", writable=True)]


def stored(event: events.Event, seq: int = 1) -> dict[str, Any]:
    """An event as the uplink reads it back from the outbox: its JSON, decoded."""
    result: dict[str, Any] = orjson.loads(event.encode("/plant-a/line-1/" + event.device, seq))
    return result


class Node:
    """A translator on a fresh session in `tmp`, and a host reading all it sends."""

    def __init__(self, tmp: Path, **options: Any) -> None:
        self.session = NodeSession(BdSeqFile.in_dir(tmp))
        self.translator = Translator(self.session, "plant-a", "line-1", clock=lambda: T0 + 10,
                                     **options)
        self.host = Reader()
        self.sent: list[Message] = []

    def connect(self, health: Health | None = None) -> list[dict[str, Any]]:
        self.session.begin()
        self.will = self.translator.death()
        return self.send(self.translator.births(health))

    def event(self, event: events.Event, historical: bool = False) -> list[dict[str, Any]]:
        return self.send(self.translator.translate(stored(event), historical=historical))

    def send(self, messages: list[Message]) -> list[dict[str, Any]]:
        self.sent += messages
        return [self.host.read(m.topic, m.payload) for m in messages]


def frame(at: float, values: dict[str, Any], **extra: Any) -> events.Event:
    return events.telemetry(Frame("press-1", at, values, at, **extra))


def by_name(decoded: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in decoded["metrics"]}


# -- every message type, through the decoder ---------------------------------------------------


def test_every_message_type_roundtrips_through_the_host_decoder(tmp_path: Path) -> None:
    node = Node(tmp_path)
    nbirth, = node.connect(Health(outbox_depth=12, oldest_age_s=3.5, drops=2))
    dbirth, = node.event(events.device_birth("press-1", POINTS, at=T0))
    ddata, = node.event(frame(T0 + 1, {"TI-101": 21.437, "PI-102": 4.12, "count": -7,
                                       "running": True}))
    ndata, = node.event(events.data_dropped({"ttl": 3}, T0 - 60, T0 - 1, ["press-1"], at=T0 + 2,
                                            readings={"ttl": 300}))
    ddeath, = node.event(events.device_status("press-1", "offline", "timeout", at=T0 + 3))
    assert [m.verb for m in node.sent] == ["NBIRTH", "DBIRTH", "DDATA", "NDATA", "DDEATH"]
    assert [m.seq for m in node.sent] == [0, 1, 2, 3, 4]
    assert [m.topic for m in node.sent] == [
        "spBv1.0/plant-a/NBIRTH/line-1", "spBv1.0/plant-a/DBIRTH/line-1/press-1",
        "spBv1.0/plant-a/DDATA/line-1/press-1", "spBv1.0/plant-a/NDATA/line-1",
        "spBv1.0/plant-a/DDEATH/line-1/press-1"]
    assert node.host.errors == []

    assert node.will.topic == "spBv1.0/plant-a/NDEATH/line-1" and node.will.seq is None
    death = decode(node.will.payload)
    assert death["seq"] is None
    assert [(m["name"], m["datatype"], m["value"]) for m in death["metrics"]] == [
        ("bdSeq", "UInt64", 0)]

    node_metrics = by_name(nbirth)
    assert node_metrics["bdSeq"]["value"] == 0 and node_metrics["bdSeq"]["datatype"] == "UInt64"
    assert node_metrics["Node Control/Rebirth"]["value"] is False
    assert node_metrics["Node Control/Rebirth"]["datatype"] == "Boolean"
    assert node_metrics["Gateway/outbox_depth"]["value"] == 12
    assert node_metrics["Gateway/oldest_age_s"]["value"] == 3.5
    assert node_metrics["Gateway/drops"]["value"] == 2

    born = by_name(dbirth)
    assert born["TI-101"]["datatype"] == "Float" and born["TI-101"]["properties"] == {
        "engUnit": "degC", "readOnly": True}
    assert born["running"]["properties"] == {"readOnly": False}
    assert born["TI-101"]["is_null"] and born["TI-101"]["value"] is None  # no value known yet

    values = {m["name"]: m["value"] for m in ddata["metrics"]}
    assert values == {"TI-101": 21.437, "PI-102": 4.12, "count": -7, "running": True}
    assert {m["timestamp"] for m in ddata["metrics"]} == {int((T0 + 1) * 1000)}
    assert ddata["timestamp"] == int((T0 + 10) * 1000)  # sending time, not sample time

    drops = by_name(ndata)
    assert drops["Gateway/drops"]["value"] == 2 + 3
    assert drops["Gateway/dropped_readings"]["value"] == 300
    assert orjson.loads(drops["Gateway/last_drop"]["value"])["by_reason"] == {"ttl": 3}
    assert ddeath["metrics"] == [] and ddeath["seq"] == 4


def test_ddata_carries_aliases_only_and_they_are_the_dbirths(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.connect()
    dbirth, = node.event(events.device_birth("press-1", POINTS, at=T0))
    node.event(frame(T0 + 1, {"TI-101": 1.5, "running": False}))
    raw = pb.Payload.FromString(node.sent[-1].payload)
    assert all(not m.HasField("name") and not m.HasField("datatype") for m in raw.metrics)
    births = {m["alias"]: m["name"] for m in dbirth["metrics"]}
    assert [births[m.alias] for m in raw.metrics] == ["TI-101", "running"]
    # Aliases are unique across the node: the node's own metrics and every device's.
    nbirth = decode(node.sent[0].payload)
    node_aliases = {m["alias"] for m in nbirth["metrics"]}
    assert not node_aliases & set(births)
    assert len(node_aliases) == len(nbirth["metrics"])


def test_datatype_in_data_is_an_option_for_hosts_that_want_it(tmp_path: Path) -> None:
    node = Node(tmp_path, datatype_in_data=True)
    node.connect()
    node.event(events.device_birth("press-1", POINTS, at=T0))
    node.event(frame(T0 + 1, {"count": 3}))
    assert pb.Payload.FromString(node.sent[-1].payload).metrics[0].datatype == dt.INT16


# -- datatypes ------------------------------------------------------------------------------------

TYPE_CASES = [
    # (point type, value, Sparkplug datatype, protobuf field, raw wire value)
    ("int16", -2, "Int16", "int_value", 0xFFFF_FFFE),
    ("uint16", 65_535, "UInt16", "int_value", 65_535),
    ("int32", -2_000_000_000, "Int32", "int_value", 2**32 - 2_000_000_000),
    ("uint32", 4_000_000_000, "UInt32", "int_value", 4_000_000_000),
    ("int64", -(2**62), "Int64", "long_value", 2**64 - 2**62),
    ("uint64", 2**64 - 1, "UInt64", "long_value", 2**64 - 1),
    ("float32", 21.437, "Float", "float_value", struct.unpack("<f", struct.pack("<f", 21.437))[0]),
    ("float64", 0.1 + 0.2, "Double", "double_value", 0.1 + 0.2),
    ("bool", True, "Boolean", "boolean_value", True),
    ("SByte", -100, "Int8", "int_value", 2**32 - 100),
    ("Byte", 200, "UInt8", "int_value", 200),
    ("Double", -1.5, "Double", "double_value", -1.5),
    ("String", "auto", "String", "string_value", "auto"),
    ("DateTime", "2026-11-28T14:00:00Z", "String", "string_value", "2026-11-28T14:00:00Z"),
    ("StatusCode", 2_147_483_648, "UInt32", "int_value", 2_147_483_648),
    ("number", 7.25, "Double", "double_value", 7.25),
    ("integer", -5, "Int64", "long_value", 2**64 - 5),
    ("string", "on", "String", "string_value", "on"),
    # A birth with no type and no value yet: Double (a text value would rebirth it String).
    (None, 3, "Double", "double_value", 3.0),
]


@pytest.mark.parametrize(("point_type", "value", "datatype", "field", "wire"), TYPE_CASES)
def test_each_point_type_has_its_datatype_and_value_roundtrips(
        tmp_path: Path, point_type: str | None, value: Any, datatype: str, field: str,
        wire: Any) -> None:
    node = Node(tmp_path)
    node.connect()
    dbirth, = node.event(events.device_birth("press-1", [PointSpec("p", point_type)], at=T0))
    assert by_name(dbirth)["p"]["datatype"] == datatype
    ddata, = node.event(frame(T0 + 1, {"p": value}))
    raw = pb.Payload.FromString(node.sent[-1].payload).metrics[0]
    assert raw.WhichOneof("value") == field and getattr(raw, field) == wire
    assert ddata["metrics"][0]["value"] == value and node.host.errors == []


def test_a_value_its_datatype_cannot_carry_rebirths_the_device_retyped_same_alias(
        tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.connect()
    first, = node.event(events.device_birth("press-1", POINTS, at=T0))
    # A scaled int16 register gives a fraction (a float32 carries it exactly: Float); a
    # float32 point gets a value no float32 holds (Double); a new point appears.
    rebirth, ddata = node.event(frame(T0 + 1, {"count": 21.3, "extra": "x",
                                               "TI-101": 0.1 + 0.2}))
    assert [m.verb for m in node.sent[-2:]] == ["DBIRTH", "DDATA"]
    before, after = by_name(first), by_name(rebirth)
    assert after["count"]["datatype"] == "Float" and after["extra"]["datatype"] == "String"
    assert after["TI-101"]["datatype"] == "Double"
    assert {n: m["alias"] for n, m in after.items() if n in before} == {
        n: m["alias"] for n, m in before.items()}
    assert after["extra"]["alias"] not in {m["alias"] for m in before.values()}
    assert {m["name"]: m["value"] for m in ddata["metrics"]} == {
        "count": 21.3, "extra": "x", "TI-101": 0.1 + 0.2}
    assert node.host.errors == []


# -- quality, times, historical ----------------------------------------------------------------


def test_a_value_no_metric_can_hold_travels_as_json_text(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.connect()
    dbirth, ddata = node.event(frame(T0 + 1, {"raw": [1, {"a": 2}]}))
    assert by_name(dbirth)["raw"]["datatype"] == "String"
    assert orjson.loads(ddata["metrics"][0]["value"]) == [1, {"a": 2}]
    assert node.event(frame(T0 + 2, {"raw": [3]}))[0]["metrics"][0]["value"] == "[3]"


def test_quality_and_point_times_travel_per_metric(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.connect()
    node.event(events.device_birth("press-1", POINTS, at=T0))
    ddata, = node.event(events.telemetry(Frame(
        "press-1", T0 + 1, {"TI-101": float("nan"), "PI-102": 4.0, "count": 1}, T0 + 1,
        quality={"PI-102": "uncertain", "count": "bad"}, times={"count": T0 - 0.5})))
    metrics = by_name(ddata)
    assert metrics["TI-101"]["is_null"] and metrics["TI-101"]["quality"] == "bad"
    assert metrics["TI-101"]["properties"] == {"Quality": 0}
    assert metrics["PI-102"]["properties"] == {"Quality": 500}
    assert metrics["PI-102"]["quality"] == "uncertain" and metrics["PI-102"]["value"] == 4.0
    assert metrics["count"]["value"] == 1 and metrics["count"]["quality"] == "bad"
    assert metrics["count"]["timestamp"] == int((T0 - 0.5) * 1000)
    assert metrics["TI-101"]["timestamp"] == int((T0 + 1) * 1000)


def test_historical_flags_every_data_metric_and_no_birth(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.connect()
    node.event(events.device_birth("press-1", POINTS, at=T0))
    live, = node.event(frame(T0 + 1, {"TI-101": 1.0, "count": 2}))
    old, = node.event(frame(T0 - 3600, {"TI-101": 0.5, "count": 1}), historical=True)
    notice, = node.event(events.data_dropped({"ttl": 1}, T0, T0, ["press-1"], at=T0),
                         historical=True)
    assert not any(m["is_historical"] for m in live["metrics"])
    assert all(m["is_historical"] for m in old["metrics"] + notice["metrics"])
    assert old["metrics"][0]["timestamp"] == int((T0 - 3600) * 1000)  # original time kept
    births = node.sent + node.translator.births()
    assert not any(metric.is_historical for m in births if m.verb.endswith("BIRTH")
                   for metric in pb.Payload.FromString(m.payload).metrics)


# -- births, deaths and the order of messages -------------------------------------------------


def test_a_frame_of_a_device_never_described_is_born_first_from_the_frame(
        tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.connect()
    assert node.translator.needs_birth("press-1")
    dbirth, ddata = node.event(frame(T0 + 1, {"a": 1.5, "b": True, "c": 3}))
    assert [m.verb for m in node.sent[-2:]] == ["DBIRTH", "DDATA"]
    assert {m["name"]: m["datatype"] for m in dbirth["metrics"]} == {
        "a": "Double", "b": "Boolean", "c": "Int64"}
    assert not node.translator.needs_birth("press-1") and node.host.errors == []


def test_a_remembered_description_gives_the_birth_its_units(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.translator.remember_birth("press-1", POINTS)
    node.connect()  # the births after CONNECT include every described device
    assert [m.verb for m in node.sent] == ["NBIRTH", "DBIRTH"]
    dbirth = decode(node.sent[1].payload)
    assert by_name(dbirth)["PI-102"]["properties"]["engUnit"] == "bar"


def test_offline_sends_ddeath_and_online_a_new_dbirth_with_last_values(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.connect()
    node.event(events.device_birth("press-1", POINTS, at=T0))
    node.event(frame(T0 + 1, {"TI-101": 2.5}))
    node.event(events.device_status("press-1", "offline", "timeout", at=T0 + 2))
    assert node.event(events.device_status("press-1", "offline", "again", at=T0 + 3)) == []
    node.send(node.translator.births())  # a rebirth while offline: the device stays dead
    assert node.sent[-1].verb == "NBIRTH"
    dbirth, = node.event(events.device_status("press-1", "online", at=T0 + 4))
    assert node.sent[-1].verb == "DBIRTH"
    assert by_name(dbirth)["TI-101"]["value"] == 2.5
    assert by_name(dbirth)["TI-101"]["timestamp"] == int((T0 + 1) * 1000)
    assert [m.verb for m in node.sent] == ["NBIRTH", "DBIRTH", "DDATA", "DDEATH", "NBIRTH",
                                           "DBIRTH"]
    assert node.host.errors == []


def test_nothing_before_births_and_no_will_before_a_session(tmp_path: Path) -> None:
    node = Node(tmp_path)
    with pytest.raises(NotBorn):
        node.translator.death()
    with pytest.raises(NotBorn):
        node.translator.translate(stored(frame(T0, {"a": 1.0})))
    node.session.begin()
    with pytest.raises(NotBorn):
        node.translator.translate(stored(frame(T0, {"a": 1.0})))


def test_seq_wraps_255_to_0_and_a_rebirth_starts_again_at_0(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.connect()
    node.event(events.device_birth("press-1", POINTS, at=T0))
    for i in range(300):
        node.event(frame(T0 + i, {"count": i % 100}))
    seqs = [m.seq for m in node.sent if m.seq is not None]
    assert len(seqs) == len(node.sent) and seqs[:3] == [0, 1, 2] and seqs[255:258] == [255, 0, 1]
    assert all(b == (a + 1) % 256 for a, b in zip(seqs, seqs[1:], strict=False))
    bd_seq = node.session.bd_seq
    rebirth = node.translator.births()
    assert [m.seq for m in rebirth] == [0, 1] and node.session.bd_seq == bd_seq
    node.send(rebirth)
    assert node.host.errors == []


def test_rebirth_requests_are_recognised_by_name_or_alias(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.connect()
    alias = by_name(decode(node.sent[0].payload))["Node Control/Rebirth"]["alias"]

    def command(value: bool, **where: Any) -> bytes:
        payload = pb.Payload(timestamp=1)
        payload.metrics.add(boolean_value=value, datatype=dt.BOOLEAN, **where)
        return payload.SerializeToString()

    assert node.translator.is_rebirth_request(command(True, name="Node Control/Rebirth"))
    assert node.translator.is_rebirth_request(command(True, alias=alias))
    assert not node.translator.is_rebirth_request(command(False, name="Node Control/Rebirth"))
    assert not node.translator.is_rebirth_request(command(True, name="Node Control/Reboot"))
    assert not node.translator.is_rebirth_request(b"\xff\xff\xff")


# -- bdSeq ------------------------------------------------------------------------------------


def test_bdseq_rises_by_one_per_session_across_restarts_and_wraps(tmp_path: Path) -> None:
    seen = []
    for _restart in range(3):  # a new process each time: nothing but the file survives
        session = NodeSession(BdSeqFile.in_dir(tmp_path))
        seen.append(session.begin())
        seen.append(session.begin())  # a reconnect in the same process
    assert seen == [0, 1, 2, 3, 4, 5]
    (tmp_path / BDSEQ_FILE).write_text("254\n")
    session = NodeSession(BdSeqFile.in_dir(tmp_path))
    assert [session.begin() for _ in range(3)] == [255, 0, 1]
    assert (tmp_path / BDSEQ_FILE).read_text() == "1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [BDSEQ_FILE]  # no temporary left


def test_the_will_and_the_nbirth_carry_the_same_bdseq(tmp_path: Path) -> None:
    (tmp_path / BDSEQ_FILE).write_text("41\n")
    node = Node(tmp_path)
    nbirth, = node.connect()
    assert decode(node.will.payload)["metrics"][0]["value"] == 42
    assert by_name(nbirth)["bdSeq"]["value"] == 42
    assert (tmp_path / BDSEQ_FILE).read_text() == "42\n"  # on disk before the CONNECT


@pytest.mark.parametrize("content", [b"", b"garbage", b"300\n", b"-1\n", b"\x00\x00\x00\x00"])
def test_a_damaged_bdseq_file_starts_again_at_0_with_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes) -> None:
    (tmp_path / BDSEQ_FILE).write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="gateway.sparkplug.node"):
        assert NodeSession(BdSeqFile.in_dir(tmp_path)).begin() == 0
    assert "damaged" in caplog.text and BDSEQ_FILE in caplog.text
    assert NodeSession(BdSeqFile.in_dir(tmp_path)).begin() == 1  # and it is healed


# -- maintenance ------------------------------------------------------------------------------

MAINTENANCE = {
    "asset": "press-1", "probability": 0.91234, "threshold": 0.8, "horizon_steps": 60,
    "horizon_s": 600.0, "rul_steps": 12.5, "rul_s": 125.0, "evaluations_above": 3, "window": 30,
    "model": {"name": "spindle", "version": "1", "sha256": "ab" * 32},
    "inputs": {"vibration": {"source": "press-1/TI-101", "last": 1.5, "mean": 1.25}},
    "drivers": [{"feature": "vibration_rms", "value": 2.0, "normal_mean": 1.0, "z": 4.2}],
}


def maintenance_event(asset: str, **changes: Any) -> events.Event:
    return events.maintenance_needed(asset, {**MAINTENANCE, "asset": asset, **changes},
                                     ("hash", asset), at=T0 + 5)


def test_maintenance_lands_on_the_assets_device_with_the_cloudevents_fields(
        tmp_path: Path) -> None:
    node = Node(tmp_path, asset_devices={"press-1": "press-1"})
    node.connect()
    dbirth, = node.event(events.device_birth("press-1", POINTS, at=T0))
    assert by_name(dbirth)["Maintenance/probability"]["datatype"] == "Double"
    assert by_name(dbirth)["Maintenance/rul_s"]["properties"]["engUnit"] == "s"
    event = maintenance_event("press-1", rul_steps=None, rul_s=None)
    ddata, = node.event(event)
    assert node.sent[-1].topic == "spBv1.0/plant-a/DDATA/line-1/press-1"
    values = {m["name"].removeprefix("Maintenance/"): m["value"] for m in ddata["metrics"]}
    expected = {k: v for k, v in stored(event)["data"].items() if k != "asset"}
    assert maintenance_fields(values) == expected
    assert {m["timestamp"] for m in ddata["metrics"]} == {int((T0 + 5) * 1000)}
    assert by_name(ddata)["Maintenance/rul_s"]["is_null"]
    assert node.host.errors == []


def test_maintenance_of_an_asset_without_device_goes_to_the_node(tmp_path: Path) -> None:
    node = Node(tmp_path, asset_devices={"line": None})
    nbirth, = node.connect()
    assert "Maintenance/line/probability" in by_name(nbirth)
    ndata, = node.event(maintenance_event("line"))
    values = {m["name"].removeprefix("Maintenance/line/"): m["value"] for m in ndata["metrics"]}
    assert maintenance_fields(values) == {k: v for k, v in MAINTENANCE.items() if k != "asset"}
    # An asset nobody named is announced with a full rebirth first (NBIRTH lists node metrics).
    node.event(maintenance_event("other"))
    assert [m.verb for m in node.sent[-2:]] == ["NBIRTH", "NDATA"]
    assert node.host.errors == []


def test_assets_find_their_device_by_name_or_by_their_inputs() -> None:
    assert asset_devices({"press-1": ["mill-2/a"], "spindle": ["mill-2/a", "mill-2/b"],
                          "line": ["mill-2/a", "pump-3/p"], "ghost": ["nowhere/x"]},
                         ["press-1", "mill-2", "pump-3"]) == {
        "press-1": "press-1", "spindle": "mill-2", "line": None, "ghost": None}


# -- names, ids, STATE, config ----------------------------------------------------------------


def test_topics_are_built_and_parsed_per_the_namespace() -> None:
    assert node_topic("g", "NCMD", "n") == "spBv1.0/g/NCMD/n"
    assert device_topic("g", "DCMD", "n", "d") == "spBv1.0/g/DCMD/n/d"
    assert state_topic("scada") == "spBv1.0/STATE/scada"
    assert parse_topic("spBv1.0/g/DDATA/n/d").device_id == "d"
    assert parse_topic("spBv1.0/STATE/scada").verb == "STATE"
    with pytest.raises(ValueError):
        node_topic("g", "DDATA", "n")  # type: ignore[arg-type]
    for bad in ("spBv1.0/g/DDATA/n", "spBv1.0/g/NDATA/n/d", "spAv1.0/g/NDATA/n", "x"):
        with pytest.raises(ValueError):
            parse_topic(bad)
    with pytest.raises(ValueError, match="device 'a/b'"):
        device_topic("g", "DDATA", "n", "a/b")


@pytest.mark.parametrize("bad", ["", "a+b", "a/b", "#", "a\x00b", "x\udcff"])
def test_ids_with_reserved_characters_are_refused_naming_the_key(bad: str) -> None:
    with pytest.raises(ValueError, match="cloud.sparkplug.group_id"):
        check_id(bad, "cloud.sparkplug.group_id")


def test_ids_may_be_any_other_utf8_text() -> None:
    for good in ("plant-a", "Line 1", "Sparkplug B Devices", "Presse_Ü", "a.b:c$"):
        assert check_id(good, "x") == good


def test_the_config_section_checks_ids_and_defaults_the_edge_node_to_the_gateway() -> None:
    section = SparkplugSection.model_validate({"group_id": "plant-a"})
    assert section.node_id("line-1") == "line-1" and section.primary_host_id is None
    assert SparkplugSection.model_validate(
        {"group_id": "g", "edge_node_id": "n"}).node_id("line-1") == "n"
    for bad in ({"group_id": "a/b"}, {"group_id": "g", "edge_node_id": "n#"},
                {"group_id": "g", "primary_host_id": "+"}, {}, {"group_id": "g", "typo": 1}):
        with pytest.raises(ValueError):
            SparkplugSection.model_validate(bad)
    problems = sparkplug_problems(section, "line/1", ["press-1", "mill+2"])
    assert len(problems) == 2
    assert problems[0].startswith("gateway.id (the default cloud.sparkplug.edge_node_id)")
    assert problems[1].startswith("devices[1].name (device 'mill+2')")


def test_state_is_read_in_both_editions_and_a_stale_offline_is_ignored() -> None:
    assert parse_state(state_payload(True, 1000)) == HostState(True, 1000)
    assert parse_state(b'{"online": false, "timestamp": 5}') == HostState(False, 5)
    assert parse_state(b"ONLINE") == HostState(True)
    assert parse_state("OFFLINE\n") == HostState(False)
    for bad in (b"", b"online", b"[]", b'{"online": "yes", "timestamp": 1}',
                b'{"online": true}', b'{"online": true, "timestamp": -1}'):
        with pytest.raises(ValueError):
            parse_state(bad)
    watch = HostWatch()
    assert watch.observe(HostState(True, 2000)) and watch.online
    assert not watch.observe(HostState(False, 1000)) and watch.online  # older: ignored
    assert watch.observe(HostState(False, 3000)) and not watch.online
    assert watch.observe(HostState(True)) and watch.online  # 2.2 text: no timestamp to compare


def test_the_decoder_refuses_what_is_not_a_payload() -> None:
    with pytest.raises(SparkplugError):
        decode(b"\xff\xff\xff\xff")
    with pytest.raises(SparkplugError):
        Reader().read("spBv1.0/STATE/h", b'{"online": true, "timestamp": 1}')


def test_the_host_reader_catches_broken_sessions(tmp_path: Path) -> None:
    node = Node(tmp_path)
    node.connect()
    node.event(events.device_birth("press-1", POINTS, at=T0))
    ddata = node.translator.translate(stored(frame(T0 + 1, {"count": 1})))[0]
    fresh = Reader()
    fresh.read(ddata.topic, ddata.payload)  # data with no birth, out of sequence
    assert any("before its birth" in e for e in fresh.errors)
    assert any("never born" in e for e in fresh.errors)
    assert any("seq" in e for e in fresh.errors)


# -- compression (Eclipse Tahu's convention) ---------------------------------------------------


def test_a_deflated_payload_reads_as_the_inner_one(tmp_path: Path) -> None:
    import gzip
    import zlib

    from gateway.sparkplug.compression import COMPRESSED_UUID, wrap

    node = Node(tmp_path)
    node.connect()
    node.event(events.device_birth("press-1", POINTS, at=T0))
    ddata, = node.translator.translate(stored(frame(T0 + 1, {"TI-101": 21.5, "count": 3})))
    wrapped = wrap(ddata.payload, ddata.seq, 1_790_000_011_000)
    outer = pb.Payload.FromString(wrapped)
    assert outer.uuid == COMPRESSED_UUID and outer.seq == ddata.seq
    assert zlib.decompress(outer.body) == ddata.payload  # zlib format, as Deflater writes
    plain, read = decode(ddata.payload), decode(wrapped)
    assert read.pop("compression") == "DEFLATE" and plain.pop("compression") is None
    assert read == plain
    # GZIP (the other algorithm Tahu names) is read too; no algorithm metric means DEFLATE.
    gz = pb.Payload(uuid=COMPRESSED_UUID, body=gzip.compress(ddata.payload))
    gz.metrics.add(name="algorithm", datatype=dt.STRING, string_value="GZIP")
    assert decode(gz.SerializeToString())["compression"] == "GZIP"
    bare = pb.Payload(uuid=COMPRESSED_UUID, body=zlib.compress(ddata.payload))
    assert decode(bare.SerializeToString())["metrics"] == plain["metrics"]


@pytest.mark.parametrize(("algorithm", "body", "says"), [
    ("LZ4", b"x", "unknown algorithm"),
    ("DEFLATE", b"not zlib", "damaged"),
    ("DEFLATE", __import__("zlib").compress(b"\0" * 100)[:-6], "truncated"),
])
def test_a_bad_compressed_payload_is_one_line(algorithm: str, body: bytes, says: str) -> None:
    outer = pb.Payload(uuid="SPBV1.0_COMPRESSED", body=body)
    outer.metrics.add(name="algorithm", datatype=dt.STRING, string_value=algorithm)
    with pytest.raises(SparkplugError, match=says):
        decode(outer.SerializeToString())


def test_a_compressed_payload_cannot_inflate_past_the_limit() -> None:
    import zlib

    from gateway.sparkplug.compression import CompressionError, unwrap

    outer = pb.Payload(uuid="SPBV1.0_COMPRESSED", body=zlib.compress(b"\0" * 100_000))
    with pytest.raises(CompressionError, match="inflates past 1000 bytes"):
        unwrap(outer, 1000)
    assert unwrap(outer, 100_000) == (b"\0" * 100_000, "DEFLATE")

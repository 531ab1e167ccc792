"""The Sparkplug B edge node against a real Mosquitto: session rules, kill -9, store and forward,
rebirth, config errors, deflate.

The source is the counter driver (tests/support): each device's frames carry one value, its
number 0, 1, 2, ..., so a ledger of numbers is a ledger of frames. Everything after it
(runtime, outbox, Sparkplug uplink, broker) is the real thing, and the cloud side reads
what the broker delivers as a host does (`CloudListener` with gateway/sparkplug/decode.py's
`Reader`, which checks NBIRTH seq 0, seq continuity mod 256, births before data and born
aliases). A test's primary host is a plain paho client publishing retained STATE messages.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.errors import ConfigError
from gateway.outbox_rows import body_text
from gateway.runtime import Gateway
from gateway.sparkplug import sparkplug_b_pb2 as pb
from gateway.sparkplug.names import state_payload
from gateway.sparkplug.payloads import ms
from simulators.cloud_listener import CloudListener
from simulators.mosquitto import Mosquitto
from simulators.wait import until, wait_for
from tests.support import configs, counter_driver

ROOT = Path(__file__).resolve().parents[1]
GROUP, NODE, HOST = "plant-a", "gw-test", "scada-1"

pytestmark = pytest.mark.usefixtures("counter_protocol")


def spb_config(tmp_path: Path, url: str, devices: list[dict[str, Any]],
               **sparkplug: Any) -> dict[str, Any]:
    return configs.base(tmp_path, url, devices, cloud={
        "format": "sparkplug_b", "sparkplug": {"group_id": GROUP, **sparkplug}})


def points(message: dict[str, Any]) -> dict[str, Any]:
    return {m["name"]: m["value"] for m in message["metrics"]}


def values(cloud: CloudListener, device: str, point: str = "n") -> list[Any]:
    """The values of `point` in every DDATA of `device`, in arrival order."""
    return [m["value"] for d in cloud.spb("DDATA", device) for m in d["metrics"]
            if m["name"] == point]


def samples(cloud: CloudListener, device: str, *, historical: bool | None = None,
            point: str = "n") -> set[tuple[int, Any]]:
    """(metric timestamp ms, value) of `device`'s DDATA metrics (only historical ones, or
    only live ones, when asked)."""
    return {(m["timestamp"], m["value"]) for d in cloud.spb("DDATA", device)
            for m in d["metrics"] if m["name"] == point
            and (historical is None or m["is_historical"] == historical)}


def stored_samples(path: Path) -> set[tuple[int, Any]]:
    """(frame time ms, value) of every telemetry row in an outbox file."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = [json.loads(body_text(body)) for (body,) in
                conn.execute("SELECT body FROM outbox WHERE kind = 'telemetry'")]
    finally:
        conn.close()
    return {(ms(e["data"]["time"]), e["data"]["values"]["n"]) for e in rows}


class Host:
    """A primary host as far as the node can tell: retained STATE messages on its topic."""

    def __init__(self, broker: Mosquitto) -> None:
        self.topic = f"spBv1.0/STATE/{HOST}"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-host")
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def say(self, online: bool) -> None:
        info = self.client.publish(self.topic, state_payload(online, int(time.time() * 1000)),
                                   qos=1, retain=True)
        info.wait_for_publish(10)

    def command(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- (a) the session rules ---------------------------------------------------------------------


async def test_session_rules_hold_for_everything_the_broker_delivers(tmp_path, mosquitto, cloud):
    devices = [counter_driver.table(name, rate_hz=400, batch=10, limit=600)
               for name in ("c1", "c2")]
    async with Gateway(configs.validate(spb_config(tmp_path, mosquitto.url, devices))) as gw:
        await cloud.until(lambda c: len(values(c, "c1")) == 600 and len(values(c, "c2")) == 600,
                          what="every frame of both devices")
        await until(lambda: gw.outbox.stats().depth == 0, 10, "outbox drained")
    received = cloud.spb()
    assert cloud.reader.errors == [], cloud.reader.errors[:5]
    assert received[0]["topic"].verb == "NBIRTH" and received[0]["seq"] == 0
    nbirth = points(received[0])
    assert nbirth["bdSeq"] == 0 and nbirth["Node Control/Rebirth"] is False
    assert {"Gateway/outbox_depth", "Gateway/oldest_age_s", "Gateway/drops"} <= set(nbirth)
    verbs = [(m["topic"].verb, m["topic"].device_id) for m in received]
    for device in ("c1", "c2"):
        birth_at = verbs.index(("DBIRTH", device))
        assert birth_at < verbs.index(("DDATA", device))
        born = {m["name"]: (m["alias"], m["datatype"]) for m in received[birth_at]["metrics"]}
        assert born["n"] == (born["n"][0], "Int64")
        for data in cloud.spb("DDATA", device):
            assert {m["alias"] for m in data["metrics"]} == {born["n"][0]}
        # Values equal to what the counter served, in order, each once.
        assert values(cloud, device) == list(range(600))
    # seq runs over every message but the NDEATH, continuous mod 256 (it wrapped here).
    seqs = [m["seq"] for m in received if m["topic"].verb != "NDEATH"]
    assert all(b == (a + 1) % 256 for a, b in zip(seqs, seqs[1:], strict=False))
    assert len(seqs) > 256
    # The clean stop: DDEATHs (devices offline), then the NDEATH, published by the node.
    assert received[-1]["topic"].verb == "NDEATH"
    assert points(received[-1])["bdSeq"] == 0


# -- (b) kill -9 -------------------------------------------------------------------------------


def test_kill_9_gives_the_ndeath_of_that_session_and_the_next_nbirth_bdseq_plus_1(
        tmp_path, mosquitto, cloud):
    raw = spb_config(tmp_path, mosquitto.url, [counter_driver.table("c", rate_hz=1000,
                                                                    batch=20)])
    path = configs.write(tmp_path / "gw.toml", raw)
    outbox = tmp_path / "data" / "outbox.db"
    proc = start_gateway(path)
    try:
        wait_for(lambda: len(values(cloud, "c")) > 500, 30, "flow before the kill")
        # A backlog too: the broker's PUBACKs stop coming while the gateway keeps committing.
        mosquitto.stop()
        wait_for(lambda: len(stored_samples(outbox)) > 1000, 30, "a backlog in the outbox")
        mosquitto.start()
        wait_for(lambda: len(cloud.spb("NBIRTH")) >= 2, 30, "the node back after the outage")
        deaths, sound_from = len(cloud.spb("NDEATH")), len(cloud.reader.errors)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = ms(time.time())
    stored = stored_samples(outbox)  # committed, not yet acknowledged by the broker
    wait_for(lambda: len(cloud.spb("NDEATH")) > deaths, 30, "the broker's NDEATH (the will)")
    last_birth = points(cloud.spb("NBIRTH")[-1])["bdSeq"]
    assert points(cloud.spb("NDEATH")[-1])["bdSeq"] == last_birth
    proc = start_gateway(path)
    try:
        births = len(cloud.spb("NBIRTH"))
        wait_for(lambda: len(cloud.spb("NBIRTH")) > births, 30, "the NBIRTH after the restart")
        assert points(cloud.spb("NBIRTH")[births])["bdSeq"] == (last_birth + 1) % 256
        wait_for(lambda: stored <= samples(cloud, "c"), 60, "every stored frame at the host")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log_of(path)
    # Nothing the first process took was lost: its numbers run 0..k without a hole.
    first_run = sorted({v for at, v in samples(cloud, "c") if at < killed_at})
    assert first_run == list(range(len(first_run)))
    # From the node's first NBIRTH after the outage on, a host saw a sound session. (Before
    # it, the restarted broker redelivered to the listener what was in flight to it: QoS 1
    # duplicates, which a host reads as seq errors; the node sent each once.)
    assert cloud.reader.errors[sound_from:] == [], cloud.reader.errors[sound_from:][:5]


# -- (c) store and forward -----------------------------------------------------------------------


async def test_host_offline_holds_everything_then_births_historical_and_live(tmp_path,
                                                                            mosquitto, cloud):
    host = Host(mosquitto)
    try:
        host.say(True)
        raw = spb_config(tmp_path, mosquitto.url,
                         [counter_driver.table("c", rate_hz=200, batch=5)],
                         primary_host_id=HOST)
        async with Gateway(configs.validate(raw)) as gw:
            # (Frames committed before the node saw the host online are stored ones.)
            await cloud.until(lambda c: len(samples(c, "c", historical=False)) >= 100,
                              what="live data")
            host.say(False)
            await cloud.until(lambda c: len(c.spb("NDEATH")) == 1, what="the node's NDEATH")
            await until(lambda: gw.uplink.problem is not None and "waiting for the primary host"
                        in gw.uplink.problem, 10, "the uplink waiting for the host")
            await until(lambda: gw.outbox.stats().depth >= 200, 20, "a backlog")
            stored = {(ms(e["data"]["time"]), e["data"]["values"]["n"]) for e in
                      (json.loads(r.body) for r in await gw.outbox.fetch(0, 100_000))
                      if e["type"].endswith("telemetry")}
            quiet = len(cloud.spb())
            host.say(True)
            await cloud.until(lambda c: stored <= samples(c, "c", historical=True),
                              what="every stored frame, historical")
            live = len(samples(cloud, "c", historical=False))
            await cloud.until(lambda c: len(samples(c, "c", historical=False)) > live + 50,
                              what="live data again")
    finally:
        host.close()
    received = cloud.spb()
    death = next(i for i, m in enumerate(received) if m["topic"].verb == "NDEATH")
    assert death == quiet - 1, "something was published while the host was offline"
    after = [(m["topic"].verb, m["topic"].device_id, m) for m in received[death + 1:]]
    assert [(v, d) for v, d, _ in after[:2]] == [("NBIRTH", None), ("DBIRTH", "c")]
    flags = [{mm["is_historical"] for mm in m["metrics"]} for v, _d, m in after[2:]
             if v == "DDATA"]
    assert all(len(f) == 1 for f in flags), "a DDATA mixed historical and live metrics"
    kinds = [f.pop() for f in flags]
    first_live = kinds.index(False)
    assert all(kinds[:first_live]) and not any(kinds[first_live:]), \
        "historical and live frames interleaved"
    assert first_live >= len(stored)
    assert cloud.reader.errors == [], cloud.reader.errors[:5]


# -- (d) rebirth ---------------------------------------------------------------------------------


def rebirth_request() -> bytes:
    payload = pb.Payload(timestamp=int(time.time() * 1000))
    payload.metrics.add(name="Node Control/Rebirth", datatype=11, boolean_value=True)
    return payload.SerializeToString()


async def test_ncmd_rebirth_brings_a_complete_set_of_births(tmp_path, mosquitto, cloud):
    devices = [counter_driver.table(name, rate_hz=100, batch=5) for name in ("c1", "c2")]
    host = Host(mosquitto)
    try:
        async with Gateway(configs.validate(spb_config(tmp_path, mosquitto.url, devices))):
            await cloud.until(lambda c: len(values(c, "c1")) > 20 and len(values(c, "c2")) > 20,
                              what="data of both devices")
            first = len(cloud.spb())
            host.command(f"spBv1.0/{GROUP}/NCMD/{NODE}", rebirth_request())
            await cloud.until(lambda c: len(c.spb("NBIRTH")) == 2, what="a second NBIRTH")
            await cloud.until(lambda c: len([m for m in c.spb()[first:]
                                             if m["topic"].verb == "DBIRTH"]) >= 2
                              and len(values(c, "c1")) > 60, what="DBIRTHs and data again")
    finally:
        host.close()
    received = cloud.spb()
    again = next(i for i, m in enumerate(received) if i >= first and m["topic"].verb == "NBIRTH")
    rebirth = received[again:again + 3]
    assert rebirth[0]["seq"] == 0
    assert points(rebirth[0])["bdSeq"] == points(received[0])["bdSeq"]  # same session
    assert sorted(m["topic"].device_id for m in rebirth[1:]) == ["c1", "c2"]
    assert all(m["topic"].verb == "DBIRTH" for m in rebirth[1:])
    assert cloud.reader.errors == [], cloud.reader.errors[:5]


# -- (e) config errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(("cloud_table", "device", "key"), [
    ({"format": "sparkplug_b"}, "c", "cloud.sparkplug:"),
    ({"format": "sparkplug_b", "sparkplug": {"group_id": "plant/a"}}, "c",
     "cloud.sparkplug.group_id"),
    ({"format": "sparkplug_b", "sparkplug": {"group_id": "p", "edge_node_id": "line+1"}}, "c",
     "cloud.sparkplug.edge_node_id"),
    ({"format": "sparkplug_b", "sparkplug": {"group_id": "p", "primary_host_id": "#"}}, "c",
     "cloud.sparkplug.primary_host_id"),
    ({"format": "sparkplug_b", "sparkplug": {"group_id": "p"}}, "press#1", "devices[0].name"),
    ({"format": "sparkplug_b", "sparkplug": {"group_id": "p", "compression": "zstd"}}, "c",
     "cloud.sparkplug.compression"),
    ({"sparkplug": {"group_id": "p"}}, "c", "cloud.sparkplug:"),
])
def test_config_errors_name_the_key(tmp_path, capsys, cloud_table, device, key):
    from gateway.cli import main

    raw = configs.base(tmp_path, "mqtt://127.0.0.1:1883", [counter_driver.table(device)],
                       cloud=cloud_table)
    with pytest.raises(ConfigError) as caught:
        configs.validate(raw)
    assert any(line.startswith(key) for line in caught.value.problems), caught.value.problems
    assert main(["check", "--config", str(configs.write(tmp_path / "gw.toml", raw))]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err


# -- (f) deflate ---------------------------------------------------------------------------------


async def test_deflate_round_trip_through_the_broker(tmp_path, mosquitto, cloud):
    raw = spb_config(tmp_path, mosquitto.url,
                     [counter_driver.table("c", rate_hz=400, batch=10, limit=300)],
                     compression="deflate")
    raw_messages: list[bytes] = []
    tap = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-tap")
    subscribed = threading.Event()
    tap.on_connect = lambda c, *_: c.subscribe(f"spBv1.0/{GROUP}/DDATA/#", qos=1)
    tap.on_subscribe = lambda *_: subscribed.set()
    tap.on_message = lambda _c, _u, msg: raw_messages.append(msg.payload)
    tap.connect("127.0.0.1", mosquitto.port)
    tap.loop_start()
    try:
        assert subscribed.wait(10)
        async with Gateway(configs.validate(raw)):
            await cloud.until(lambda c: len(values(c, "c")) == 300, what="every frame")
    finally:
        tap.disconnect()
        tap.loop_stop()
    assert values(cloud, "c") == list(range(300))
    assert cloud.reader.errors == []
    assert {m["compression"] for m in cloud.spb("DDATA")} == {"DEFLATE"}
    assert {m["compression"] for m in cloud.spb("NBIRTH") + cloud.spb("DBIRTH")} == {None}
    wrapper = pb.Payload.FromString(raw_messages[0])
    assert wrapper.uuid == "SPBV1.0_COMPRESSED" and wrapper.HasField("seq")
    assert [(m.name, m.string_value) for m in wrapper.metrics] == [("algorithm", "DEFLATE")]


def start_gateway(config_path: Path) -> subprocess.Popen[bytes]:
    """`millwright run` in a child process; its log goes to gateway.log beside the config."""
    with open(config_path.with_name("gateway.log"), "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.support.run_gateway", "run", "--config",
             str(config_path)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def log_of(config_path: Path) -> str:
    return config_path.with_name("gateway.log").read_text(errors="replace")[-3000:]

"""Sparkplug DCMD writes through the command path: parsing, then a host against a real Mosquitto.

The device is the counter driver (tests/support) with writable points, so what was written
is what the driver recorded; the host is a plain paho client publishing DCMDs, and what it
reads back (NBIRTH, NDATA) is decoded by gateway/sparkplug/decode.py's `Reader`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.commands import Refused
from gateway.runtime import Gateway
from gateway.sparkplug import datatypes as dt
from gateway.sparkplug import sparkplug_b_pb2 as pb
from gateway.sparkplug.commands import dcmd_command, dcmd_id
from gateway.sparkplug.node import DeviceDefs, MetricDef
from simulators.cloud_listener import CloudListener
from simulators.mosquitto import Mosquitto
from tests.support import configs, counter_driver
from tests.test_sparkplug_e2e import GROUP, NODE, Host, spb_config

POINTS = [{"name": "speed", "type": "float32", "writable": True, "min": 0, "max": 100},
          {"name": "temp", "type": "float32"}]


def dcmd(*metrics: tuple[str | int, int, Any], at_ms: int | None = None) -> bytes:
    """A DCMD payload: (name or alias, datatype, value) per metric."""
    payload = pb.Payload(timestamp=at_ms if at_ms is not None else int(time.time() * 1000))
    for key, datatype, value in metrics:
        metric = payload.metrics.add(datatype=datatype)
        if isinstance(key, int):
            metric.alias = key
        else:
            metric.name = key
        if value is None:
            metric.is_null = True
        else:
            dt.put_value(metric, datatype, value)
    return payload.SerializeToString()


def test_a_dcmd_is_a_command_with_the_payload_time_and_a_stable_id() -> None:
    defs = DeviceDefs(metrics={"speed": MetricDef("speed", 7, dt.FLOAT, writable=True)})
    payload = dcmd((7, dt.FLOAT, 40.5), ("mode", dt.STRING, "auto"), ("n", dt.INT16, -3),
                   at_ms=1_800_000_000_123)
    command = dcmd_command(payload, "press", defs)
    assert command.values == {"speed": 40.5, "mode": "auto", "n": -3}
    assert command.time == 1_800_000_000.123 and command.device == "press"
    assert command.id == dcmd_id("press", payload) == dcmd_command(payload, "press", defs).id
    assert command.id != dcmd_id("mill", payload)  # the same bytes to another device


@pytest.mark.parametrize(("payload", "reason"), [
    (b"\xff\xff not protobuf", "not a Sparkplug B payload"),
    (pb.Payload(metrics=[pb.Payload.Metric(name="speed", datatype=dt.FLOAT,
                                           float_value=1.0)]).SerializeToString(),
     "no payload timestamp"),
    (dcmd((99, dt.FLOAT, 1.0)), "alias 99 was not born"),
    (dcmd(("speed", dt.FLOAT, None)), "has no value"),
    (dcmd(), "carries no metrics"),
])
def test_a_dcmd_that_is_not_a_command_is_rejected_as_malformed(payload: bytes,
                                                               reason: str) -> None:
    with pytest.raises(Refused) as refused:
        dcmd_command(payload, "press", DeviceDefs())
    assert refused.value.status == "rejected"
    assert refused.value.reason.startswith("malformed: ") and reason in refused.value.reason
    assert refused.value.command_id == dcmd_id("press", payload)


def results(cloud: CloudListener) -> list[dict[str, Any]]:
    """Each command result the node announced (NDATA `Commands/last_result`), decoded."""
    return [json.loads(m["value"]) for d in cloud.spb("NDATA") for m in d["metrics"]
            if m["name"] == "Commands/last_result"]


def alias_of(cloud: CloudListener, device: str, name: str) -> int:
    birth = cloud.spb("DBIRTH", device)[-1]
    return next(m["alias"] for m in birth["metrics"] if m["name"] == name)


@pytest.mark.usefixtures("counter_protocol")
async def test_a_host_writes_through_dcmd_and_reads_the_result(
        tmp_path: Path, mosquitto: Mosquitto, cloud: CloudListener) -> None:
    devices = [counter_driver.table("press", rate_hz=5, batch=1, points=POINTS)]
    raw = spb_config(tmp_path, mosquitto.url, devices)
    raw["commands"] = {"enabled": True}
    host = Host(mosquitto)
    topic = f"spBv1.0/{GROUP}/DCMD/{NODE}/press"
    try:
        async with Gateway(configs.validate(raw)) as gw:
            driver = gw.command_target("press")[0]
            assert isinstance(driver, counter_driver.CounterDriver)
            await cloud.until(lambda c: c.spb("DBIRTH", "press") and gw.online["press"],
                              what="press born and online")
            nbirth = {m["name"] for m in cloud.spb("NBIRTH")[-1]["metrics"]}
            assert {"Commands/last_status", "Commands/last_result"} <= nbirth

            by_alias = dcmd((alias_of(cloud, "press", "speed"), dt.FLOAT, 40.0))
            host.command(topic, by_alias)
            await cloud.until(lambda c: len(results(c)) == 1, what="the first result")
            first = results(cloud)[0]
            assert first["status"] == "done", first
            assert first["command_id"] == dcmd_id("press", by_alias)
            assert first["read_back"] == {"speed": 40.0}
            assert driver.writes == [{"speed": 40.0}]

            host.command(topic, by_alias)  # the same message again: answered, not run
            refusals = [(dcmd(("speed", dt.FLOAT, 101.0)), "rejected", "out of range"),
                        (dcmd(("temp", dt.FLOAT, 1.0)), "rejected", "not writable"),
                        (dcmd(("speed", dt.FLOAT, 1.0),
                              at_ms=int((time.time() - 60) * 1000)), "expired", "max_age_s")]
            for payload, _, _ in refusals:
                host.command(topic, payload)
            await cloud.until(lambda c: len(results(c)) == 2 + len(refusals),
                              what="every DCMD answered")
    finally:
        host.close()
    answered = results(cloud)
    assert answered[1] == first  # the earlier result, sent again
    for (payload, status, reason), result in zip(refusals, answered[2:], strict=True):
        assert result["command_id"] == dcmd_id("press", payload)
        assert result["status"] == status and reason in result["reason"], result
    assert driver.writes == [{"speed": 40.0}]
    assert cloud.reader.errors == [], cloud.reader.errors[:5]

"""Exactly once into JetStream through crashes and outages: kill -9 of the gateway during a
drain, one node of a 3-node cluster SIGKILLed mid-drain, and the whole cluster down.

Real nats-server processes on free loopback ports (JetStream on, stores in temporary
directories); the stream is read back with a pull consumer. The kill -9 run is
bench/jetstream_chaos.py's short mode (its long mode: 100,000 events, 5 kills).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from bench.jetstream_chaos import fill_outbox, run_kills
from gateway.runtime import Gateway
from simulators.jetstream_reader import create_stream, read_stream, stream_counts
from simulators.nats_server import JetStreamCluster, JetStreamServer
from simulators.wait import succeeds, until
from tests.support import configs, counter_driver

CLUSTER_READY_S = 30.0  # three servers electing their JetStream leaders


async def test_kill_9_during_a_drain_leaves_every_event_in_the_stream_exactly_once() -> None:
    report = await run_kills(10_000, 3)
    explain = f"{report.summary()}\n--- gateway log (tail) ---\n{report.log_tail}"
    assert report.exactly_once, explain
    assert len(report.kills) == 3 and all(0 < at < report.produced for at in report.kills), \
        explain  # each kill came mid-drain, with the stream part-way
    assert report.exit_code == 0, explain


# -- a 3-node cluster on loopback, the stream replicated three times ------------------------


async def cluster_ready(cluster: JetStreamCluster) -> None:
    # Starting a server and asking it over HTTP block: off the loop, where a gateway may run.
    for node in cluster.nodes:
        await asyncio.to_thread(node.start)
    await until(lambda: all_ready(cluster.nodes), CLUSTER_READY_S,
                "JetStream ready on every node")


async def all_ready(nodes: list[JetStreamServer]) -> bool:
    ready = await asyncio.gather(*(asyncio.to_thread(node.jetstream_ready) for node in nodes))
    return all(ready)


async def replicated_stream(cluster: JetStreamCluster, name: str, gateway_id: str) -> None:
    """An R3 stream for one gateway's subjects (streams of an account may not overlap)."""
    await cluster_ready(cluster)
    await create_stream(cluster.url, name, [f"millwright.lab.{gateway_id}.>"], replicas=3)


def gateway_config(tmp_path: Path, cluster: JetStreamCluster, gateway_id: str, stream: str,
                   devices: list[dict[str, Any]] | None = None) -> Any:
    raw = configs.base(tmp_path, cluster.url, devices)
    raw["gateway"]["id"] = gateway_id
    # A node's death may leave publishes unanswered until a new stream leader is elected.
    raw["cloud"].update(ack_timeout_s=5.0, nats={"stream": stream})
    return configs.validate(raw)


async def stored(cluster: JetStreamCluster, stream: str, gateway_id: str) -> int:
    try:
        counts = await stream_counts(cluster.url, stream, f"millwright.lab.{gateway_id}.>")
    except Exception:  # noqa: BLE001 - while a node is down an answer may not come: try again
        return -1
    return sum(n for subject, n in counts.items() if ".telemetry." in subject)


async def exactly_once(cluster: JetStreamCluster, stream: str,
                       gateway_id: str) -> list[dict[str, Any]]:
    """The stream's telemetry events of `gateway_id`, asserted one message per id."""
    items = await succeeds(lambda: read_stream(
        cluster.url, stream, f"millwright.lab.{gateway_id}.telemetry.*"), 30,
        "reading the stream back")  # a node that just came back may not answer at once
    ids = [item.msg_id for item in items]
    assert len(ids) == len(set(ids)), "an event is in the stream twice"
    assert all(item.msg_id == item.event["id"] for item in items)
    return [item.event for item in items]


def servers_used(caplog: pytest.LogCaptureFixture) -> list[str]:
    """host:port of each NATS server the uplink connected to, in order (from its log)."""
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.uplink_nats"]
    return [line.split()[4].rstrip(":") for line in lines
            if line.startswith(("connected to NATS at ", "reconnected to NATS at "))]


async def test_one_node_killed_mid_drain_loses_and_duplicates_nothing_and_needs_no_restart(
        tmp_path: Path, jetstream_cluster: JetStreamCluster,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "gateway.uplink_nats")
    cluster, total = jetstream_cluster, 20_000
    await replicated_stream(cluster, "NODELOSS", "gw-node")
    config = gateway_config(tmp_path, cluster, "gw-node", "NODELOSS")
    config.gateway.data_dir.mkdir(parents=True)
    produced = await fill_outbox(config.outbox_path, total)
    async with Gateway(config) as gw:
        await until(lambda: _at_least(cluster, "NODELOSS", "gw-node", total // 4), 60,
                    "a quarter of the backlog in the stream")
        # SIGKILL the node the gateway is connected to: its connection and (maybe) the
        # stream's leader go at once.
        before = servers_used(caplog)
        victim = next(n for n in cluster.nodes if n.url.endswith(before[-1]))
        await asyncio.to_thread(victim.kill)
        assert gw.outbox.stats().depth > 0  # mid-drain: most of the backlog still to go
        await until(lambda: _at_least(cluster, "NODELOSS", "gw-node", total // 2), 60,
                    "half the backlog, with one node dead")
        await asyncio.to_thread(victim.start)
        await until(lambda: gw.outbox.stats().depth == 0, 120, "the whole backlog drained")
        # The same gateway process went on through another node.
        after = servers_used(caplog)[len(before):]
        assert after and not victim.url.endswith(after[0]), (before, after)
    await until(lambda: asyncio.to_thread(victim.jetstream_ready), CLUSTER_READY_S,
                "the killed node back in the cluster")
    events = await exactly_once(cluster, "NODELOSS", "gw-node")
    assert {e["id"] for e in events} == produced


async def _at_least(cluster: JetStreamCluster, stream: str, gateway_id: str, count: int) -> bool:
    return await stored(cluster, stream, gateway_id) >= count


async def test_with_the_whole_cluster_down_the_backlog_waits_then_drains(
        tmp_path: Path, jetstream_cluster: JetStreamCluster, counter_protocol: None) -> None:
    cluster, limit = jetstream_cluster, 6_000
    await replicated_stream(cluster, "OUTAGE", "gw-outage")
    config = gateway_config(tmp_path, cluster, "gw-outage", "OUTAGE", [counter_driver.table(
        rate_hz=2_000, batch=20, limit=limit)])
    async with Gateway(config) as gw:
        await until(lambda: _at_least(cluster, "OUTAGE", "gw-outage", 500), 30, "flow")
        for node in cluster.nodes:
            await asyncio.to_thread(node.stop)
        await until(lambda: not gw.uplink.connected and gw.outbox.stats().depth >= 1_500, 30,
                    "a backlog while the cluster is down")
        await until(lambda: "no NATS server of cloud.url answered" in (gw.uplink.problem or ""),
                    30, "the uplink saying why it is not ready")
        assert gw.outbox.stats().dropped == {}
        await cluster_ready(cluster)
        await until(lambda: gw.outbox.stats().depth == 0 and sum(gw.accepted.values()) >= limit,
                    90, "the backlog drained and every frame produced")
    events = await exactly_once(cluster, "OUTAGE", "gw-outage")
    assert sorted(e["data"]["values"]["n"] for e in events) == list(range(limit))


"""The cloud uplink against a real Mosquitto: delivery, acks only on PUBACK, outages, birth and
will, topic sanitising, TLS, mTLS and password files.

The outbox is the real one (SQLite in tmp_path). Where a test needs the network to
misbehave, a small TCP relay (`Link`) sits between the uplink and the broker: it can
hold back the broker's PUBACKs or cut the connection without a DISCONNECT.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import logging
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client import REGISTRY

from gateway import events
from gateway.config import CloudSection, StoreSection
from gateway.frames import Frame
from gateway.store import Outbox, OutboxRow
from gateway.topics import sanitise_level, unsanitise_level
from gateway.uplink import Uplink
from gateway.uplink_drain import Drain, Refusals
from gateway.uplink_limits import PacketLimits
from gateway.uplink_pack import Packer
from simulators.cloud_listener import CloudListener
from simulators.mosquitto import Mosquitto, free_port
from simulators.wait import until
from tests.support.uplinks import running_uplink

PREFIX = "lab/gw-test"
T0 = 1_790_000_000.0


def readings(device: str, n: int, start: int = 0) -> list[events.Event]:
    """n telemetry events, one numbered value each."""
    return [events.telemetry(Frame(device, T0 + i, {"p": float(i)}, T0 + i))
            for i in range(start, start + n)]


def ids(evs: list[events.Event]) -> set[str]:
    return {e.id for e in evs}


@contextlib.asynccontextmanager
async def running(tmp_path: Path, **cloud: Any) -> AsyncIterator[tuple[Uplink, Outbox]]:
    """A real outbox and an uplink running against `cloud` (a CloudSection's keys)."""
    cloud.setdefault("reconnect_min_s", 0.05)
    cloud.setdefault("reconnect_max_s", 0.5)
    section = CloudSection(**cloud)
    async with running_uplink(tmp_path / "outbox.db", lambda outbox: Uplink(
            section, outbox, prefix=PREFIX, gateway_id="gw-test")) as running_pair:
        yield running_pair


@dataclass
class RawMessage:
    topic: str
    payload: bytes
    retain: bool
    content_type: str | None


class RawSubscriber:
    """Every message on `topic`, as it came off the wire (for payload shapes and retain)."""

    def __init__(self, port: int, topic: str, *, v5: bool = False,
                 auth: tuple[str, str] | None = None) -> None:
        self.messages: list[RawMessage] = []
        self._ready = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                   protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        if auth:
            self._client.username_pw_set(*auth)
        self._client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self._client.on_subscribe = lambda *_: self._ready.set()
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not self._ready.wait(10):
            self.close()
            raise TimeoutError(f"no subscription to {topic}")

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        content_type = getattr(msg.properties, "ContentType", None)
        self.messages.append(RawMessage(msg.topic, msg.payload, bool(msg.retain), content_type))

    def statuses(self) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in list(self.messages)]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class Link:
    """A TCP relay to the broker. `hold_acks()` keeps back what the broker says (its PUBACKs)
    until `release_acks()`, or for good if the connection ends first; `cut()` drops every
    connection without a DISCONNECT (so the broker sends the will)."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.acks_flow = True
        self._held: dict[asyncio.StreamWriter, bytearray] = {}
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Link:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"mqtt://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def hold_acks(self) -> None:
        self.acks_flow = False

    def release_acks(self) -> None:
        self.acks_flow = True
        for writer, held in self._held.items():
            if held and not writer.is_closing():
                writer.write(bytes(held))
            held.clear()

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self._tasks.add(task := asyncio.current_task())  # type: ignore[arg-type]
        try:
            broker_r, broker_w = await asyncio.open_connection("127.0.0.1", self.broker_port)
        except OSError:
            client_w.transport.abort()
            return
        self._writers += [client_w, broker_w]
        pumps = [asyncio.create_task(self._pump(client_r, broker_w, gated=False)),
                 asyncio.create_task(self._pump(broker_r, client_w, gated=True))]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            client_w.transport.abort()
            broker_w.transport.abort()
            self._held.pop(client_w, None)  # what was held back is lost with the connection
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    gated: bool) -> None:
        held = self._held.setdefault(writer, bytearray()) if gated else bytearray()
        while data := await reader.read(65536):
            held += data
            if not gated or self.acks_flow:
                writer.write(bytes(held))
                held.clear()
                await writer.drain()


# -- topics --------------------------------------------------------------------------

# Names made mostly of the characters that matter, plus anything at all (surrogates too).
DANGEROUS = st.sampled_from(list("%+#/$2Fa\x00\x1f\x7f\x85\ufffe\ud800 "))
NAMES = st.text(st.one_of(DANGEROUS, st.characters(exclude_categories=())), max_size=40)


@given(NAMES)
def test_a_sanitised_name_is_one_safe_level_and_names_never_collide(name: str) -> None:
    level = sanitise_level(name)
    assert level and "/" not in level and "+" not in level and "#" not in level
    assert not level.startswith("$")
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in level)
    level.encode("utf-8")  # strict: no lone surrogates reach the wire
    assert unsanitise_level(level) == name  # injective: two names never share a level
    topic = f"{PREFIX}/telemetry/{level}"
    assert topic.split("/")[:3] == PREFIX.split("/") + ["telemetry"]
    assert len(topic.split("/")) == 4


@pytest.mark.parametrize(("name", "level"), [
    ("press-1", "press-1"), ("Presse Süd", "Presse Süd"), ("a/b", "a%2Fb"), ("a%2Fb", "a%252Fb"),
    ("+", "%2B"), ("#", "%23"), ("$SYS", "%24SYS"), ("a$", "a$"), ("", "%"), ("50%", "50%25"),
    ("tab\there", "tab%09here"), ("nul\x00", "nul%00"),
])
def test_sanitise_examples(name: str, level: str) -> None:
    assert sanitise_level(name) == level


def rows_for(devices: list[str], body_size: int = 100) -> list[OutboxRow]:
    return [OutboxRow(pos, device, "telemetry", json.dumps({"n": pos, "pad": "x" * body_size}),
                      0.0) for pos, device in enumerate(devices, start=1)]


def test_pack_keeps_each_devices_order_within_the_batch_limits() -> None:
    cloud = CloudSection(batch_max_events=3, batch_max_bytes=1024)
    packer = Packer(cloud, PREFIX)
    rows = rows_for(["a", "b"] * 5 + ["a/x"])
    messages = packer.pack(rows)
    by_topic: dict[str, list[int]] = {}
    for message in messages:
        body = json.loads(message.payload)
        assert isinstance(body, list) and 1 <= len(body) <= 3
        assert [e["n"] for e in body] == message.positions
        by_topic.setdefault(message.topic, []).extend(message.positions)
    assert by_topic == {f"{PREFIX}/telemetry/a": [1, 3, 5, 7, 9],
                        f"{PREFIX}/telemetry/b": [2, 4, 6, 8, 10],
                        f"{PREFIX}/telemetry/a%2Fx": [11]}
    # The byte cap: ~430-byte events go two to a 1 KiB message; a bigger one goes alone.
    big = rows_for(["a"] * 4, body_size=420) + rows_for(["a"], body_size=2000)
    sizes = [len(m.positions) for m in packer.pack(big)]
    assert sizes == [2, 2, 1] and all(len(m.payload) <= 1024 for m in packer.pack(big)[:2])


def test_pack_with_batch_size_one_sends_plain_objects() -> None:
    messages = Packer(CloudSection(batch_max_events=1), PREFIX).pack(rows_for(["a", "a"]))
    assert [json.loads(m.payload)["n"] for m in messages] == [1, 2]


def test_a_birth_goes_alone_and_retained_to_its_own_topic() -> None:
    rows = rows_for(["a", "a"]) + [OutboxRow(3, "a", "device_birth", '{"n": 3}', 0.0),
                                   OutboxRow(4, "a/x", "device_birth", '{"n": 4}', 0.0)]
    messages = Packer(CloudSection(batch_max_events=10), PREFIX).pack(rows)
    assert [(m.topic, m.positions, m.retain) for m in messages] == [
        (f"{PREFIX}/telemetry/a", [1, 2], False), (f"{PREFIX}/birth/a", [3], True),
        (f"{PREFIX}/birth/a%2Fx", [4], True)]
    assert json.loads(messages[1].payload) == {"n": 3}  # one event, not a batch


async def test_linger_waits_at_most_linger_s_even_when_the_wall_clock_was_set_back(
        tmp_path: Path) -> None:
    cloud = CloudSection(linger_s=0.2, batch_max_events=10)
    outbox = Outbox(tmp_path / "outbox.db", StoreSection(), source_prefix="/lab/gw-test")
    await outbox.open()
    try:
        session = SimpleNamespace(on_answers=None)  # the drain only registers its callback
        drain = Drain(cloud, outbox, Packer(cloud, PREFIX), PacketLimits.for_cloud(cloud),
                      Refusals(outbox, 60.0), session, on_accepted=lambda: None)  # type: ignore[arg-type]
        # Committed "an hour from now": the clock was set back since. Nothing else comes.
        future = [OutboxRow(1, "a", "telemetry", "{}", time.time() + 3600)]
        async with asyncio.timeout(10):  # a guard, far above linger_s: not a timing assert
            assert await drain._linger(future) is False
            assert await drain._linger(future) is False  # the same head: its time is up
    finally:
        await outbox.close()


# -- delivery --------------------------------------------------------------------------


async def test_events_arrive_one_per_message(tmp_path, mosquitto, cloud) -> None:
    raw = RawSubscriber(mosquitto.port, f"{PREFIX}/telemetry/#")
    try:
        async with running(tmp_path, url=mosquitto.url, batch_max_events=1) as (uplink, outbox):
            sent = readings("press-1", 30) + readings("line/1+#", 20)
            await outbox.append(sent)
            await cloud.until(lambda c: ids(sent) <= c.ids(), what="all 50 events")
            assert await uplink.flush(10)
            assert outbox.stats().depth == 0 and outbox.stats().readings == 0
        await until(lambda: len(raw.messages) >= 50, 10, "50 raw messages")
        assert all(isinstance(json.loads(m.payload), dict) for m in raw.messages)
        assert {m.topic for m in raw.messages} == {f"{PREFIX}/telemetry/press-1",
                                                  f"{PREFIX}/telemetry/line%2F1%2B%23"}
    finally:
        raw.close()


async def test_events_arrive_batched_in_order_with_the_batch_content_type(
        tmp_path, mosquitto, cloud) -> None:
    raw = RawSubscriber(mosquitto.port, f"{PREFIX}/telemetry/#", v5=True)
    try:
        async with running(tmp_path, url=mosquitto.url, batch_max_events=50,
                           mqtt_version="5") as (uplink, outbox):
            sent = []
            for start in range(0, 400, 100):  # several commits, two devices interleaved
                chunk = readings("a", 100, start) + readings("b", 100, start)
                sent += chunk
                await outbox.append(chunk)
            await cloud.until(lambda c: ids(sent) <= c.ids(), what="all 800 events")
            assert await uplink.flush(10)
        await until(lambda: sum(len(json.loads(m.payload)) for m in raw.messages) >= 800, 10,
                    "800 events in raw messages")
        assert len(raw.messages) < 800 / 10  # batched, not one per event
        seen: dict[str, list[float]] = {"a": [], "b": []}
        for message in raw.messages:
            batch = json.loads(message.payload)
            assert isinstance(batch, list) and 1 <= len(batch) <= 50
            assert message.content_type == "application/cloudevents-batch+json"
            for event in batch:
                seen[event["data"]["device"]].append(event["data"]["values"]["p"])
        assert seen == {"a": [float(i) for i in range(400)], "b": [float(i) for i in range(400)]}
    finally:
        raw.close()


async def test_rows_leave_the_outbox_only_after_the_pubacks(tmp_path, mosquitto, cloud) -> None:
    async with Link(mosquitto.port) as link, running(tmp_path, url=link.url) as (uplink, outbox):
        await until(lambda: uplink.connected, 10, "connected")
        link.hold_acks()
        sent = readings("press-1", 200)
        await outbox.append(sent)
        # The broker has every event (the cloud got them), but no PUBACK reached the uplink.
        await cloud.until(lambda c: ids(sent) <= c.ids(), what="all 200 events at the broker")
        assert outbox.stats().depth == 200 and outbox.stats().readings == 200
        await asyncio.to_thread(mosquitto.stop)  # with all 200 still in flight
        await until(lambda: not uplink.connected, 10, "the loss noticed")
        assert outbox.stats().depth == 200
        assert {json.loads(r.body)["id"] for r in await outbox.fetch(0, 1000)} == ids(sent)
        link.release_acks()
        await asyncio.to_thread(mosquitto.start)
        await until(lambda: outbox.stats().depth == 0, 20, "the resent rows acked")
        assert ids(sent) <= cloud.ids()


def published_total() -> float:
    return REGISTRY.get_sample_value("millwright_uplink_published_events_total") or 0.0


async def test_no_more_than_max_inflight_messages_wait_for_their_pubacks(
        tmp_path, mosquitto, cloud) -> None:
    async with Link(mosquitto.port) as link, running(
            tmp_path, url=link.url, batch_max_events=1, max_inflight=5) as (uplink, outbox):
        await until(lambda: uplink.connected, 10, "connected")
        link.hold_acks()
        before = published_total()
        sent = readings("press-1", 50)
        await outbox.append(sent)
        await cloud.until(lambda c: len(c.ids() & ids(sent)) >= 5, what="the first window")
        assert published_total() - before == 5  # the rest wait for PUBACKs
        assert outbox.stats().depth == 50
        link.release_acks()
        await until(lambda: outbox.stats().depth == 0, 10, "all acked")
        assert ids(sent) <= cloud.ids() and published_total() - before == 50


async def test_a_broker_outage_loses_nothing_and_keeps_ids(tmp_path, mosquitto, cloud) -> None:
    async with running(tmp_path, url=mosquitto.url) as (uplink, outbox):
        before = readings("press-1", 100)
        await outbox.append(before)
        await cloud.until(lambda c: ids(before) <= c.ids(), what="events before the outage")
        await asyncio.to_thread(mosquitto.stop)
        await until(lambda: not uplink.connected, 10, "the outage noticed")
        during = readings("press-1", 300, start=100)
        for start in range(0, 300, 50):
            await outbox.append(during[start:start + 50])
        assert not await uplink.flush(0.1)
        assert outbox.stats().depth == 300
        await asyncio.to_thread(mosquitto.start)
        await cloud.until(lambda c: ids(during) <= c.ids(), timeout_s=30,
                          what="every event from the outage")
        assert await uplink.flush(10)
    # Every telemetry event the cloud got is one of ours, holding its one value, once each.
    telemetry = cloud.of_type("telemetry")
    assert {e["id"] for e in telemetry} == ids(before + during)
    assert all(list(e["data"]["values"]) == ["p"] for e in telemetry)
    values = sorted(cloud.values("press-1"))
    assert values == [float(i) for i in range(400)]


async def test_while_the_broker_is_away_retries_stay_within_seconds_jittered(
        tmp_path, mosquitto, cloud) -> None:
    # The shipped defaults: retry every 0.5 s to 2 s while the broker refuses connections.
    defaults = CloudSection()
    async with running(tmp_path, url=mosquitto.url, reconnect_min_s=defaults.reconnect_min_s,
                       reconnect_max_s=defaults.reconnect_max_s) as (uplink, outbox):
        await until(lambda: uplink.connected, 10, "connected")
        await asyncio.to_thread(mosquitto.stop)
        during = readings("press-1", 50)
        await outbox.append(during)
        delays: list[float] = []

        def seven_retries() -> bool:
            delay = uplink.retry_delay_s
            if delay is not None and (not delays or delay != delays[-1]):
                delays.append(delay)
            return len(delays) >= 7

        # Seven attempts: the escalation this replaces (0.5 s doubling to 60 s) would be
        # choosing delays of up to 32 s by now.
        await until(seven_retries, 30, "seven failed attempts", interval_s=0.01)
        assert all(0.5 <= d <= 2.0 for d in delays), delays
        assert len(set(delays)) == len(delays), "jittered: a fleet does not retry in lockstep"
        await asyncio.to_thread(mosquitto.start)
        await cloud.until(lambda c: ids(during) <= c.ids(), timeout_s=30,
                          what="the backlog delivered after the broker's return")


def test_a_refusal_retrying_cannot_fix_still_waits_long() -> None:
    cloud = CloudSection()
    backoff = Uplink(cloud, None, prefix=PREFIX, gateway_id="g").backoff  # type: ignore[arg-type]
    assert all(cloud.refused_retry_s / 2 <= backoff.longest() <= cloud.refused_retry_s
               for _ in range(100))
    assert all(backoff.next() <= cloud.reconnect_max_s for _ in range(100))


async def test_cancelled_while_the_broker_is_silent_it_stops_at_once(tmp_path) -> None:
    got_connect = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                got_connect.set()  # and never a CONNACK
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        # The guard is far below the 10 s CONNACK timeout the uplink would otherwise sit out.
        async with asyncio.timeout(5):
            async with running(tmp_path, url=f"mqtt://127.0.0.1:{port}") as (uplink, _):
                await got_connect.wait()
        assert not uplink.connected
    finally:
        server.close()
        await server.wait_closed()


# -- birth and will --------------------------------------------------------------------


async def test_birth_will_and_a_clean_goodbye_on_the_status_topic(tmp_path, mosquitto) -> None:
    status = RawSubscriber(mosquitto.port, f"{PREFIX}/status")
    try:
        async with Link(mosquitto.port) as link, running(tmp_path, url=link.url) as (uplink, _):
            await until(lambda: [s["status"] for s in status.statuses()] == ["online"], 10,
                        "birth")
            link.cut()  # no DISCONNECT: the broker publishes the will
            await until(lambda: len(status.statuses()) >= 3, 10, "will, then birth again")
            assert [s["status"] for s in status.statuses()] == ["online", "offline", "online"]
            assert status.statuses()[1]["reason"] == "connection lost"
            await until(lambda: uplink.connected, 10, "reconnected")
        # Leaving the block cancelled run(): a clean shutdown says offline itself.
        await until(lambda: len(status.statuses()) >= 4, 10, "goodbye")
        assert status.statuses()[3] == {**status.statuses()[3], "status": "offline",
                                        "reason": "shutdown", "gateway": "gw-test"}
    finally:
        status.close()
    late = RawSubscriber(mosquitto.port, f"{PREFIX}/status")  # a newcomer sees the retained one
    try:
        await until(lambda: late.messages, 10, "retained status")
        assert late.messages[0].retain and late.statuses()[0]["status"] == "offline"
    finally:
        late.close()


# -- TLS and credentials ---------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, key: ec.EllipticCurvePrivateKey,
           cert: x509.Certificate) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def make_pki(directory: Path, *,
             server_valid: tuple[datetime.datetime, datetime.datetime] | None = None) -> Pki:
    """A self-signed CA, a server certificate for 127.0.0.1 (valid now, or `server_valid`)
    and a client certificate."""
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("millwright test CA"))
          .issuer_name(_name("millwright test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(valid[0]).not_valid_after(valid[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                         critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    ca_path, _ = _write(directory, "ca", ca_key, ca)
    issued = []
    for stem, names in (("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                        ("client", [x509.DNSName("gw-test")])):
        key = ec.generate_private_key(ec.SECP256R1())
        since, until = server_valid if stem == "server" and server_valid else valid
        cert = (x509.CertificateBuilder().subject_name(_name(stem)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(since).not_valid_after(until)
                .add_extension(x509.SubjectAlternativeName(names), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    ca_key.public_key()), critical=False)
                .sign(ca_key, hashes.SHA256()))
        issued += _write(directory, stem, key, cert)
    return Pki(ca_path, *issued)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_broker(pki: Pki, *, require_certificate: bool) -> tuple[Mosquitto, int]:
    port = free_port()
    conf = (f"listener {port} 127.0.0.1\ncafile {pki.ca}\ncertfile {pki.server_cert}\n"
            f"keyfile {pki.server_key}\n"
            f"require_certificate {'true' if require_certificate else 'false'}\n")
    return Mosquitto(conf=conf), port


@pytest.fixture
def tls_mosquitto(pki: Pki) -> Iterator[tuple[Mosquitto, int]]:
    broker, port = tls_broker(pki, require_certificate=False)
    with broker:
        yield broker, port


@pytest.fixture
def mtls_mosquitto(pki: Pki) -> Iterator[tuple[Mosquitto, int]]:
    broker, port = tls_broker(pki, require_certificate=True)
    with broker:
        yield broker, port


async def deliver_one(tmp_path: Path, broker: Mosquitto, **cloud: Any) -> None:
    """Run an uplink with `cloud` settings and see an event arrive through `broker`."""
    with CloudListener(broker.url) as listener:
        async with running(tmp_path, **cloud) as (uplink, outbox):
            sent = readings("press-1", 5)
            await outbox.append(sent)
            await listener.until(lambda c: ids(sent) <= c.ids(), 10, "events over TLS")


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "gateway.uplink" and r.levelno >= logging.WARNING]


async def test_tls_verifies_the_broker_by_default(tmp_path, tls_mosquitto, pki, caplog) -> None:
    broker, port = tls_mosquitto
    url = f"mqtts://127.0.0.1:{port}"
    async with running(tmp_path / "a", url=url, reconnect_max_s=60) as (uplink, _):
        await until(lambda: uplink.retry_delay_s is not None, 10, "the refusal")
        assert not uplink.connected
        assert uplink.retry_delay_s >= 30  # not worth retrying soon: at the maximum backoff
    [problem] = problems(caplog)
    assert problem.startswith(f"the TLS certificate of the cloud broker at 127.0.0.1:{port} "
                              "is not trusted (")
    assert problem.endswith("set cloud.ca_file to the CA that signed it")
    await deliver_one(tmp_path / "b", broker, url=url, ca_file=pki.ca)


async def test_mtls_needs_the_client_certificate(tmp_path, mtls_mosquitto, pki, caplog) -> None:
    broker, port = mtls_mosquitto
    url = f"mqtts://127.0.0.1:{port}"
    async with running(tmp_path / "a", url=url, ca_file=pki.ca) as (uplink, _):
        await until(lambda: problems(caplog), 10, "the refusal")
        assert not uplink.connected
    assert "cloud.cert_file" in problems(caplog)[0]
    await deliver_one(tmp_path / "b", broker, url=url, ca_file=pki.ca,
                      cert_file=pki.client_cert, key_file=pki.client_key)


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    passwords = tmp_path / "mosquitto.passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "gw-test", "right horse"],
                   check=True, capture_output=True)
    with Mosquitto(conf=f"allow_anonymous false\npassword_file {passwords}\n") as broker:
        yield broker


async def test_username_and_password_file(tmp_path, password_broker, caplog) -> None:
    wrong, right = tmp_path / "wrong.secret", tmp_path / "right.secret"
    wrong.write_text("battery staple\n")
    right.write_text("right horse\n")
    for secret in (wrong, right):
        secret.chmod(0o600)
    url = password_broker.url
    async with running(tmp_path / "a", url=url, username="gw-test", password_file=wrong,
                       reconnect_max_s=60) as (uplink, _):
        await until(lambda: uplink.retry_delay_s is not None, 10, "the refusal")
        assert not uplink.connected and uplink.retry_delay_s >= 30
    assert len(problems(caplog)) == 1 and "Not authorized" in problems(caplog)[0]
    assert "battery" not in caplog.text
    raw = RawSubscriber(password_broker.port, f"{PREFIX}/#", auth=("gw-test", "right horse"))
    try:
        async with running(tmp_path / "b", url=url, username="gw-test",
                           password_file=right) as (uplink, outbox):
            sent = readings("press-1", 5)
            await outbox.append(sent)
            await until(lambda: len(raw.messages) >= 2, 10, "birth and events")
            assert await uplink.flush(10)
        assert {m.topic for m in raw.messages} >= {f"{PREFIX}/status",
                                                   f"{PREFIX}/telemetry/press-1"}
    finally:
        raw.close()

"""The NATS JetStream uplink against a real nats-server with JetStream: each event stored once.

The outbox is the real one; the stream is read back with a pull consumer
(simulators/jetstream_reader.py). Kills, a lost cluster node and a whole-cluster outage
are in tests/test_nats_e2e.py.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest

from gateway import events
from gateway.config import CloudSection
from gateway.frames import Frame
from gateway.runtime import Gateway
from gateway.store import Outbox
from gateway.subjects import unsanitise_token
from gateway.uplink_nats import NatsUplink
from simulators.jetstream_reader import create_stream, read_stream, stream_counts
from simulators.nats_server import JetStreamServer
from simulators.wait import until
from tests.support import configs
from tests.support.nats_jwt import operator_mode
from tests.support.uplinks import running_uplink
from tests.test_health import get
from tests.test_uplink import Pki, make_pki

PREFIX = "lab/gw-test"
SUBJECTS = "lab.gw-test"
T0 = 1_790_000_000.0


def frames(device: str, n: int, start: int = 0) -> list[events.Event]:
    return [events.telemetry(Frame(device, T0 + i, {"p": float(i)}, T0 + i))
            for i in range(start, start + n)]


@contextlib.asynccontextmanager
async def running(tmp_path: Path, url: str, outbox_name: str = "outbox.db",
                  cloud_keys: dict[str, Any] | None = None,
                  **nats_section: Any) -> AsyncIterator[tuple[NatsUplink, Outbox]]:
    """A real outbox and a NATS uplink running against `url` ([cloud] `cloud_keys` and
    [cloud.nats] `nats_section` besides the defaults)."""
    section = {"stream": "MW", "create_stream": True, **nats_section}
    cloud = CloudSection(url=url, reconnect_min_s=0.05, reconnect_max_s=0.3,
                         refused_retry_s=0.3, nats=section,  # type: ignore[arg-type]
                         **(cloud_keys or {}))
    async with running_uplink(tmp_path / outbox_name, lambda outbox: NatsUplink(
            cloud, outbox, prefix=PREFIX, gateway_id="gw-test")) as running_pair:
        yield running_pair


async def test_each_event_is_one_message_with_its_id_and_a_resend_is_not_stored_again(
        tmp_path: Path, jetstream: JetStreamServer) -> None:
    names = ["press-1", "a.b", "*", ">", "$JS", "two words"]
    sent = [e for name in names for e in frames(name, 50)]
    async with running(tmp_path, jetstream.url) as (uplink, outbox):
        await outbox.append(sent)
        await until(lambda: outbox.stats().depth == 0, 20, "the outbox drained")
        assert uplink.connected and uplink.problem is None
    stored = await read_stream(jetstream.url, "MW", f"{SUBJECTS}.telemetry.*")
    assert len(stored) == len(sent)
    assert [s.msg_id for s in stored] == [s.event["id"] for s in stored]
    assert {s.msg_id for s in stored} == {e.id for e in sent}
    for item in stored:  # one token per device name, which gives the name back
        tokens = item.subject.split(".")
        assert len(tokens) == 4 and unsanitise_token(tokens[3]) == item.event["subject"]
    # The same events again (a resend after a lost PubAck, a replayed outbox): every
    # PubAck says duplicate, every row leaves the outbox, the stream holds no more.
    async with running(tmp_path, jetstream.url, "again.db") as (uplink, outbox):
        await outbox.append(sent)
        await until(lambda: outbox.stats().depth == 0, 20, "the resend acknowledged")
    assert uplink.duplicates == len(sent)
    counts = await stream_counts(jetstream.url, "MW", f"{SUBJECTS}.telemetry.*")
    assert sum(counts.values()) == len(sent)


async def test_in_flight_and_last_ack_at_follow_the_drain(
        tmp_path: Path, jetstream: JetStreamServer) -> None:
    async with running(tmp_path, jetstream.url) as (uplink, outbox):
        assert uplink.in_flight == 0 and uplink.last_ack_at is None
        before = time.time()
        await outbox.append(frames("press-1", 200))
        await until(lambda: outbox.stats().depth == 0, 20, "the outbox drained")
        assert uplink.in_flight == 0
        acked_at = uplink.last_ack_at
        assert acked_at is not None and before <= acked_at <= time.time()
    assert uplink.in_flight == 0 and uplink.last_ack_at == acked_at  # kept past the session


async def test_status_says_online_beats_and_says_offline_on_a_clean_stop(
        tmp_path: Path, jetstream: JetStreamServer) -> None:
    async with running(tmp_path, jetstream.url, heartbeat_s=1) as (uplink, _outbox):
        await until(lambda: uplink.connected, 10, "connected, the stream created")
        await until(lambda: status_count(jetstream, 3), 10, "three heartbeats")
    status = [s.event for s in await read_stream(jetstream.url, "MW", f"{SUBJECTS}.status")]
    assert [s["status"] for s in status[:-1]] == ["online"] * (len(status) - 1)
    assert all(s["heartbeat_s"] == 1 and s["gateway"] == "gw-test" for s in status[:-1])
    assert status[-1]["status"] == "offline" and status[-1]["reason"] == "shutdown"


async def status_count(server: JetStreamServer, at_least: int) -> bool:
    counts = await stream_counts(server.url, "MW", f"{SUBJECTS}.status")
    return sum(counts.values()) >= at_least


async def test_a_stream_that_will_not_do_keeps_the_gateway_not_ready_and_says_why_once(
        tmp_path: Path, jetstream: JetStreamServer, caplog: pytest.LogCaptureFixture,
        counter_protocol: None) -> None:
    raw = configs.base(tmp_path, jetstream.url, health={"enabled": True, "port": 0})
    raw["cloud"].update(refused_retry_s=0.2, nats={"stream": "FLEET"})
    async with Gateway(configs.validate(raw)) as gw:
        await gw.outbox.append(frames("press-1", 20))

        async def not_ready_because(words: str) -> bool:
            answer = await get(gw.health.port, "/readyz")
            return answer.code == 503 and any(words in p for p in answer.json()["problems"])

        await until(lambda: not_ready_because("'FLEET' does not exist"), 10, "missing stream")
        await until(lambda: gw.uplink.problem and "does not exist" in gw.uplink.problem, 5, "")
        # Retried every refused_retry_s, logged once; nothing left the outbox.
        await until(lambda: gw.uplink.backoff.attempts >= 4, 10, "several checks")
        said = [r for r in caplog.records if "does not exist" in r.getMessage()]
        assert len(said) == 1 and said[0].levelno == logging.ERROR
        assert gw.outbox.stats().depth == 20

        await create_stream(jetstream.url, "FLEET", ["other.>"], duplicate_window_s=120)
        await until(lambda: not_ready_because(
            "takes ['other.>'] but not millwright.lab.gw-test."), 10, "a stream without ours")
        await _update(jetstream, "FLEET", ["other.>", "millwright.>"], 10.0)
        await until(lambda: not_ready_because("keeps message ids for 10 s, less than "
                                              "cloud.nats.duplicate_window_s = 120"), 10,
                    "a duplicate window too short")
        await _update(jetstream, "FLEET", ["other.>", "millwright.>"], 120.0)
        await until(lambda: gw.outbox.stats().depth == 0, 10, "drained once the stream is fit")
        assert (await get(gw.health.port, "/readyz")).code == 200
    counts = await stream_counts(jetstream.url, "FLEET", "millwright.>")
    assert counts["millwright.lab.gw-test.telemetry.press-1"] == 20


async def _update(server: JetStreamServer, stream: str, subjects: list[str],
                  window_s: float) -> None:
    client = await nats.connect(server.url)
    try:
        js = client.jetstream()
        config = (await js.stream_info(stream)).config
        await js.update_stream(config.evolve(subjects=subjects, duplicate_window=window_s))
    finally:
        await client.close()


# -- TLS, mTLS and credentials ---------------------------------------------------------------


async def attempt(tmp_path: Path, url: str, name: str, cloud_keys: dict[str, Any] | None = None,
                  **section: Any) -> tuple[NatsUplink, bool]:
    """(the uplink, whether it delivered) after it delivered one event or failed twice."""
    async with running(tmp_path, url, f"{name}.db", cloud_keys, **section) as (uplink, outbox):
        await outbox.append(frames(name, 1))
        await until(lambda: outbox.stats().depth == 0 or uplink.backoff.attempts >= 2, 15,
                    f"{name}: delivered or refused")
        return uplink, outbox.stats().depth == 0


def tls_conf(pki: Pki) -> str:
    return (f'tls {{ cert_file: "{pki.server_cert}", key_file: "{pki.server_key}", '
            f'ca_file: "{pki.ca}", verify: true }}')


async def test_tls_verifies_the_server_and_mtls_shows_our_certificate(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    client = {"ca_file": pki.ca, "cert_file": pki.client_cert, "key_file": pki.client_key}
    with JetStreamServer(conf=tls_conf(pki)) as server:
        url = f"tls://127.0.0.1:{server.port}"
        uplink, ok = await attempt(tmp_path, url, "mtls", client)
        assert ok and uplink.backoff.attempts == 0
        # Verification is on by default: the system's CAs do not know our test CA.
        uplink, ok = await attempt(tmp_path, url, "untrusted")
        assert not ok and uplink.problem and "is not trusted" in uplink.problem
        assert "set cloud.ca_file" in uplink.problem
        # The server asks for a client certificate (mTLS): without one, no connection.
        uplink, ok = await attempt(tmp_path, url, "no-cert", {"ca_file": pki.ca})
        assert not ok and uplink.problem


def secret_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


async def test_a_password_file_or_an_nkey_seed_file_and_neither_is_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    password = "pw-" + os.urandom(8).hex()
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(seed).public_key.decode()
    users = (f'authorization {{ users = [ {{user: gw, password: "{password}"}}, '
             f'{{nkey: {public}}} ] }}')
    caplog.set_level(logging.DEBUG)
    with JetStreamServer(conf=users) as server:
        good = secret_file(tmp_path, "pw", password)
        uplink, ok = await attempt(tmp_path, server.url, "user", user="gw", password_file=good)
        assert ok
        _, ok = await attempt(tmp_path, server.url, "nkey",
                              nkey_seed_file=secret_file(tmp_path, "nk", seed.decode()))
        assert ok
        wrong = secret_file(tmp_path, "wrong", "pw-wrong")
        uplink, ok = await attempt(tmp_path, server.url, "wrong", user="gw", password_file=wrong)
        assert not ok and uplink.problem and "refused our credentials" in uplink.problem
        assert "cloud.nats.creds_file, nkey_seed_file, or user and password_file" in \
            uplink.problem
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert password not in text and seed.decode() not in text


async def test_a_creds_file_signs_in_and_its_seed_is_never_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    conf, creds, seed = operator_mode(tmp_path)
    caplog.set_level(logging.DEBUG)
    with JetStreamServer(conf=conf) as server:
        uplink, ok = await attempt(tmp_path, server.url, "creds", creds_file=creds)
        assert ok and uplink.backoff.attempts == 0
        # Without the creds file the server knows no one.
        uplink, ok = await attempt(tmp_path, server.url, "anonymous")
        assert not ok and uplink.problem and "refused our credentials" in uplink.problem
    assert not any(seed in r.getMessage() for r in caplog.records)


async def test_an_event_over_the_servers_max_payload_is_dropped_as_too_large_and_said(
        tmp_path: Path) -> None:
    with JetStreamServer(conf="max_payload: 4096") as server:
        huge = events.telemetry(Frame("press-1", T0, {"note": "x" * 8_000}, T0))
        async with running(tmp_path, server.url) as (_uplink, outbox):
            await outbox.append([*frames("press-1", 5), huge, *frames("press-1", 5, 5)])
            await until(lambda: outbox.stats().depth == 0, 10, "the outbox drained")
            assert outbox.stats().dropped == {"too_large": 1}
        stored = await read_stream(server.url, "MW", f"{SUBJECTS}.*.*")
    kinds = [item.event["type"].rpartition(".")[2] for item in stored]
    assert kinds.count("telemetry") == 10 and huge.id not in {i.msg_id for i in stored}
    [notice] = [item.event for item in stored if item.event["type"].endswith("data_dropped")]
    assert notice["data"]["by_reason"] == {"too_large": 1}


async def test_an_event_over_the_streams_max_msg_size_is_dropped_as_too_large(
        tmp_path: Path, jetstream: JetStreamServer) -> None:
    client = await nats.connect(jetstream.url)
    try:
        await client.jetstream().add_stream(name="MW", subjects=[f"{SUBJECTS}.>"],
                                            max_msg_size=4096, duplicate_window=120.0)
    finally:
        await client.close()
    huge = events.telemetry(Frame("press-1", T0, {"note": "x" * 8_000}, T0))
    async with running(tmp_path, jetstream.url, create_stream=False) as (uplink, outbox):
        await outbox.append([*frames("press-1", 5), huge, *frames("press-1", 5, 5)])
        await until(lambda: outbox.stats().depth == 0, 10, "the outbox drained")
        assert outbox.stats().dropped == {"too_large": 1} and uplink.problem is None
    counts = await stream_counts(jetstream.url, "MW", f"{SUBJECTS}.telemetry.*")
    assert sum(counts.values()) == 10

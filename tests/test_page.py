"""The page's server side: its bounded state, its JSON and event stream, its bounds, its login."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway import page_state, status_cli
from gateway.errors import ConfigError
from gateway.events import maintenance_needed
from gateway.frames import Frame, PointSpec
from gateway.health import HealthServer
from gateway.page import QUEUE_SIZE, Page
from gateway.page_access import Access
from gateway.page_state import ALARM_HISTORY, SPARK_SAMPLES, SPARK_STEP_S, PageState
from gateway.runtime import Gateway
from simulators.mosquitto import Mosquitto
from simulators.wait import until
from tests.support import configs
from tests.test_health import healthy
from tests.test_mqtt_driver import _certificates

TIMEOUT_S = 10.0


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def frame(t: float, **values: Any) -> Frame:
    return Frame("press-1", t, values, t)


# -- the state ----------------------------------------------------------------------


def test_state_keeps_last_values_and_bounded_sparklines() -> None:
    state = PageState(clock=lambda: 1000.0)
    state.add_device("press-1", "modbus", 0.5, [PointSpec("temp", "float32", "degC")])
    steps_per_sample = 4
    count = SPARK_SAMPLES * steps_per_sample * 2
    for i in range(count):
        state.frames([frame(i * SPARK_STEP_S / steps_per_sample, temp=float(i), flag=True,
                            text="x")])
    [device] = state.devices()
    points = {p["name"]: p for p in device["points"]}
    assert points["temp"]["value"] == float(count - 1) and points["temp"]["unit"] == "degC"
    assert points["temp"]["quality"] == "good" and device["frames"] == count
    ring = state.history()["press-1"]["temp"]
    assert len(ring) == SPARK_SAMPLES  # bounded, and one sample per step:
    assert all(b[0] - a[0] == SPARK_STEP_S for a, b in zip(ring, ring[1:], strict=False))
    assert set(state.history()["press-1"]) == {"temp"}  # bools and text have no sparkline


def test_state_bounds_devices_and_alarm_history(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(page_state, "MAX_DEVICES", 3)
    state = PageState()
    for n in range(10):
        state.frames([Frame(f"topic-{n}", 1.0, {"v": 1}, 1.0)])
    assert len(state.devices()) == 3
    for n in range(ALARM_HISTORY + 5):
        state.events([maintenance_needed("press-1", {"asset": "press-1", "probability": n},
                                         ("k", n), at=1.0)])
    alarms = state.alarms("press-1")
    assert len(alarms) == ALARM_HISTORY and alarms[-1]["probability"] == ALARM_HISTORY + 4


def test_state_follows_online_errors_and_poll_time() -> None:
    state = PageState(clock=lambda: 50.0)
    state.add_device("press-1", "modbus", 1.0, [])
    state.set_online("press-1", False, "unit 1: no answer within 1s")
    state.error("press-1", "unit 1: no answer within 1s")
    state.polled("press-1", 0.0123)
    [device] = state.devices()
    assert device["online"] is False and device["since"] == 50.0
    assert device["reason"] == device["last_error"] == "unit 1: no answer within 1s"
    assert device["errors"] == 1 and device["poll_ms"] == 12.3


# -- over HTTP ----------------------------------------------------------------------

FIGURES = {"gateway": {"id": "gw", "site": "s"}, "outbox": {}, "uplink": {}, "assets": []}


def serve(state: PageState, access: Access | None = None, *, figures: Any = None,
          **page: Any) -> HealthServer:
    def no_mapping(device: str, point: str) -> None:
        return None

    built = Page(state, figures or (lambda: FIGURES), no_mapping,
                 access or Access(required=False), **page)
    return HealthServer("127.0.0.1", 0, healthy, page=built)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as client:
        yield client


async def next_state(lines: aiohttp.StreamReader) -> dict[str, Any]:
    """The next server-sent `state` event's data."""
    event = ""
    while True:
        line = (await asyncio.wait_for(lines.readline(), TIMEOUT_S)).decode()
        assert line, "the event stream ended"
        if line.startswith("event: "):
            event = line[7:].strip()
        elif line.startswith("data: ") and event == "state":
            return dict(json.loads(line[6:]))


async def test_page_files_state_and_live_events(session: aiohttp.ClientSession) -> None:
    state = PageState()
    state.add_device("press-1", "modbus", 1.0, [PointSpec("temp", "float32", "degC")])
    state.frames([frame(1.0, temp=20.5)])
    server = serve(state, tick_s=0.05)
    await server.start()
    try:
        async with session.get(server.url + "/") as answer:
            assert answer.status == 200 and answer.content_type == "text/html"
            assert '<script src="/page.js"' in await answer.text()
            assert "default-src 'self'" in answer.headers["Content-Security-Policy"]
        async with session.get(server.url + "/page.js") as answer:
            assert answer.content_type == "text/javascript" and "EventSource" in await answer.text()
        async with session.get(server.url + "/api/state") as answer:
            body = await answer.json()
        assert body["devices"][0]["points"][0]["value"] == 20.5
        assert body["history"] == {"press-1": {"temp": [[1.0, 20.5]]}}
        async with session.get(server.url + "/api/events") as stream:
            assert stream.content_type == "text/event-stream"
            assert (await next_state(stream.content))["devices"][0]["points"][0]["value"] == 20.5
            state.frames([frame(2.0, temp=21.5)])

            async def updated() -> bool:
                snapshot = await next_state(stream.content)
                return bool(snapshot["devices"][0]["points"][0]["value"] == 21.5)

            await until(updated, TIMEOUT_S, "the new value in the event stream")
    finally:
        await server.stop()


async def test_a_browser_that_stops_reading_is_dropped() -> None:
    """Events far bigger than the socket buffers, a client that never reads: its queue
    fills (QUEUE_SIZE events), its writes time out, and the stream is dropped."""
    big = {**FIGURES, "padding": "x" * 512 * 1024}
    server = serve(PageState(), figures=lambda: big, tick_s=0.01, write_timeout_s=0.5)
    await server.start()
    page = server._page
    assert page is not None and QUEUE_SIZE < 10
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await until(lambda: page.streams == 1, TIMEOUT_S, "the stream open")
        await until(lambda: page.streams == 0, TIMEOUT_S, "the silent client dropped")
        async with aiohttp.ClientSession() as client, client.get(server.url + "/healthz") as ok:
            assert ok.status == 200
    finally:
        writer.close()
        await server.stop()


async def test_event_streams_are_capped(session: aiohttp.ClientSession) -> None:
    server = serve(PageState(), max_streams=2)
    await server.start()
    try:
        streams = [await session.get(server.url + "/api/events") for _ in range(2)]
        async with session.get(server.url + "/api/events") as third:
            assert third.status == 503
        async with session.get(server.url + "/readyz") as probe:
            assert probe.status == 200  # probes still have room
        for stream in streams:
            stream.close()
    finally:
        await server.stop()


async def test_login_guards_the_page_but_not_the_probes(session: aiohttp.ClientSession) -> None:
    server = serve(PageState(), Access(required=True, username="op", password="s3cret pw"))
    await server.start()
    try:
        for path in ("/", "/api/state", "/api/events", "/api/mapping?device=a&point=b"):
            async with session.get(server.url + path) as answer:
                assert answer.status == 401, path
                assert answer.headers["WWW-Authenticate"].startswith('Basic realm="millwright"')
        for login in (basic("op", "wrong"), basic("nobody", "s3cret pw"),
                      {"Authorization": "Bearer s3cret pw"}):
            async with session.get(server.url + "/api/state", headers=login) as answer:
                assert answer.status == 401
        async with session.get(server.url + "/api/state",
                               headers=basic("op", "s3cret pw")) as answer:
            assert answer.status == 200 and "s3cret" not in await answer.text()
        for path in ("/healthz", "/readyz", "/metrics"):
            async with session.get(server.url + path) as answer:
                assert answer.status == 200, path
    finally:
        await server.stop()


@pytest.mark.parametrize(("host", "code"), [
    ("127.0.0.1:9110", 200), ("localhost:9110", 200), ("[::1]:9110", 200), ("localhost", 200),
    ("evil.example:9110", 403), ("evil.example", 403), ("192.0.2.7:9110", 403)])
async def test_on_loopback_the_page_answers_only_local_names(
        session: aiohttp.ClientSession, host: str, code: int) -> None:
    """A web site rebinding its name to 127.0.0.1 cannot read the page through a browser."""
    server = serve(PageState())
    await server.start()
    try:
        async with session.get(server.url + "/api/state", headers={"Host": host}) as answer:
            assert answer.status == code
        async with session.get(server.url + "/healthz", headers={"Host": host}) as answer:
            assert answer.status == 200
    finally:
        await server.stop()


async def test_exposed_without_a_login_the_page_is_off(session: aiohttp.ClientSession) -> None:
    server = serve(PageState(), Access(required=True))
    await server.start()
    try:
        async with session.get(server.url + "/") as answer:
            assert answer.status == 403
            assert "username and password_file" in (await answer.json())["error"]
    finally:
        await server.stop()


async def test_a_gateway_exposed_with_login_and_tls(
        tmp_path: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]) -> None:
    ca, cert, key = _certificates(tmp_path)
    password = tmp_path / "page-password"
    password.write_text("operator pw\n")
    password.chmod(0o600)
    raw = configs.base(tmp_path, mosquitto.url, health={
        "enabled": True, "listen": "0.0.0.0:0", "username": "operator",
        "password_file": str(password), "cert_file": str(cert), "key_file": str(key)})
    trust = ssl.create_default_context(cafile=str(ca))
    async with Gateway(configs.validate(raw)) as gw, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=trust)) as client:
        url = f"https://127.0.0.1:{gw.health.port}"
        assert gw.health.url.startswith("https://")
        async with client.get(url + "/api/state") as answer:
            assert answer.status == 401
        async with client.get(url + "/api/state",
                              headers=basic("operator", "operator pw")) as answer:
            body = await answer.text()
            assert answer.status == 200 and "operator pw" not in body
            assert json.loads(body)["gateway"] == {"id": "gw-test", "site": "lab"}
        async with client.get(url + "/healthz") as answer:
            assert answer.status == 200
        # `millwright status --config` finds the TLS endpoint and trusts its certificate.
        toml = tmp_path / "exposed.toml"
        raw["health"]["listen"] = f"0.0.0.0:{gw.health.port}"
        configs.write(toml, raw)
        assert await asyncio.to_thread(status_cli.main, ["--config", str(toml)]) in (0, 1)
        assert f"at https://127.0.0.1:{gw.health.port}: " in capsys.readouterr().out
        with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served
            async with aiohttp.ClientSession() as plain:
                await plain.get(f"http://127.0.0.1:{gw.health.port}/healthz")


async def test_unusable_certificate_files_name_the_keys(tmp_path: Path,
                                                        mosquitto: Mosquitto) -> None:
    ca, cert, _key = _certificates(tmp_path)
    raw = configs.base(tmp_path, mosquitto.url, health={
        "enabled": True, "port": 0, "cert_file": str(cert), "key_file": str(ca)})
    with pytest.raises(ConfigError) as caught:
        async with Gateway(configs.validate(raw)):
            pass
    assert caught.value.problems[0].startswith("health.cert_file, health.key_file: cannot "
                                               "serve TLS")
    async with Gateway(configs.validate(raw | {"health": {"enabled": True, "port": 0}})):
        pass  # the outbox and the lock were released: the same data_dir starts again

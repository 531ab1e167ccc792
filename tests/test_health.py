"""The health endpoint over real sockets, `millwright status` reading it, and both on a Gateway."""

from __future__ import annotations

import asyncio
import json
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from gateway import metrics, status_cli
from gateway.health import MAX_HEADERS, MAX_REQUEST_BYTES, HealthServer
from gateway.runtime import Gateway
from gateway.status import GatewayStatus, OutboxFigures
from simulators.mosquitto import Mosquitto
from simulators.wait import until, wait_for
from tests.support import configs, counter_driver

TIMEOUT_S = 10.0

def healthy() -> GatewayStatus:
    return GatewayStatus(gateway="line-1", site="plant-a", uptime_s=42.0, outbox_writable=True,
                         outbox=OutboxFigures(depth=3, bytes=2048, oldest_age_s=1.5),
                         uplink_connected=True, devices={"press-1": True, "mill-2": True})


class Response:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.code = int(status_line.split(" ")[1])
        self.headers = {k.lower(): v.strip() for k, _, v in
                        (line.partition(":") for line in header_lines)}

    def json(self) -> Any:
        return json.loads(self.body)


async def request(port: int, raw: bytes) -> Response:
    """Send `raw` bytes as the request and read the whole answer (the server closes)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT_S)
    try:
        writer.write(raw)
        await writer.drain()
        return Response(await asyncio.wait_for(reader.read(), TIMEOUT_S))
    finally:
        writer.close()
        await writer.wait_closed()


async def get(port: int, path: str) -> Response:
    return await request(port, f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())


@pytest.fixture
def status() -> GatewayStatus:
    """The status the server reports; tests change it in place."""
    return healthy()


@pytest.fixture
async def server(status: GatewayStatus) -> AsyncIterator[HealthServer]:
    health = HealthServer("127.0.0.1", 0, lambda: status)
    await health.start()
    yield health
    await health.stop()


# -- the endpoints ------------------------------------------------------------------


async def test_port_zero_gives_a_real_port_and_constructor_does_no_io() -> None:
    health = HealthServer("127.0.0.1", 0, healthy)
    with pytest.raises(RuntimeError, match="not started"):
        _ = health.port
    await health.start()
    try:
        assert health.port > 0
        assert health.url == f"http://127.0.0.1:{health.port}"
    finally:
        await health.stop()


async def test_healthz_answers_while_the_loop_runs(server: HealthServer) -> None:
    response = await get(server.port, "/healthz")
    assert response.code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"
    assert response.headers["server"] == "millwright"  # no library versions for a scanner
    assert response.json()["alive"] is True


async def test_readyz_ready(server: HealthServer) -> None:
    response = await get(server.port, "/readyz")
    assert response.code == 200
    body = response.json()
    assert body["ready"] is True and body["problems"] == []
    # The runtime's details are passed through.
    assert body["devices"] == {"press-1": True, "mill-2": True}
    assert body["outbox"]["depth"] == 3


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"outbox_writable": False}, "outbox is not writable"),
        ({"uplink_connected": False}, "not connected to the cloud broker"),
        ({"devices": {"press-1": True, "mill-2": False}}, "1 of 2 devices offline: mill-2"),
        # Connected, yet not delivering: the uplink's own reason.
        ({"uplink_problem": "the cloud broker acknowledged no publish for 30.0 s"},
         "the cloud uplink is not delivering: the cloud broker acknowledged no publish"),
        ({"uplink_connected": False, "uplink_problem": "the cloud broker refuses every publish"},
         "not connected to the cloud broker: events wait in the outbox (the cloud broker "
         "refuses every publish)"),
    ],
)
async def test_readyz_not_ready_says_why(
    server: HealthServer, status: GatewayStatus, change: dict[str, Any], problem: str
) -> None:
    for key, value in change.items():
        setattr(status, key, value)
    response = await get(server.port, "/readyz")
    assert response.code == 503
    body = response.json()
    assert body["ready"] is False
    assert len(body["problems"]) == 1 and body["problems"][0].startswith(problem)
    # Liveness is a different question: the loop still runs.
    assert (await get(server.port, "/healthz")).code == 200


async def test_readyz_when_status_fails(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> GatewayStatus:
        raise KeyError("outbox")

    health = HealthServer("127.0.0.1", 0, broken)
    await health.start()
    try:
        for _ in range(2):
            response = await get(health.port, "/readyz")
            assert response.code == 503
            assert response.json() == {"ready": False,
                                       "problems": ["status unavailable: KeyError"]}
    finally:
        await health.stop()
    # Logged once, not on every probe.
    assert caplog.text.count("health status() failed") == 1


async def test_metrics_in_prometheus_text_format(server: HealthServer) -> None:
    metrics.DEVICE_READINGS.labels("press-1").inc(7)
    response = await get(server.port, "/metrics")
    assert response.code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.body.decode()
    for name in (
        "millwright_device_readings_total", "millwright_device_errors_total",
        "millwright_device_online", "millwright_outbox_events", "millwright_outbox_bytes",
        "millwright_outbox_oldest_age_seconds", "millwright_outbox_dropped_total",
        "millwright_outbox_writable", "millwright_uplink_connected",
        "millwright_uplink_published_events_total", "millwright_uplink_acked_events_total",
        "millwright_uplink_ack_latency_seconds", "millwright_predictor_evaluations_total",
        "millwright_predictor_batch_seconds", "millwright_predictor_alarms_total",
    ):
        assert f"# TYPE {name} " in text, name
    assert 'millwright_device_readings_total{device="press-1"} ' in text


async def test_metrics_openmetrics_when_asked(server: HealthServer) -> None:
    response = await request(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
                             b"Accept: application/openmetrics-text; version=1.0.0\r\n\r\n")
    assert response.code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.body.endswith(b"# EOF\n")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"POST /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 405),
        (b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        (b"GET /healthz?verbose=1 HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (b"GET /healthz HTTP/1.0\r\n\r\n", 200),
        (b"HELLO\r\n\r\n", 400),
        (b"GET /healthz SPDY/3\r\n\r\n", 400),
        # HTTP/1.1 requires a Host header (RFC 9112 section 3.2).
        (b"GET /healthz HTTP/1.1\r\n\r\n", 400),
        # The request-size bound: a head line over MAX_REQUEST_BYTES, or too many lines.
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * (MAX_REQUEST_BYTES + 1)
         + b"\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
         + b"".join(b"X-%d: 1\r\n" % i for i in range(2 * MAX_HEADERS)) + b"\r\n", 400),
    ],
)
async def test_bad_requests_get_clear_answers(server: HealthServer, raw: bytes, code: int) -> None:
    response = await request(server.port, raw)
    assert response.code == code
    if code == 405:
        assert response.headers["allow"] == "GET"


async def test_a_silent_client_times_out() -> None:
    health = HealthServer("127.0.0.1", 0, healthy, request_timeout_s=0.2)
    await health.start()
    try:
        for raw in (b"", b"GET /healthz HTTP/1.1\r\n"):  # nothing, or a head that never ends
            reader, writer = await asyncio.open_connection("127.0.0.1", health.port)
            writer.write(raw)
            # Closed by the server (well before the test's own timeout), unanswered.
            assert await asyncio.wait_for(reader.read(), TIMEOUT_S) == b""
            writer.close()
        await until(lambda: health.active_clients == 0, TIMEOUT_S, "no connection left")
    finally:
        await health.stop()


class _Huge:
    """A collector whose exposition is far larger than the sockets' buffers."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("huge", "a very long label", labels=["text"])
        family.add_metric(["x" * 32 * 1024 * 1024], 1.0)
        yield family


async def test_a_client_that_does_not_read_its_answer_is_cut_off() -> None:
    registry = CollectorRegistry()
    registry.register(_Huge())  # type: ignore[arg-type]
    health = HealthServer("127.0.0.1", 0, healthy, registry=registry, request_timeout_s=0.5)
    await health.start()
    _, writer = await asyncio.open_connection("127.0.0.1", health.port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")  # and never read
        await until(lambda: health.active_clients == 1, TIMEOUT_S, "the client served")
        await until(lambda: health.active_clients == 0, TIMEOUT_S, "the reader cut off")
        assert (await get(health.port, "/healthz")).code == 200
    finally:
        writer.close()
        await health.stop()


async def test_clients_are_capped_and_stop_closes_idle_ones(status: GatewayStatus) -> None:
    health = HealthServer("127.0.0.1", 0, lambda: status, max_clients=2)
    await health.start()
    port = health.port
    idle = [await asyncio.open_connection("127.0.0.1", health.port) for _ in range(2)]
    try:
        await until(lambda: health.active_clients == 2, TIMEOUT_S, "two clients served")
        assert (await get(health.port, "/healthz")).code == 503
        await asyncio.wait_for(health.stop(), TIMEOUT_S)
        # The idle clients were disconnected, and nothing listens any more.
        for reader, _ in idle:
            assert await asyncio.wait_for(reader.read(), TIMEOUT_S) == b""
        with pytest.raises(OSError):
            await get(port, "/healthz")
    finally:
        for _, writer in idle:
            writer.close()


async def test_port_in_use_names_the_fix() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        health = HealthServer("127.0.0.1", taken.getsockname()[1], healthy)
        with pytest.raises(OSError, match=r"change \[health\] port"):
            await health.start()


# -- millwright status --------------------------------------------------------------


async def run_status(argv: list[str]) -> int:
    # The CLI blocks on urllib: keep it off the loop that serves the endpoint.
    return await asyncio.to_thread(status_cli.main, argv)


async def test_status_ready(server: HealthServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_status(["--url", server.url]) == 0
    out = capsys.readouterr().out
    assert f"plant-a/line-1 at {server.url}: READY" in out
    assert "outbox   writable, 3 events waiting, 2.0 KiB, oldest 2 s" in out
    assert "uplink   connected" in out
    assert "devices  2/2 online" in out


async def test_status_not_ready(
    server: HealthServer, status: GatewayStatus, capsys: pytest.CaptureFixture[str]
) -> None:
    status.devices["mill-2"] = False
    status.uplink_connected = False
    assert await run_status(["--url", server.url]) == 1
    out = capsys.readouterr().out
    assert "NOT READY" in out
    assert "! not connected to the cloud broker" in out
    assert "mill-2                   OFFLINE" in out


async def test_status_says_why_a_connected_uplink_is_not_ready(
    server: HealthServer, status: GatewayStatus, capsys: pytest.CaptureFixture[str]
) -> None:
    status.uplink_problem = "the cloud broker acknowledged no publish for 30.0 s"
    assert await run_status(["--url", server.url]) == 1
    out = capsys.readouterr().out
    assert "! the cloud uplink is not delivering: the cloud broker acknowledged no" in out
    assert "uplink   connected: the cloud broker acknowledged no publish for 30.0 s" in out


async def test_status_json(
    server: HealthServer, status: GatewayStatus, capsys: pytest.CaptureFixture[str]
) -> None:
    status.outbox_writable = False
    assert await run_status(["--url", server.url + "/", "--json"]) == 1
    body = json.loads(capsys.readouterr().out)
    assert body["ready"] is False and body["outbox_writable"] is False


async def test_status_finds_the_endpoint_in_the_config(
    server: HealthServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "millwright.toml"
    config.write_text(f'[gateway]\nid = "x"\n[health]\nhost = "0.0.0.0"\nport = {server.port}\n')
    assert await run_status(["--config", str(config)]) == 0
    assert "READY" in capsys.readouterr().out


def test_status_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on `port` now.
    assert status_cli.main(["--url", f"http://127.0.0.1:{port}", "--timeout-s", "2"]) == 2
    assert "no gateway answering at" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (None, "file not found"),
        ("[health\n", "TOML syntax error"),
        ("[health]\nenabled = false\n", "the health endpoint is off"),
        ("[health]\nport = 0\n", "pass --url instead"),
        ("[health]\nport = 70000\n", "health.port"),
    ],
)
def test_status_config_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str | None, message: str
) -> None:
    config = tmp_path / "millwright.toml"
    if toml is not None:
        config.write_text(toml)
    assert status_cli.main(["--config", str(config)]) == 2
    assert message in capsys.readouterr().err


def test_status_config_paths_are_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As `millwright run` reads them: `password_file = "pw"` is the file beside the config.
    beside = tmp_path / "etc"
    beside.mkdir()
    (beside / "pw").write_text("operator pw\n")
    (beside / "pw").chmod(0o600)
    (beside / "cert.pem").write_text("not read here\n")
    (beside / "key.pem").write_text("not read here\n")
    config = beside / "millwright.toml"
    config.write_text('[health]\nport = 9123\nusername = "operator"\npassword_file = "pw"\n'
                      'cert_file = "cert.pem"\nkey_file = "key.pem"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    url, cafile = status_cli._url_from_config(config)
    assert url == "https://127.0.0.1:9123"
    assert cafile == beside / "cert.pem"
    config.write_text('[health]\nport = 9123\nusername = "operator"\n'
                      'password_file = "missing"\n')
    with pytest.raises(ValueError, match="health.password_file"):
        status_cli._url_from_config(config)


# -- with a running gateway (runtime, outbox, uplink and broker all real) -----------

ROOT = Path(__file__).resolve().parents[1]




def sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text; 0 when the series has no such sample yet."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


async def scrape(port: int) -> str:
    response = await get(port, "/metrics")
    assert response.code == 200
    return response.body.decode()


async def readyz(port: int) -> dict[str, Any]:
    response = await get(port, "/readyz")
    body = response.json()
    assert response.code == (200 if body["ready"] else 503)
    return body


async def test_metrics_and_readiness_follow_a_running_gateway(
    tmp_path: Path, mosquitto: Mosquitto, counter_protocol: None
) -> None:
    raw = configs.base(tmp_path, mosquitto.url,
                       [counter_driver.table("lathe-7", rate_hz=200, batch=10)],
                       health={"enabled": True, "port": 0})
    async with Gateway(configs.validate(raw)) as gw:
        port = gw.health.port
        ready: dict[str, Any] = {}

        async def is_ready() -> bool:
            ready.update(await readyz(port))
            return bool(ready["ready"])

        await until(is_ready, 20, "gateway ready")
        assert ready["devices"] == {"lathe-7": True} and ready["outbox_writable"] is True

        first = await scrape(port)
        readings = ("millwright_device_readings_total", {"device": "lathe-7"})
        acked = ("millwright_uplink_acked_events_total", {})
        later: list[str] = []

        async def moved() -> bool:
            later[:] = [await scrape(port)]
            return all(sample(later[0], n, **lb) > sample(first, n, **lb) + 50
                       for n, lb in (readings, acked))

        await until(moved, 20, "readings and acks counted in /metrics")
        assert sample(later[0], "millwright_device_online", device="lathe-7") == 1
        assert sample(later[0], "millwright_uplink_connected") == 1
        assert sample(later[0], "millwright_outbox_writable") == 1
        assert sample(later[0], "millwright_uplink_ack_latency_seconds_count") > 0

        # The cloud broker goes away: not ready, and the backlog shows in /metrics.
        mosquitto.stop()

        async def backlog() -> bool:
            body, text = await readyz(port), await scrape(port)
            return (not body["ready"] and sample(text, "millwright_uplink_connected") == 0
                    and sample(text, "millwright_outbox_events") > 100)

        await until(backlog, 20, "not ready with a backlog while the broker is down")
        assert any("cloud broker" in p for p in (await readyz(port))["problems"])
        assert (await get(port, "/healthz")).code == 200

        mosquitto.start()

        async def drained() -> bool:
            return bool((await readyz(port))["ready"]) and (
                sample(await scrape(port), "millwright_outbox_events") < 100)

        await until(drained, 30, "ready again, backlog delivered")


class GatewayProcess:
    """`millwright run` in a child process with its log read from a pipe, line by line."""

    def __init__(self, config_path: Path) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.run_gateway", "run", "--config",
             str(config_path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        # A pipe, not a file: the file-size limit set below must not cut the log.
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def log(self) -> str:
        return "\n".join(self.lines[-40:])

    def health_url(self) -> str:
        found: list[str] = []

        def announced() -> bool:
            found[:] = [m.group(1) for line in self.lines
                        if (m := re.search(r"health endpoint on (http://\S+)", line))]
            return bool(found) or self.proc.poll() is not None

        wait_for(announced, 30, "the health endpoint's log line")
        assert found, self.log()
        return found[0]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._reader.join(10)
            assert self.proc.stdout is not None
            self.proc.stdout.close()


def http_json(url: str) -> tuple[int, dict[str, Any]]:
    code, body = status_cli._get(url, 5.0)
    return code, json.loads(body)


def status_command(url: str) -> tuple[int, str]:
    """The real `millwright status` command line, through the lead's CLI dispatch."""
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "status", "--url", url],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


def test_readiness_flips_when_the_outbox_cannot_write_and_back(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A disk that refuses writes (what a read-only remount or a full disk does to SQLite).

    Made real without privileges: RLIMIT_FSIZE of the gateway process is dropped
    to one byte, so every write to the outbox's files fails with EFBIG inside
    SQLite (Python ignores SIGXFSZ), exactly as writes fail with EROFS after the
    kernel remounts a failing SD card read-only. Then the limit is lifted.
    """
    raw = configs.base(tmp_path, mosquitto.url,
                       [counter_driver.table("lathe-7", rate_hz=100, batch=5)],
                       health={"enabled": True, "port": 0})
    gateway = GatewayProcess(configs.write(tmp_path / "gw.toml", raw))
    try:
        url = gateway.health_url()
        wait_for(lambda: http_json(url + "/readyz")[0] == 200, 30, "ready")
        assert status_command(url)[0] == 0

        soft, hard = resource.prlimit(gateway.proc.pid, resource.RLIMIT_FSIZE)
        resource.prlimit(gateway.proc.pid, resource.RLIMIT_FSIZE, (1, hard))
        wait_for(lambda: http_json(url + "/readyz")[1]["outbox_writable"] is False, 30,
                 "outbox reported not writable")
        code, body = http_json(url + "/readyz")
        assert code == 503 and body["ready"] is False
        assert any(p.startswith("outbox is not writable") for p in body["problems"])
        # Liveness is unaffected: restarting would not fix a disk.
        assert http_json(url + "/healthz")[0] == 200
        _, metrics_text = status_cli._get(url + "/metrics", 5.0)
        assert sample(metrics_text.decode(), "millwright_outbox_writable") == 0
        exit_code, printed = status_command(url)
        assert exit_code == 1 and "NOT WRITABLE" in printed, printed

        resource.prlimit(gateway.proc.pid, resource.RLIMIT_FSIZE, (soft, hard))
        wait_for(lambda: http_json(url + "/readyz")[0] == 200, 30, "ready again")
        assert status_command(url)[0] == 0
    finally:
        code = gateway.stop()
    assert code == 0, gateway.log()
    log = gateway.log()
    assert "outbox write failed" in log and "is writable again" in log, log

"""Security behaviours not already proven elsewhere (docs/reliability.md lists every one with
its test): TLS verification off only on request and loudly, passwords only from files, secret
files readable by others, hostile device names in cloud topics, the health endpoint on
loopback, and no secret or forged line in what the operator reads.
"""

from __future__ import annotations

import datetime
import io
import json
import logging
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from drivers.mqtt.codec import Plan, PointPlan, decode, parse_path
from drivers.mqtt.driver import RejectLog
from gateway import logs, mqtt_tls, secrets
from gateway.config import validate
from gateway.config_base import TlsClient
from gateway.errors import ConfigError
from gateway.runtime import Gateway
from gateway.topics import sanitise_level, unsanitise_level
from simulators.cloud_listener import CloudListener
from simulators.mosquitto import Mosquitto
from simulators.wait import until
from tests.support import configs
from tests.test_uplink import Pki, make_pki, readings, running, tls_broker

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "millwright/lab/gw-test"


pytestmark = pytest.mark.usefixtures("counter_protocol")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.support.run_gateway", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


# -- TLS: verification on unless turned off explicitly, and then a warning ------------------


def test_the_default_tls_context_verifies_the_certificate_and_the_host_name() -> None:
    context = mqtt_tls.tls_context(TlsClient())
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_turning_verification_off_takes_a_setting_and_logs_a_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    context = mqtt_tls.tls_context(TlsClient(tls_insecure=True))
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "TLS certificate verification is OFF (tls_insecure = true)" in warning.getMessage()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_mosquitto(pki: Pki) -> Iterator[tuple[Mosquitto, int]]:
    broker, port = tls_broker(pki, require_certificate=False)
    with broker:
        yield broker, port


async def test_an_insecure_uplink_connects_to_an_untrusted_broker_only_with_a_warning(
        tmp_path: Path, tls_mosquitto: tuple[Mosquitto, int],
        caplog: pytest.LogCaptureFixture) -> None:
    broker, port = tls_mosquitto
    with CloudListener(broker.url) as listener:
        async with running(tmp_path, url=f"mqtts://127.0.0.1:{port}",
                           tls_insecure=True) as (uplink, outbox):
            sent = readings("press-1", 3)
            await outbox.append(sent)
            await listener.until(lambda c: {e.id for e in sent} <= c.ids(), 10, "events")
    assert any("verification is OFF" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)


def refusal(caplog: pytest.LogCaptureFixture) -> str:
    [line] = [r.getMessage() for r in caplog.records
              if r.name == "gateway.uplink" and r.levelno >= logging.ERROR]
    return line


async def test_a_certificate_for_another_name_says_which_name_not_which_ca(
        tmp_path: Path, tls_mosquitto: tuple[Mosquitto, int], pki: Pki,
        caplog: pytest.LogCaptureFixture) -> None:
    _broker, port = tls_mosquitto  # its certificate is for 127.0.0.1, from a CA we trust
    async with running(tmp_path, url=f"mqtts://localhost:{port}", ca_file=pki.ca) as (uplink, _):
        await until(lambda: uplink.retry_delay_s is not None, 10, "the refusal")
        assert not uplink.connected
    line = refusal(caplog)
    assert f"the TLS certificate of the cloud broker at localhost:{port} is for 127.0.0.1, " \
        "not for localhost; check the host name in cloud.url" in line
    assert "ca_file" not in line


async def test_an_expired_certificate_says_expired_with_its_dates(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    since, until_ = now - datetime.timedelta(days=30), now - datetime.timedelta(days=2)
    (tmp_path / "pki").mkdir()
    expired = make_pki(tmp_path / "pki", server_valid=(since, until_))
    broker, port = tls_broker(expired, require_certificate=False)
    with broker:
        async with running(tmp_path, url=f"mqtts://127.0.0.1:{port}",
                           ca_file=expired.ca) as (uplink, _):
            await until(lambda: uplink.retry_delay_s is not None, 10, "the refusal")
            assert uplink.retry_delay_s >= 30  # retrying soon will not fix it
    line = refusal(caplog)
    day = until_.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert f"the TLS certificate of the cloud broker at 127.0.0.1:{port} expired on {day}" in line
    assert f"valid from {since.strftime('%Y-%m-%d %H:%M:%S UTC')} to {day}" in line
    assert "this device's clock reads" in line and "ca_file" not in line


# -- passwords only from files --------------------------------------------------------------


@pytest.mark.parametrize("section", ["cloud", "device"])
def test_millwright_check_refuses_a_password_in_the_config(tmp_path: Path,
                                                           section: str) -> None:
    secret = "zq-correct-horse-zq"
    raw: dict[str, Any] = {"gateway": {"id": "g"}}
    if section == "cloud":
        raw["cloud"] = {"username": "gw", "password": secret}
        where = "cloud.password: "
    else:
        raw["devices"] = [{"name": "plant", "protocol": "mqtt", "url": "mqtt://127.0.0.1:1883",
                           "topic": "plant/+/telemetry", "username": "gw", "password": secret,
                           "points": [{"name": "x", "path": "x"}]}]
        where = "devices[0].password (device 'plant'): "
    path = configs.write(tmp_path / "gw.toml", raw)
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith(where) and "set password_file to its path" in line
               for line in lines), lines
    assert secret not in result.stdout + result.stderr


def test_a_password_in_a_url_is_refused_without_printing_it(tmp_path: Path) -> None:
    path = configs.write(tmp_path / "gw.toml", {
        "gateway": {"id": "g"}, "cloud": {"url": "mqtts://bob:zq-hunter2-zq@broker:8883"}})
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2 and "password_file" in result.stderr
    assert "zq-hunter2-zq" not in result.stderr + result.stdout
    assert "mqtts://bob:***@broker:8883" in result.stderr


@pytest.mark.parametrize("url", [
    "mqtts://bob:zq-hunter2-zq@broker:8883",
    "mqtt://bob:zq-hunter2-zq@broker:notaport",  # refused for its port in the past
    "mqtt://bob:zq-hun/ter2-zq@broker",  # a '/' in the password ends urlsplit's netloc
    "mqtt://bob:zq-hun@ter2-zq@broker",
    "http://bob:zq-hunter2-zq@broker",  # not even MQTT
    "bob:zq-hunter2-zq@broker",
], ids=["plain", "bad-port", "slash", "at", "http", "no-scheme"])
@pytest.mark.parametrize("section", ["cloud", "device"])
def test_no_refused_url_echoes_its_password(url: str, section: str) -> None:
    raw: dict[str, Any] = {"gateway": {"id": "g"}}
    if section == "cloud":
        raw["cloud"] = {"url": url}
    else:
        raw["devices"] = [{"name": "plant", "protocol": "mqtt", "url": url, "topic": "t",
                           "points": [{"name": "x", "path": "x"}]}]
    with pytest.raises(ConfigError) as caught:
        validate(raw)
    text = "\n".join(caught.value.problems)
    assert "url" in text and "hunter2" not in text and "***@" in text, text


def test_an_opc_ua_endpoint_echoed_in_an_error_has_its_password_masked() -> None:
    raw = {"gateway": {"id": "g"}, "devices": [{
        "name": "mill", "protocol": "opcua", "endpoint": "opc.tcp://bob:zq-hunter2-zq@:4840/",
        "points": [{"name": "x", "node_id": "i=1"}]}]}
    with pytest.raises(ConfigError) as caught:
        validate(raw)
    [line] = caught.value.problems
    assert line.startswith("devices[0].endpoint (device 'mill'): ") and "hunter2" not in line
    assert "(got 'opc.tcp://bob:***@:4840/')" in line


@pytest.mark.parametrize(("mode", "warned"), [(0o600, False), (0o640, True), (0o604, True),
                                              (0o400, False)])
def test_a_secret_file_readable_by_others_draws_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int, warned: bool) -> None:
    secret = tmp_path / "cloud.password"
    secret.write_text("zq-secret-zq\nsecond line ignored\n")
    secret.chmod(mode)
    assert secrets.read_secret(secret, "cloud.password_file") == "zq-secret-zq"
    # A reconnect reads it again.
    assert secrets.read_secret(secret, "cloud.password_file") == "zq-secret-zq"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(warnings) is warned
    if warned:  # once per file, not on every reconnect
        assert warnings == [f"secret file {secret} (cloud.password_file) is readable by "
                            f"group/others; run: chmod 600 {secret}"]
    # Once read, the secret is masked in anything logged afterwards.
    assert logs.redact("login with zq-secret-zq failed") == "login with *** failed"


# -- names in topics ---------------------------------------------------------------------------

HOSTILE_NAMES = ["a/b", "+", "#", "$SYS", "%2F", "../escape", "x/+/#", "Presse S\u00fcd", " ",
                 "status", "a%", "/", "//"]


async def test_hostile_device_names_cannot_forge_a_topic_or_leave_the_prefix(
        tmp_path: Path, mosquitto: Mosquitto, cloud: CloudListener) -> None:
    devices = [{"name": name, "protocol": "counter", "rate_hz": 50, "batch": 5,
                "point": f"{name}/p+#"} for name in HOSTILE_NAMES]
    raw = configs.base(tmp_path, mosquitto.url, devices)
    # A subscriber to exactly one level below the prefix must see every device's telemetry.
    with CloudListener(mosquitto.url, f"{PREFIX}/telemetry/+") as one_level:
        async with Gateway(configs.validate(raw)):
            await one_level.until(
                lambda c: {e["data"]["device"] for e in c.of_type("telemetry")}
                >= set(HOSTILE_NAMES), what="telemetry from every hostile name")
    assert cloud.malformed <= 2, "only the birth/will status messages are not CloudEvents"
    for topic in cloud.topics:
        if topic == f"{PREFIX}/status":
            continue
        assert topic.startswith(PREFIX + "/"), topic
        kind, level = topic[len(PREFIX) + 1:].split("/")  # exactly two levels below the prefix
        assert kind in ("telemetry", "device_status", "birth")
        assert not any(c in level for c in "+#/") and not level.startswith("$")
        assert unsanitise_level(level) in HOSTILE_NAMES
    for name in HOSTILE_NAMES:
        assert f"{PREFIX}/telemetry/{sanitise_level(name)}" in cloud.topics
        assert f"{PREFIX}/birth/{sanitise_level(name)}" in cloud.topics
    for event in cloud.of_type("telemetry"):
        device = event["data"]["device"]
        assert event["subject"] == device and list(event["data"]["values"]) == [f"{device}/p+#"]
    # Each device's birth (on its own topic, checked above) names that device alone.
    births = cloud.of_type("device_birth")
    assert {e["data"]["device"] for e in births} == set(HOSTILE_NAMES)
    assert all(e["subject"] == e["data"]["device"] for e in births)
    assert all([p["name"] for p in e["data"]["points"]] == [f"{e['data']['device']}/p+#"]
               for e in births)


# -- the health endpoint ----------------------------------------------------------------------


async def test_the_health_endpoint_listens_on_loopback_only_by_default(
        tmp_path: Path, mosquitto: Mosquitto) -> None:
    raw = configs.base(tmp_path, mosquitto.url, [])
    raw["health"] = {"port": 0}  # enabled, host left to its default
    config = configs.validate(raw)
    assert config.health.enabled and config.health.host == "127.0.0.1"
    async with Gateway(config) as gw:
        listening = listeners(gw.health.port)
    assert listening == {"127.0.0.1"}, "the kernel's view: who can reach the port"


def listeners(port: int) -> set[str]:
    """The local addresses of sockets listening on TCP `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if len(raw) == 4:
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:  # IPv6: four little-endian 32-bit words
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


# -- what the operator reads -------------------------------------------------------------------


@pytest.fixture
def plain_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.level
    handler = logs.setup("plain", "info", stream=stream)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)


def test_a_device_supplied_string_cannot_forge_a_plain_log_line(
        plain_log: io.StringIO) -> None:
    plan = Plan(device="plant", topic_filter="plant/+/telemetry",
                points=(PointPlan("x", parse_path("x"), None, None),))
    forged = "plant/p\n2026-01-01 00:00:00,000 ERROR gateway.runtime: FORGED\x1b[2J\r/x"
    decoded = decode(plan, forged, b'{"x": 1}', 1_800_000_000.0)
    RejectLog("plant", 30.0).record(decoded.rejections)
    written = plain_log.getvalue().splitlines()
    assert len(written) == 1, written
    assert "\\n2026-01-01 00:00:00,000 ERROR gateway.runtime: FORGED\\x1b[2J\\r" in written[0]
    assert "\x1b" not in written[0] and "\r" not in written[0]


def test_control_characters_in_extra_fields_are_escaped_but_a_traceback_keeps_its_lines(
        plain_log: io.StringIO) -> None:
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        logging.getLogger("gateway.store").exception(
            "commit of %s failed", "a\u2028b", extra={"topic": "t\nFORGED"})
    first, *traceback = plain_log.getvalue().splitlines()
    assert first.endswith("gateway.store: commit of a\\u2028b failed topic=t\\nFORGED"), first
    assert traceback[0] == "Traceback (most recent call last):"
    assert traceback[-1] == "RuntimeError: disk on fire"


def test_json_log_lines_keep_device_supplied_control_characters_inside_one_line(
        tmp_path: Path) -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.level
    handler = logs.setup("json", "info", stream=stream)
    try:
        plan = Plan(device="plant", topic_filter="plant/+/telemetry",
                    points=(PointPlan("x", parse_path("x"), None, None),))
        decoded = decode(plan, "plant/p\nFORGED\x1b[2J/x", b'{"x": 1}', 1_800_000_000.0)
        RejectLog("plant", 30.0).record(decoded.rejections)
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)
    [line] = stream.getvalue().splitlines()
    assert "FORGED" in json.loads(line)["message"] and "\x1b" not in line

"""Secret files: one reader for every password the config names, masked in every log form.

The end-to-end case runs a Gateway at debug level against a real asyncua server that
asks for a username and password, and reads everything that was logged.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from drivers.mqtt import transport
from drivers.mqtt.config import MqttDeviceConfig
from drivers.opcua import session
from drivers.opcua.config import OpcUaDeviceConfig
from gateway import logs, mqtt_tls, secrets
from gateway.runtime import Gateway
from simulators.cloud_listener import CloudListener
from simulators.mosquitto import Mosquitto
from simulators.opcua_server import OpcUaSimulator
from tests.support import configs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo logs.setup(): its handler, record factory and logger levels are process-wide."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    names = ["", "asyncua", "pymodbus", "asyncua.client.ua_client.UASocketProtocol",
             *(n for n in logging.root.manager.loggerDict if n.startswith("asyncua."))]
    saved = {name: logging.getLogger(name).level for name in names}
    factory = logging.getLogRecordFactory()
    yield
    logging.setLogRecordFactory(factory)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_millwright", False)]:
        root.removeHandler(handler)
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def new_password() -> str:
    """Unique per test (the redactor is process-wide), with what reprs escape: ä ' \" \\."""
    return f"zq-p\u00e4'ss\"w\\rd-{uuid.uuid4().hex[:8]}-zq"


def forms(secret: str) -> list[str]:
    """Every way the secret could be written into a log line."""
    return [secret, repr(secret)[1:-1], repr(secret.encode())[2:-1], json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1], "zq-p"]


def assert_no_form_of(secret: str, text: str) -> None:
    for form in forms(secret):
        assert form not in text, f"{form!r} leaked"


def password_file(path: Path, secret: str, mode: int = 0o600) -> Path:
    path.write_text(secret + "\nsecond line ignored\n", encoding="utf-8")
    path.chmod(mode)
    return path


def opcua_device(endpoint: str, node_id: str, password: Path, **extra: Any) -> dict[str, Any]:
    return {"name": "mill-2", "protocol": "opcua", "endpoint": endpoint,
            "publishing_interval_ms": 50, "username": "operator",
            "password_file": str(password), "points": [{"name": "t", "node_id": node_id}],
            **extra}


# -- the redactor ------------------------------------------------------------------------------


def test_a_read_secret_is_masked_as_text_repr_bytes_repr_and_json(tmp_path: Path) -> None:
    secret = new_password()
    assert secrets.read_secret(password_file(tmp_path / "pw", secret), "cloud.password_file") \
        == secret
    for shown in (f"login {secret} failed", f"token {[secret]!r}",
                  f"Password={secret.encode()!r}", f"Token(Password={secret.encode()!r})",
                  json.dumps({"p": secret}), json.dumps({"p": secret}, ensure_ascii=False)):
        redacted = logs.redact(shown)
        assert_no_form_of(secret, redacted)
        assert "***" in redacted


@pytest.mark.parametrize(("text", "expected"), [
    ("Password=b'hunter2', Next=1", "Password=b'***', Next=1"),
    ("Password=b'it\\'s \\xc3\\xa4', Next=1", "Password=b'***', Next=1"),
    ('password="two \\" words" rest', 'password="***" rest'),
    ("password='a' b='c'", "password='***' b='c'"),
])
def test_a_quoted_or_bytes_repr_value_after_a_secret_key_is_masked_whole(
        text: str, expected: str) -> None:
    assert logs.redact(text) == expected


def test_loggers_that_echo_requests_stay_at_info_when_debugging() -> None:
    logs.setup("plain", "debug", stream=io.StringIO())
    echoing = logging.getLogger("asyncua.client.ua_client.UASocketProtocol")
    assert not echoing.isEnabledFor(logging.DEBUG) and echoing.isEnabledFor(logging.INFO)
    assert logging.getLogger("asyncua.client.client").isEnabledFor(logging.DEBUG)
    logs.setup("plain", "info", stream=io.StringIO())  # and quiet again at info
    assert not echoing.isEnabledFor(logging.CRITICAL)


# -- one reader for every secret the config names -------------------------------------------


async def test_every_secret_the_config_names_is_read_through_read_secret(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {name: password_file(tmp_path / name, new_password())
             for name in ("cloud", "plant", "opcua")}
    raw = configs.base(tmp_path, "mqtt://127.0.0.1:1883", [
        {"name": "plant", "protocol": "mqtt", "url": "mqtt://127.0.0.1:1884",
         "topic": "plant/+/telemetry", "username": "gw", "password_file": str(files["plant"]),
         "points": [{"name": "x", "path": "x"}]},
        opcua_device("opc.tcp://127.0.0.1:4840/", "ns=2;s=t", files["opcua"]),
    ], cloud={"username": "gw", "password_file": str(files["cloud"])})
    config = configs.validate(raw)
    expected = [("cloud.password_file", files["cloud"]),
                ("devices[0].password_file (device 'plant')", files["plant"]),
                ("devices[1].password_file (device 'mill-2')", files["opcua"])]
    assert secrets.named_secrets(config) == expected

    read: list[tuple[str, Path]] = []
    real = secrets.read_secret

    def spy(path: Path, where: str) -> str:
        read.append((where, path))
        return real(path, where)

    monkeypatch.setattr(secrets, "read_secret", spy)
    cloud_client = mqtt.Client(CallbackAPIVersion.VERSION2)
    mqtt_tls.configure(cloud_client, config.cloud, use_tls=False)
    plant, mill = config.devices
    assert isinstance(plant, MqttDeviceConfig) and isinstance(mill, OpcUaDeviceConfig)
    transport.new_client(plant)
    await session.new_client(mill)
    assert read == [("cloud.password_file", files["cloud"]),
                    ("password_file of device 'plant'", files["plant"]),
                    ("password_file of device 'mill-2'", files["opcua"])]


async def test_a_readable_opc_ua_password_file_draws_one_warning_and_is_masked(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = new_password()
    path = password_file(tmp_path / "opcua.password", secret, 0o644)
    config = OpcUaDeviceConfig.model_validate(
        opcua_device("opc.tcp://127.0.0.1:4840/", "ns=2;s=t", path))
    for _ in range(2):  # every connect reads it again; the warning comes once
        await session.new_client(config)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"secret file {path} (password_file of device 'mill-2') is readable "
                        f"by group/others; run: chmod 600 {path}"]
    assert logs.redact(f"Password={secret.encode()!r}") == "Password=b'***'"


# -- end to end: a real OPC UA server, everything logged at debug --------------------------


@pytest.mark.parametrize("fmt", ["plain", "json"])
async def test_a_gateway_at_debug_never_logs_the_opc_ua_password(
        tmp_path: Path, mosquitto: Mosquitto, cloud: CloudListener,
        caplog: pytest.LogCaptureFixture, fmt: str) -> None:
    secret = new_password()
    path = password_file(tmp_path / "opcua.password", secret)
    stream = io.StringIO()
    logs.setup(fmt, "debug", stream=stream)
    caplog.set_level(logging.DEBUG)
    async with OpcUaSimulator(users={"operator": secret}) as sim:
        device = opcua_device(sim.endpoint, sim.node_id("mill-2", "Temperature"), path)
        async with Gateway(configs.validate(configs.base(tmp_path, mosquitto.url, [device]))):
            await cloud.until(lambda c: bool(c.readings("mill-2")), timeout_s=20,
                              what="a reading through the password-protected session")
    written = stream.getvalue()
    # A debug run that logged in as the user (asyncua's own lines say so).
    assert ("DEBUG" in written) and "activate_session" in written and "operator" in written
    assert_no_form_of(secret, written)
    assert_no_form_of(secret, caplog.text)


def test_millwright_check_reads_every_secret_file_and_warns_about_readable_ones(
        tmp_path: Path) -> None:
    readable = password_file(tmp_path / "cloud.password", new_password(), 0o644)
    private = password_file(tmp_path / "opcua.password", new_password())
    raw = {"gateway": {"id": "gw", "allow_root": True},  # the suite may run as root
           "cloud": {"username": "gw", "password_file": str(readable)},
           "devices": [opcua_device("opc.tcp://127.0.0.1:4840/", "ns=2;s=t", private)]}
    path = configs.write(tmp_path / "gw.toml", raw)
    result = subprocess.run([sys.executable, "-m", "tests.support.run_gateway", "check",
                             "--config", str(path)], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr  # a warning, not a config problem
    assert result.stderr.splitlines() == [
        f"secret file {readable} (cloud.password_file) is readable by group/others; "
        f"run: chmod 600 {readable}"]

"""`[health] listen`, the page's login and TLS keys, and what `millwright check` warns about."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway import cli
from gateway.config import HealthSection
from gateway.errors import ConfigError
from gateway.page_access import exposure_warnings, is_loopback
from tests.support import configs


def health(tmp_path: Path, **keys: Any) -> HealthSection:
    raw = configs.base(tmp_path, "mqtt://127.0.0.1:1883", health={"enabled": True, **keys})
    return configs.validate(raw).health


@pytest.mark.parametrize(("listen", "host", "port"), [
    ("127.0.0.1:9110", "127.0.0.1", 9110),
    ("0.0.0.0:8080", "0.0.0.0", 8080),
    ("[::1]:9110", "::1", 9110),
    ("localhost:0", "localhost", 0),
])
def test_listen_fills_host_and_port(tmp_path: Path, listen: str, host: str, port: int) -> None:
    section = health(tmp_path, listen=listen)
    assert (section.host, section.port) == (host, port)


def test_host_and_port_still_work(tmp_path: Path) -> None:
    section = health(tmp_path, host="0.0.0.0", port=9200)
    assert (section.host, section.port, section.listen) == ("0.0.0.0", 9200, None)


@pytest.mark.parametrize(("keys", "message"), [
    ({"listen": "9110"}, "must be HOST:PORT"),
    ({"listen": "host:99999"}, "must be HOST:PORT"),
    ({"listen": "0.0.0.0:9110", "port": 9111}, "listen = \"HOST:PORT\", or host and port, "
                                               "not both"),
    ({"username": "op"}, "username and password_file go together"),
    ({"cert_file": "{cert}"}, "cert_file and key_file go together"),
    ({"password_file": "/nonexistent/pw", "username": "op"}, "file not found"),
])
def test_health_problems_name_the_key(tmp_path: Path, keys: dict[str, Any],
                                      message: str) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    keys = {k: v.format(cert=cert) if isinstance(v, str) else v for k, v in keys.items()}
    with pytest.raises(ConfigError) as caught:
        health(tmp_path, **keys)
    assert any(line.startswith("health") and message in line for line in caught.value.problems), \
        caught.value.problems


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("192.168.1.10", False), ("gateway.local", False),
])
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_check_warns_when_exposed_without_login_or_tls(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = configs.base(tmp_path, "mqtt://127.0.0.1:1883",
                       health={"enabled": True, "listen": "0.0.0.0:9110"})
    path = configs.write(tmp_path / "exposed.toml", raw)
    assert cli.main(["check", "--config", str(path)]) == 0
    err = capsys.readouterr().err
    assert "health.listen (0.0.0.0:9110) is not a loopback address and no login" in err
    assert "there is no TLS" in err and "cert_file and key_file" in err

    secret = tmp_path / "pw"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    raw["health"].update(username="op", password_file=str(secret), cert_file=str(cert),
                         key_file=str(cert))
    assert exposure_warnings(configs.validate(raw).health) == []
    raw["health"] = {"enabled": True}  # loopback: nothing to warn about
    assert exposure_warnings(configs.validate(raw).health) == []

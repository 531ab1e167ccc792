"""NATS JetStream settings: `cloud.url` with NATS servers, `[cloud.nats]`, and subject tokens.

Every mistake is one line at `millwright check` naming the key and the fix; device names
become one subject token each that no name can turn into a wildcard or an extra token.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import secrets
from gateway.errors import ConfigError
from gateway.nats_config import parse_nats_urls
from gateway.subjects import (
    SubjectTemplate,
    check_subject,
    covers,
    prefix_tokens,
    sanitise_token,
    unsanitise_token,
)
from tests.support import configs

ROOT = Path(__file__).resolve().parents[1]


def nats_config(tmp_path: Path, url: Any = "nats://127.0.0.1:4222", nats: Any = None,
                **cloud: Any) -> dict[str, Any]:
    raw = configs.base(tmp_path, "mqtt://unused")
    raw["cloud"]["url"] = url
    raw["cloud"].update(cloud)
    if nats is not False:
        raw["cloud"]["nats"] = {"stream": "MILLWRIGHT", **(nats or {})}
    return raw


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        configs.validate(raw)
    return caught.value.problems


def test_a_cluster_is_comma_separated_urls(tmp_path: Path) -> None:
    cfg = configs.validate(nats_config(
        tmp_path, "nats://10.0.0.1:4222, nats://10.0.0.2 ,nats://[::1]:4333"))
    assert cfg.cloud.nats is not None and cfg.cloud.nats.stream == "MILLWRIGHT"
    assert [s.url for s in parse_nats_urls(cfg.cloud.url)] == [
        "nats://10.0.0.1:4222", "nats://10.0.0.2:4222", "nats://[::1]:4333"]
    assert cfg.cloud.nats.subject == "{prefix}.{kind}.{device}"
    assert cfg.cloud.nats.duplicate_window_s == 120 and not cfg.cloud.nats.create_stream


def write_file(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    path.write_text("secret\n")
    path.chmod(0o600)
    return str(path)


BAD = [
    # (cloud.url, [cloud.nats] or False for none, other cloud keys, expected line)
    (["nats://a:4222", "nats://b:4222"], None, {},
     'cloud.url: takes one string; for several NATS servers separate them with commas'),
    ("nats://a:4222,tls://b:4222", None, {}, "cloud.url: mixes nats:// and tls://"),
    ("nats://a:4222,nats://a:4222", None, {}, "cloud.url: names a server twice"),
    ("nats://user:pw@a:4222", None, {},
     "cloud.url: 'nats://user:***@a:4222' carries credentials"),
    ("nats://a:99999", None, {}, "has an invalid port"),
    ("nats://a:4222,", None, {}, "cloud.url: has an empty entry (a stray comma)"),
    ("nats://:4222", None, {}, "cloud.url: 'nats://:4222' has no host"),
    ("kafka://a:9092", None, {}, "is not a cloud bus URL; use mqtt://HOST:PORT"),
    ("nats://a:4222", False, {}, "cloud.nats: a NATS cloud.url needs a [cloud.nats] table"),
    ("mqtt://a:1883", None, {}, "cloud.nats: the table is used only with a NATS cloud.url"),
    ("nats://a", {"stream": "A.B"}, {}, "cloud.nats.stream: a stream name is 1-255"),
    ("nats://a", {"stream": "A B"}, {}, "cloud.nats.stream: a stream name"),
    ("nats://a", {"subject": "{prefix}.{device}"}, {}, "cloud.nats.subject: needs {kind} once"),
    ("nats://a", {"subject": "{prefix}.{kind}.x{device}"}, {},
     "cloud.nats.subject: needs {device} once, as a whole token"),
    ("nats://a", {"subject": "{prefix}.{kind}.{device}.{site}"}, {},
     "cloud.nats.subject: unknown placeholder {site}"),
    ("nats://a", {"subject": "{prefix}..{kind}.{device}"}, {},
     "cloud.nats.subject: gives a subject NATS refuses: it has an empty token"),
    ("nats://a", {"subject": "x.*.{kind}.{device}"}, {}, "contains a wildcard"),
    ("nats://a", {"subject": "{prefix"}, {}, "cloud.nats.subject: is not a valid template"),
    ("nats://a", {"duplicate_window_s": 0}, {}, "cloud.nats.duplicate_window_s:"),
    ("nats://a", {"heartbeat_s": 0.1}, {}, "cloud.nats.heartbeat_s:"),
    ("nats://a", {"user": "gw"}, {}, "cloud.nats: user and password_file go together"),
    ("nats://a", {"creds_file": "missing.creds"}, {}, "cloud.nats.creds_file: file not found"),
    ("nats://a", {"stream": "S", "colour": "red"}, {}, "cloud.nats.colour:"),
    ("nats://a", None, {"format": "sparkplug_b"},
     'cloud.format: "sparkplug_b" goes over MQTT only'),
    ("nats://a", None, {"batch_max_events": 10},
     "cloud.batch_max_events: an MQTT setting, meaningless with a NATS cloud.url"),
    ("nats://a", None, {"username": "gw"},
     "cloud.username: an MQTT setting, meaningless with a NATS cloud.url (each event is one "
     "JetStream message); use cloud.nats.user and cloud.nats.password_file"),
]


@pytest.mark.parametrize(("url", "nats", "cloud", "line"), BAD, ids=range(len(BAD)))
def test_each_mistake_is_one_line_naming_the_key_and_the_fix(
        tmp_path: Path, url: Any, nats: Any, cloud: dict[str, Any], line: str) -> None:
    if cloud.get("format") == "sparkplug_b":
        cloud["sparkplug"] = {"group_id": "g"}
    found = problems(nats_config(tmp_path, url, nats, **cloud))
    assert len(found) == 1, found
    assert line in found[0], found


def test_one_way_to_authenticate(tmp_path: Path) -> None:
    creds = write_file(tmp_path, "gw.creds")
    seed = write_file(tmp_path, "gw.nk")
    found = problems(nats_config(tmp_path, nats={"creds_file": creds, "nkey_seed_file": seed}))
    assert found == ["cloud.nats: creds_file and nkey_seed_file are two ways to authenticate; "
                     "keep one (creds_file, nkey_seed_file, or user with password_file)"]
    ok = configs.validate(nats_config(tmp_path, nats={"user": "gw", "password_file": seed}))
    assert ok.cloud.nats is not None and ok.cloud.nats.user == "gw"
    # `millwright check` reads (and guards) every secret file the config names.
    assert secrets.named_secrets(ok) == [("cloud.nats.password_file", Path(seed))]
    with_creds = configs.validate(nats_config(tmp_path, nats={"creds_file": creds}))
    assert secrets.named_secrets(with_creds) == [("cloud.nats.creds_file", Path(creds))]


def test_check_names_the_problem_and_exits_2(tmp_path: Path) -> None:
    path = configs.write(tmp_path / "gw.toml", nats_config(
        tmp_path, "nats://a:4222", {"subject": "{prefix}.{device}"}))
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "check", "--config", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "cloud.nats.subject: needs {kind} once" in done.stderr
    assert "Traceback" not in done.stderr


# -- subject tokens ---------------------------------------------------------------------

HOSTILE = ["press.1", "a*b", ">", "*", "a b", "tab\tname", "new\nline", "", "%", "$JS",
           "$SYS.x", "%2E", "caf\u00e9", "\u00a0nbsp", "a\u2028b", "\x00", ".", "..", "a>"]


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_a_device_name_is_one_token_that_is_no_wildcard(name: str) -> None:
    token = sanitise_token(name)
    assert token and "." not in token and "*" not in token and ">" not in token
    assert not any(ch.isspace() for ch in token) and not token.startswith("$")
    assert unsanitise_token(token) == name
    check_subject(f"p.telemetry.{token}")


@given(st.text(), st.text())
def test_tokens_are_reversible_and_distinct(a: str, b: str) -> None:
    assert unsanitise_token(sanitise_token(a)) == a
    assert (sanitise_token(a) == sanitise_token(b)) == (a == b)


def test_the_prefix_and_the_template() -> None:
    prefix = prefix_tokens("millwright/plant.a/line 1")
    assert prefix == "millwright.plant%2Ea.line%201"
    subjects = SubjectTemplate("{prefix}.{kind}.{device}", prefix)
    assert subjects.subject("telemetry", "press.1") == f"{prefix}.telemetry.press%2E1"
    assert subjects.pattern() == f"{prefix}.*.*"
    assert subjects.status_subject() == f"{prefix}.status"


COVERS = [("a.>", "a.b.c", True), ("a.>", "a", False), ("a.*.*", "a.*.*", True),
          ("a.*.c", "a.*.*", False), ("a.telemetry.*", "a.*.*", False),
          ("a.telemetry.*", "a.telemetry.*", True), (">", "x.y", True),
          ("a.b", "a.b", True), ("a.b", "a.b.c", False), ("a.*", "a.b", True)]


@pytest.mark.parametrize(("stream", "pattern", "expected"), COVERS)
def test_which_stream_subject_covers_a_pattern(stream: str, pattern: str,
                                               expected: bool) -> None:
    assert covers(stream, pattern) is expected


def test_only_the_link_touches_nats_py() -> None:
    """nats-py's types and errors stay in gateway/nats_link.py (the core's rule for libraries)."""
    importing = sorted(
        path.name for path in (ROOT / "gateway").glob("*.py")
        if any(line.startswith(("import nats", "from nats ", "from nats."))
               for line in path.read_text().splitlines()))
    assert importing == ["nats_link.py"]


def test_commands_are_refused_over_nats_rather_than_never_arriving(tmp_path: Path) -> None:
    raw = nats_config(tmp_path)
    raw["commands"] = {"enabled": True}
    found = problems(raw)
    assert [p for p in found if p.startswith("commands.enabled:")] == [
        "commands.enabled: commands arrive on an MQTT cloud broker (CloudEvents or Sparkplug "
        "DCMD); with a NATS cloud.url they are not supported, so none would ever arrive; set "
        "commands.enabled = false"], found

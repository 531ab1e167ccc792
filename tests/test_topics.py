"""MQTT topics: `check_topic` holds names and filters to the MQTT rules, and `millwright check`
refuses every configured topic (the cloud prefix, the will/status topic, event topics, plant
subscription filters) and every gateway id or site that would break one.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway import config
from gateway.errors import ConfigError
from gateway.topics import MAX_TOPIC_BYTES, check_level, check_topic, sanitise_level
from gateway.uplink_pack import Packer
from tests.support import configs

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("counter_protocol")

VALID_NAMES = ["a", "a/b", "/", "a//b", "/a/", "$SYS/x", "Presse S\u00fcd/\u65e5\u672c",
               "a" * MAX_TOPIC_BYTES, "%2B/%23", "a b"]
INVALID_NAMES = {
    "": "is empty",
    "a+b": "contains '+', an MQTT wildcard",
    "a/+/b": "contains '+', an MQTT wildcard",
    "a/#": "contains '#', an MQTT wildcard",
    "#": "contains '#', an MQTT wildcard",
    "a\x00b": "contains a NUL character",
    "a\x1bb": "contains U+001B",
    "a\x85b": "contains U+0085",
    "a\ufffeb": "contains U+FFFE",
    "a\ud800b": "is not valid UTF-8",
    "a" * (MAX_TOPIC_BYTES + 1): "is 65536 bytes long (MQTT allows 65535)",
    "\u00e9" * 32_768: "is 65536 bytes long",  # two bytes each: bytes count, not characters
}
VALID_FILTERS = ["#", "+", "a/+/b", "a/#", "+/+", "/#", "+/#", "$SYS/#", "a//+", "plant/x"]
INVALID_FILTERS = {
    "": "is empty",
    "a#": "'#' must be the whole last level",
    "a/#/b": "'#' must be the whole last level",
    "#/a": "'#' must be the whole last level",
    "a/b+": "'+' must be a whole level",
    "++": "'+' must be a whole level",
    "a/\x00": "contains a NUL character",
    "a" * (MAX_TOPIC_BYTES + 1): "bytes long",
}


@pytest.mark.parametrize("topic", VALID_NAMES, ids=range(len(VALID_NAMES)))
def test_valid_topic_names(topic: str) -> None:
    assert check_topic(topic) == topic


@pytest.mark.parametrize(("topic", "why"), INVALID_NAMES.items(), ids=range(len(INVALID_NAMES)))
def test_invalid_topic_names(topic: str, why: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(why)):
        check_topic(topic)


@pytest.mark.parametrize("topic", VALID_FILTERS)
def test_valid_topic_filters(topic: str) -> None:
    assert check_topic(topic, filter=True) == topic


@pytest.mark.parametrize(("topic", "why"), INVALID_FILTERS.items(),
                         ids=range(len(INVALID_FILTERS)))
def test_invalid_topic_filters(topic: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        check_topic(topic, filter=True)


def test_the_message_names_the_place_and_the_fix() -> None:
    with pytest.raises(ValueError) as caught:
        check_topic("a/+/status", where="the will topic 'a/+/status'", fix="change gateway.id")
    assert str(caught.value) == ("the will topic 'a/+/status' contains '+', an MQTT wildcard "
                                 "that only subscriptions may use (a broker refuses to publish "
                                 "to it); change gateway.id")
    with pytest.raises(ValueError, match="^contains '/', which would split it into several "
                                         "topic levels; remove it$"):
        check_level("a/b")
    assert check_level("gw-1.a_b") == "gw-1.a_b"


def test_every_topic_the_uplink_builds_for_any_device_name_is_valid() -> None:
    packer = Packer(config.CloudSection(), "millwright/lab/gw")
    for name in ["a/b", "+", "#", "$SYS", "\x00", "\x1b[2J", "\ufffe", "\ud800", "", "%",
                 "x" * 128, "\u00e9" * 128]:
        assert "/" not in sanitise_level(name)
        for kind in ("telemetry", "device_birth", "device_status", "maintenance_needed",
                     "data_dropped"):
            check_topic(packer.topic(kind, name))


# -- the config --------------------------------------------------------------------------------

ID_FIX = ("use letters, digits, '-', '_' or '.' instead: the value is one level of every "
          "cloud topic (the will topic too) and of each event's source")


@pytest.mark.parametrize("key", ["id", "site"])
@pytest.mark.parametrize(("value", "why"), [
    ("gw+1", "contains '+', an MQTT wildcard"),
    ("gw#", "contains '#', an MQTT wildcard"),
    ("line/1", "contains '/', which would split it into several topic levels"),
    ("gw\u0085", "contains U+0085"),
    ("gw\ufffe", "contains U+FFFE"),
])
def test_a_gateway_id_or_site_that_breaks_a_topic_is_refused(key: str, value: str,
                                                             why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.validate({"gateway": {"id": "gw", key: value}})
    [line] = caught.value.problems
    assert line.startswith(f"gateway.{key}: {why}"), line
    assert ID_FIX in line


@pytest.mark.parametrize("key", ["id", "site"])
@pytest.mark.parametrize("value", ["", "\x00"])
def test_an_empty_or_nul_id_or_site_is_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.validate({"gateway": {"id": "gw", key: value}})
    [line] = caught.value.problems
    assert line.startswith(f"gateway.{key}: "), line


@pytest.mark.parametrize(("prefix", "why"), [
    ("millwright/+/{gateway}", "contains '+', an MQTT wildcard"),
    ("millwright/{site}/#", "contains '#', an MQTT wildcard"),
    ("a\x00/{gateway}", "contains a NUL character"),
    ("//", "needs at least one level that is not empty"),
])
def test_a_topic_prefix_that_is_no_topic_name_is_refused(prefix: str, why: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config.validate({"gateway": {"id": "gw"}, "cloud": {"topic_prefix": prefix}})
    [line] = caught.value.problems
    assert line.startswith(f"cloud.topic_prefix: {why}"), line


def test_topics_too_long_once_site_id_and_device_names_are_in_are_refused() -> None:
    prefix = "p" * (MAX_TOPIC_BYTES - 10) + "/{site}/{gateway}"
    raw: dict[str, Any] = {"gateway": {"id": "gw", "site": "s"},
                           "cloud": {"topic_prefix": prefix}}
    with pytest.raises(ConfigError) as caught:
        config.validate(raw)
    [line] = caught.value.problems
    assert line.startswith("cloud.topic_prefix: the will and status topic 'ppp"), line
    assert "bytes long (MQTT allows 65535); shorten or change topic_prefix (gateway.site 's', " \
           "gateway.id 'gw')" in line
    # Fits on its own, but not with a device's event topic after it.
    raw["cloud"]["topic_prefix"] = "p" * (MAX_TOPIC_BYTES - 40)
    raw["devices"] = [{"name": "d" * 30, "protocol": "counter"}]
    with pytest.raises(ConfigError) as caught:
        config.validate(raw)
    assert caught.value.problems == [
        f"cloud.topic_prefix: the telemetry topic of device '{'d' * 30}' 'ppp{'p' * 57}...' is "
        "65536 bytes long (MQTT allows 65535); shorten or change topic_prefix (gateway.site "
        "'s', gateway.id 'gw')"]


@pytest.mark.parametrize(("topic", "why"), [
    ("plant/#/x", "'#' must be the whole last level; e.g. \"plant/#\""),
    ("plant/x+", "'+' must be a whole level; e.g. \"plant/+/telemetry\""),
    ("plant/\x00", "contains a NUL character, which MQTT forbids; remove it"),
    ("", "is empty"),
])
def test_a_plant_subscription_filter_is_checked_by_the_same_function(topic: str,
                                                                     why: str) -> None:
    raw = {"gateway": {"id": "gw"}, "devices": [{
        "name": "plant", "protocol": "mqtt", "url": "mqtt://127.0.0.1:1883", "topic": topic,
        "points": [{"name": "x", "path": "x"}]}]}
    with pytest.raises(ConfigError) as caught:
        config.validate(raw)
    [line] = caught.value.problems
    assert line.startswith(f"devices[0].topic (device 'plant'): {why}"), line


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.support.run_gateway", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_millwright_check_refuses_a_wildcard_gateway_id_and_site(tmp_path: Path) -> None:
    path = configs.write(tmp_path / "gw.toml", {
        "gateway": {"id": "line+1", "site": "plant#2"},
        "devices": [{"name": "c", "protocol": "counter"}]})
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"gateway.id: contains '+', an MQTT wildcard that only subscriptions may use (a broker "
        f"refuses to publish to it); {ID_FIX} (got 'line+1')",
        f"gateway.site: contains '#', an MQTT wildcard that only subscriptions may use (a "
        f"broker refuses to publish to it); {ID_FIX} (got 'plant#2')",
    ]

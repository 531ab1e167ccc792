"""Config validation: every problem is one line naming its TOML path and the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway import config
from gateway.errors import ConfigError

CASES = sorted((Path(__file__).parent / "cases" / "config").glob("*.toml"))
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("counter_protocol")


def expectations(path: Path) -> list[str]:
    return [line.removeprefix("# expect: ") for line in path.read_text().splitlines()
            if line.startswith("# expect: ")]


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_bad_config_names_each_problem(case: Path):
    with pytest.raises(ConfigError) as caught:
        config.load(case)
    problems = caught.value.problems
    for expected in expectations(case):
        assert any(expected in line for line in problems), (expected, problems)
    assert all("Traceback" not in line for line in problems)


def test_minimal_config_takes_defaults(tmp_path: Path):
    path = tmp_path / "m.toml"
    path.write_text('[gateway]\nid = "line-1"\ndata_dir = "state"\n')
    cfg = config.load(path)
    assert cfg.gateway.data_dir == tmp_path / "state"  # relative to the config file
    assert cfg.cloud_prefix == "millwright/site/line-1"
    assert cfg.store.durability == "process"


def test_missing_file_is_one_line(tmp_path: Path):
    with pytest.raises(ConfigError) as caught:
        config.load(tmp_path / "absent.toml")
    assert caught.value.problems == [
        f"{tmp_path / 'absent.toml'}: file not found; pass --config with an existing file"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.support.run_gateway", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_check_exits_2_with_lines_and_no_traceback():
    result = run_cli("check", "--config", str(ROOT / "tests/cases/config/device_errors.toml"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("devices[") for line in lines)


def test_check_accepts_a_good_config(tmp_path: Path):
    path = tmp_path / "good.toml"
    path.write_text('[gateway]\nid = "line-1"\n[[devices]]\nname = "c"\nprotocol = "counter"\n')
    result = run_cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_assets_may_name_devices_that_a_topic_wildcard_names(tmp_path: Path):
    raw = {
        "gateway": {"id": "gw"},
        "devices": [{"name": "plant-floor", "protocol": "mqtt", "url": "mqtt://127.0.0.1:1884",
                     "topic": "plant/+/telemetry", "device_from_topic": True,
                     "points": [{"name": "vibration", "path": "signals.vibration"}]}],
        "assets": [{"name": "press-1", "inputs": {"vibration_mm_s": "press-1/vibration"}}],
    }
    assert config.validate(raw).assets[0].name == "press-1"
    raw["assets"][0]["inputs"] = {"vibration_mm_s": "press-1/temperature"}
    with pytest.raises(ConfigError, match="names no configured device point"):
        config.validate(raw)


def test_the_gateways_own_device_name_is_refused_with_the_fix():
    raw = {"gateway": {"id": "gw"},
           "devices": [{"name": "_gateway", "protocol": "counter"}]}
    with pytest.raises(ConfigError) as caught:
        config.validate(raw)
    assert caught.value.problems == [
        "devices[0].name (device '_gateway'): '_gateway' is reserved for the gateway's own "
        "events (their source and status topic); give the device another name"]
    raw["devices"][0]["name"] = "gateway"  # only the exact reserved name
    assert config.validate(raw).devices[0].name == "gateway"


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")],
                         ids=["inf", "-inf", "nan"])
def test_float_settings_refuse_inf_and_nan(value: float):
    with pytest.raises(ConfigError) as caught:
        config.validate({"gateway": {"id": "gw", "shutdown_timeout_s": value}})
    assert caught.value.problems == [
        f"gateway.shutdown_timeout_s: Input should be a finite number (got {value!r})"]
    raw = {"gateway": {"id": "gw"}, "devices": [{"name": "c", "protocol": "counter",
                                                   "rate_hz": value}]}
    with pytest.raises(ConfigError) as caught:
        config.validate(raw)
    assert caught.value.problems == [
        f"devices[0].rate_hz (device 'c'): Input should be a finite number (got {value!r})"]


def test_a_home_relative_path_is_still_expanded(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = config.validate({"gateway": {"id": "gw", "data_dir": "~/state"}},
                          base_dir=Path("/elsewhere"))
    assert cfg.gateway.data_dir == tmp_path / "state"

"""`millwright check`, `run` and `queue stats` as a user meets them: every problem in one pass,
the rule about root, what --help says, and an outbox that is not there."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway import cli
from tests.support import configs

ROOT = Path(__file__).resolve().parents[1]
ROOT_REFUSAL = ("refusing to run as root; run as the millwright user (systemd/install.sh "
                "creates it) or set gateway.allow_root = true")


@pytest.fixture
def as_user(monkeypatch: pytest.MonkeyPatch) -> Any:
    """`as_user(uid)`: the uid the root rule sees, whoever runs the suite."""
    return lambda uid: monkeypatch.setattr(cli, "effective_uid", lambda: uid)


def example() -> dict[str, Any]:
    return tomllib.loads((ROOT / "config" / "millwright.toml").read_text())


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    code = cli.main(["check", "--config", str(path)])
    return code, capsys.readouterr().err.splitlines()


def test_check_reports_every_problem_in_one_pass_and_a_typo_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], as_user: Any) -> None:
    as_user(1000)
    raw = example()
    raw["cloud"]["url"] = "http://broker.example:1883"        # a cloud problem
    raw["devices"][0]["prot"] = 5020                           # a typo among press-1's keys,
    raw["devices"][0]["points"][2]["type"] = "float33"         # and in one of its points
    raw["assets"][1]["inputs"]["speed_rpm"] = "mill-2/speed"   # no such point on mill-2
    code, lines = check(configs.write(tmp_path / "gw.toml", raw), capsys)
    assert code == 2
    expected = [
        "cloud.url: 'http://broker.example:1883' is not a cloud bus URL; use mqtt://",
        "devices[0].points[2] (point 'temperature_c').type (device 'press-1'): Input should be "
        "'int16'",
        "devices[0].prot (device 'press-1'): unknown key 'prot'; allowed: ",
        # press-1's five inputs are not five more problems: one line says why they wait.
        "assets[0] (asset 'press-1'): depends on device 'press-1', which is invalid (its lines "
        "above); its inputs from that device are checked once it is fixed",
        "assets[1].inputs.speed_rpm (asset 'mill-2'): 'mill-2/speed' names no configured device "
        "point",
    ]
    assert len(lines) == len(expected), "\n".join(lines)
    for line, start in zip(lines, expected, strict=True):
        assert line.startswith(start), (line, start)


def test_check_loads_the_valid_assets_models_while_the_envelope_has_a_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], as_user: Any) -> None:
    as_user(1000)
    raw = example()
    raw["store"]["durability"] = "always"
    raw["assets"][2]["model"] = "models/nowhere"  # found only by loading it, as `run` would
    code, lines = check(configs.write(tmp_path / "gw.toml", raw), capsys)
    assert code == 2
    assert [line.split(": ", 1)[0] for line in lines] == [
        "store.durability", "assets[2].model (asset 'pump-3')"], lines
    assert "no such model directory" in lines[1]


def test_check_warns_as_root_by_the_rule_run_refuses_by(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], as_user: Any) -> None:
    raw = {"gateway": {"id": "gw", "data_dir": str(tmp_path / "data")},
           "health": {"enabled": False}}
    path = configs.write(tmp_path / "gw.toml", raw)
    as_user(0)
    code, lines = check(path, capsys)
    assert code == 0  # a warning: the service may well run as another user than `check`
    assert lines == [f"warning: gateway.allow_root: you are root, and millwright run would "
                     f"say: {ROOT_REFUSAL}"]
    assert cli.main(["run", "--config", str(path)]) == 2
    assert capsys.readouterr().err == f"{path}: {ROOT_REFUSAL}\n"
    assert not (tmp_path / "data").exists()  # refused before anything started

    raw["devices"] = [{"name": "press-1", "protocol": "modbus"}]  # and with problems too
    code, lines = check(configs.write(path, raw), capsys)
    assert code == 2 and lines[0].startswith("warning: gateway.allow_root: you are root")
    assert lines[1].startswith("devices[0].points (device 'press-1'): required key")

    as_user(1000)  # the service user: nothing to say about root
    assert check(path, capsys)[1][0].startswith("devices[0].points (device 'press-1')")
    raw["gateway"]["allow_root"] = True
    del raw["devices"]
    as_user(0)
    assert check(configs.write(path, raw), capsys) == (0, [])


@pytest.mark.parametrize("command", [["run"], ["check"], ["queue", "stats"]])
def test_help_describes_config_and_the_exit_status(
        command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main([*command, "--help"])
    assert done.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "--config CONFIG the gateway's TOML config file" in shown
    assert "exit status: 0 " in shown and ", 2 " in shown


@pytest.mark.parametrize("as_json", [False, True])
def test_queue_stats_on_a_missing_outbox_says_there_is_none(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], as_json: bool) -> None:
    path = configs.write(tmp_path / "gw.toml", {"gateway": {"id": "gw", "data_dir": "nowhere"}})
    outbox = tmp_path / "nowhere" / "outbox.db"
    code = cli.main(["queue", "stats", "--config", str(path), *(["--json"] if as_json else [])])
    shown = capsys.readouterr()
    assert code == cli.EXIT_NO_OUTBOX == 1
    if as_json:
        assert json.loads(shown.out) == {"path": str(outbox), "exists": False}
    else:
        assert shown.out == ""  # no "depth 0 events": there is no queue to have a depth
        assert shown.err.startswith(f"no outbox at {outbox}: the gateway has not run with this "
                                    "config's data_dir yet")
    assert not outbox.parent.exists()  # reading stats creates nothing

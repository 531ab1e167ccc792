"""OPC UA device config: `millwright check` names bad node ids, paths and files by TOML path."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.opcua.config import OpcUaDeviceConfig
from gateway import cli, config
from gateway.errors import ConfigError

HEAD = '[gateway]\nid = "gw"\ndata_dir = "state"\n'


def device(body: str, points: str = '[[devices.points]]\nname = "t"\nnode_id = "i=2258"\n',
           name: str = "mill-2") -> str:
    return (f'\n[[devices]]\nname = "{name}"\nprotocol = "opcua"\n'
            f'endpoint = "opc.tcp://127.0.0.1:4840/"\n{body}\n{points}')


# (config body after [gateway], lines every one of which must appear among the problems)
CASES = {
    "malformed node ids": (
        device("", '[[devices.points]]\nname = "a"\nnode_id = "ns=2;x=Mill2.Speed"\n'
                   '[[devices.points]]\nname = "b"\nnode_id = "Mill2.Speed"\n'),
        ["devices[0].points[0] (point 'a').node_id (device 'mill-2'): not a valid OPC UA node "
         "id; use "
         "ns=<index>;s=<name>",
         "devices[0].points[1] (point 'b').node_id (device 'mill-2'): not a valid OPC UA node "
         "id"],
    ),
    "bad browse paths": (
        device("", '[[devices.points]]\nname = "a"\nbrowse_path = "/2:Mill2/"\n'
                   '[[devices.points]]\nname = "b"\nbrowse_path = "/2:Mill2/<bad"\n'),
        ["devices[0].points[0] (point 'a').browse_path (device 'mill-2'): browse path has an "
         "empty element",
         "devices[0].points[1] (point 'b').browse_path (device 'mill-2'): not a valid browse "
         "path; use the "
         "OPC UA relative path form"],
    ),
    "node id and browse path together, or neither": (
        device("", '[[devices.points]]\nname = "a"\nnode_id = "i=1"\nbrowse_path = "/0:Server"\n'
                   '[[devices.points]]\nname = "b"\n'),
        ["devices[0].points[0] (point 'a') (device 'mill-2'): set exactly one of node_id or "
         "browse_path",
         "devices[0].points[1] (point 'b') (device 'mill-2'): set exactly one of node_id or "
         "browse_path"],
    ),
    "missing certificate files": (
        device('security_policy = "Basic256Sha256"\ncertificate_file = "pki/absent.der"\n'
               'private_key_file = "pki/absent.pem"\ntrust_dir = "pki/nowhere"\n'),
        ["devices[0].certificate_file (device 'mill-2'): file not found: ",
         "absent.der; fix the path or create the file",
         "devices[0].private_key_file (device 'mill-2'): file not found: ",
         "devices[0].trust_dir (device 'mill-2'): directory not found: "],
    ),
    "a policy without certificates or trust": (
        device('security_policy = "Basic256Sha256"\n'),
        ["devices[0] (device 'mill-2'): security_policy \"Basic256Sha256\" needs "
         "certificate_file and private_key_file"],
    ),
    "unknown policy and mode names": (
        device('security_policy = "Basic128Rsa15"\nsecurity_mode = "Encrypt"\n'),
        ["devices[0].security_policy (device 'mill-2'): Input should be 'None', "
         "'Basic256Sha256', 'Aes128_Sha256_RsaOaep' or 'Aes256_Sha256_RsaPss'",
         "devices[0].security_mode (device 'mill-2'): Input should be 'None', 'Sign' or "
         "'SignAndEncrypt'"],
    ),
    "a bad endpoint, a username without a password file, a typo": (
        device('username = "operator"\npublishing_intervall_ms = 100\n').replace(
            "opc.tcp://127.0.0.1:4840/", "http://127.0.0.1:4840/"),
        ["devices[0].endpoint (device 'mill-2'): not an OPC UA endpoint; use "
         "opc.tcp://HOST:PORT/PATH",
         "devices[0].publishing_intervall_ms (device 'mill-2'): unknown key "
         "'publishing_intervall_ms'; allowed: "],
    ),
    "duplicate point names and a bad mode": (
        device('mode = "push"\n', '[[devices.points]]\nname = "a"\nnode_id = "i=1"\n'
                                  '[[devices.points]]\nname = "a"\nnode_id = "i=2"\n'),
        ["devices[0].mode (device 'mill-2'): Input should be 'subscribe' or 'poll'",
         "devices[0].points[1] (point 'a').name (device 'mill-2'): same name as points[0]; "
         "point names "
         "must be unique per device"],
    ),
}


@pytest.mark.parametrize("body,expected", CASES.values(), ids=list(CASES))
def test_check_names_every_problem_with_its_toml_path(tmp_path: Path, body: str,
                                                      expected: list[str]) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(HEAD + body)
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    problems = caught.value.problems
    for line in expected:
        assert any(line in problem for problem in problems), (line, problems)
    assert all("\n" not in p and "Traceback" not in p for p in problems)


def test_millwright_check_exits_2_with_one_line_per_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "effective_uid", lambda: 1000)  # not root: no warning about it
    path = tmp_path / "gw.toml"
    path.write_text(HEAD + device(
        'security_policy = "Basic256Sha256"\ncertificate_file = "gw_cert.der"\n'
        'private_key_file = "gw_key.pem"\ntrust_any_server_certificate = true\n',
        '[[devices.points]]\nname = "a"\nnode_id = "ns=2;q=1"\n'))
    assert cli.main(["check", "--config", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("devices[0].certificate_file (device 'mill-2'): file not found: "
                               f"{tmp_path / 'gw_cert.der'}")
    assert lines[1].startswith("devices[0].private_key_file (device 'mill-2'): file not found")
    assert lines[2].startswith(
        "devices[0].points[0] (point 'a').node_id (device 'mill-2'): not a valid")


def test_sample_config_passes_check(tmp_path: Path) -> None:
    sample = Path(__file__).resolve().parents[1] / "drivers" / "opcua" / "sample.toml"
    path = tmp_path / "gw.toml"
    path.write_text(HEAD + sample.read_text())
    assert cli.problems_in(path) == []
    device_config = config.load(path).devices[0]
    assert isinstance(device_config, OpcUaDeviceConfig)
    assert [p.name for p in device_config.points][:2] == ["speed_rpm", "current_a"]


def test_relative_security_files_are_found_next_to_the_config(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    (pki / "trusted").mkdir(parents=True)
    for name in ("gw_cert.der", "gw_key.pem", "key_password", "opcua_password"):
        (pki / name).write_text("x")
    path = tmp_path / "gw.toml"
    path.write_text(HEAD + device(
        'security_policy = "Aes256_Sha256_RsaPss"\nsecurity_mode = "Sign"\n'
        'certificate_file = "pki/gw_cert.der"\nprivate_key_file = "pki/gw_key.pem"\n'
        'private_key_password_file = "pki/key_password"\ntrust_dir = "pki/trusted"\n'
        'username = "operator"\npassword_file = "pki/opcua_password"\n'))
    cfg = config.load(path).devices[0]
    assert isinstance(cfg, OpcUaDeviceConfig)
    assert cfg.certificate_file == pki / "gw_cert.der"
    assert cfg.private_key_password_file == pki / "key_password"
    assert cfg.trust_dir == pki / "trusted"
    assert cfg.message_security_mode == "Sign"

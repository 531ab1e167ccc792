"""systemd/install.sh and uninstall.sh in a throwaway root: install, re-run, upgrade, remove.

The installer really runs: it builds a virtual environment with pip from a copy
of this checkout (from PyPI or the local pip configuration) and runs the
installed `millwright check`. Only the user creation is skipped (--no-user),
and systemctl runs in its offline --root mode, or not at all where it is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "systemd" / "install.sh"
UNINSTALL = REPO / "systemd" / "uninstall.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def copy_source(destination: Path) -> Path:
    shutil.copytree(REPO, destination, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        ".ruff_cache"))
    return destination


def run(script: Path, root: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = ["bash", str(script), "--root", str(root), "--no-user"]
    if shutil.which("systemctl") is None:
        command.append("--no-systemctl")
    # The test's own settings only: nothing inherited may point the scripts elsewhere.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MILLWRIGHT_")}
    return subprocess.run([*command, *options], capture_output=True, text=True, env=env,
                          timeout=900)


def install(root: Path, source: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return run(source / "systemd" / "install.sh", root, "--python", sys.executable, *options)


def releases(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "opt/millwright/releases").iterdir())


def current(root: Path) -> str:
    return os.readlink(root / "opt/millwright/current").removeprefix("releases/")


@pytest.mark.slow  # two real pip installs: ~50 s here, more where wheels are downloaded
def test_install_rerun_upgrade_uninstall(tmp_path: Path) -> None:
    root = tmp_path / "root"
    source = copy_source(tmp_path / "src")
    config = root / "etc/millwright/millwright.toml"
    outbox = root / "var/lib/millwright/outbox.db"

    # 1. A fresh install.
    first = install(root, source)
    assert first.returncode == 0, first.stdout + first.stderr
    # The example, with the outbox moved to where the unit lets the service write.
    example = (source / "config/millwright.toml").read_text().splitlines()
    installed_lines = config.read_text().splitlines()
    assert len(installed_lines) == len(example)
    changed = [(a, b) for a, b in zip(example, installed_lines, strict=True) if a != b]
    assert [b for _, b in changed] == [
        'data_dir = "/var/lib/millwright"   # the outbox (the unit\'s StateDirectory)']
    assert oct(config.stat().st_mode & 0o777) == "0o640"
    assert oct((root / "var/lib/millwright").stat().st_mode & 0o777) == "0o750"
    unit = root / "etc/systemd/system/millwright.service"
    assert unit.read_bytes() == (source / "systemd/millwright.service").read_bytes()
    assert (root / "opt/millwright/current/bin/millwright").is_file()
    assert (root / "opt/millwright/current/.complete").is_file()
    assert (root / "opt/millwright/doc/operations.md").is_file()
    if shutil.which("systemctl"):
        wants = root / "etc/systemd/system/multi-user.target.wants/millwright.service"
        assert wants.is_symlink(), first.stdout + first.stderr
    installed = current(root)
    assert installed.startswith("0.") and releases(root) == [installed]

    # The operator edits the config; the gateway has written its outbox.
    config.write_text(config.read_text() + "\n# edited on site\n")
    edited = config.read_bytes()
    outbox.write_bytes(b"events not yet delivered")

    # 2. Running it again changes nothing that matters and builds nothing.
    second = install(root, source)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "keeping existing config" in second.stdout
    assert f"release {installed} is already built" in second.stdout
    assert config.read_bytes() == edited
    assert outbox.read_bytes() == b"events not yet delivered"
    assert current(root) == installed and releases(root) == [installed]

    # 3. An upgrade whose new release rejects the config: it is built but not switched to.
    (source / "UPGRADE_MARKER").write_text("new version\n")
    config.write_text(config.read_text() + "\n[no_such_table]\nx = 1\n")
    refused = install(root, source)
    assert refused.returncode == 1
    assert "no_such_table" in refused.stdout + refused.stderr  # millwright check's own line
    assert f"release {installed} stays active" in refused.stderr
    assert current(root) == installed

    # 4. The config fixed, the upgrade goes through (reusing the release built in 3);
    # config and outbox stay, the previous release is kept for a rollback.
    config.write_bytes(edited)
    upgraded_run = install(root, source)
    assert upgraded_run.returncode == 0, upgraded_run.stdout + upgraded_run.stderr
    upgraded = current(root)
    assert upgraded != installed
    assert f"release {upgraded} is already built" in upgraded_run.stdout
    assert releases(root) == sorted([installed, upgraded])
    assert config.read_bytes() == edited
    assert outbox.read_bytes() == b"events not yet delivered"

    # 5. Uninstall keeps the config and the outbox; --purge removes them.
    removed = run(UNINSTALL, root)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not (root / "opt/millwright").exists() and not unit.exists()
    assert config.exists() and outbox.exists()
    purged = run(UNINSTALL, root, "--purge")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not config.exists() and not outbox.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--python", "/nonexistent/python3"], "'/nonexistent/python3' not found"),
        (["--source", "/nonexistent"], "/nonexistent/pyproject.toml not found"),
        (["--bogus"], "unknown option '--bogus'"),
    ],
)
def test_installer_refuses_before_changing_anything(
    tmp_path: Path, options: list[str], message: str
) -> None:
    root = tmp_path / "root"
    done = run(INSTALL, root, *options)
    assert done.returncode == 1
    assert message in done.stderr
    assert not (root / "opt").exists() and not (root / "etc").exists()


def test_installer_refuses_an_unusable_python(tmp_path: Path) -> None:
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\nexit 1\n")  # fails the interpreter checks, like a 32-bit one
    fake.chmod(0o755)
    root = tmp_path / "root"
    done = run(INSTALL, root, "--python", str(fake))
    assert done.returncode == 1
    assert f"'{fake}' cannot be used" in done.stderr
    assert not (root / "opt").exists()


def test_help() -> None:
    for script in (INSTALL, UNINSTALL):
        done = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0 and "--root DIR" in done.stdout

"""scripts/setup.sh on a fresh copy of the checkout: it says what it does, and nothing else.

The set-up really runs (a new virtualenv, pip, the project's build through setuptools);
only the project's dependencies are left out (PIP_NO_DEPS), as the build is what spoke.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# What this machine's own pip configuration may make pip say (an index directory it names that
# does not exist): the machine's, not the set-up's.
LOCAL_PIP_CONFIG = re.compile(r"^WARNING: Location '.*' is ignored")


def fresh_checkout(destination: Path) -> Path:
    shutil.copytree(REPO, destination, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache"))
    return destination


@pytest.mark.slow  # a virtualenv and one pip build: ~15 s here
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_set_up_says_what_it_does_and_prints_no_build_warnings(tmp_path: Path) -> None:
    source = fresh_checkout(tmp_path / "src")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MILLWRIGHT_", "VIRTUAL_ENV", "PYTHONWARNINGS"))}
    env["PIP_NO_DEPS"] = "1"
    done = subprocess.run(["bash", "-c", 'source scripts/setup.sh && ensure_venv dev'],
                          cwd=source, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    assert (source / ".venv/bin/millwright").exists()
    others = [line for line in lines
              if not line.startswith("setup: ") and not LOCAL_PIP_CONFIG.match(line)]
    assert others == [], "\n".join(others)  # e.g. setuptools' deprecation warnings
    assert [line.split(" ", 2)[1] for line in lines if line.startswith("setup: ")] == [
        "creating", "installing", "installed:"], lines
    assert "source .venv/bin/activate" in lines[-1]

    again = subprocess.run(["bash", "-c", 'source scripts/setup.sh && ensure_venv dev'],
                           cwd=source, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout + again.stderr == ""  # nothing to do: quiet

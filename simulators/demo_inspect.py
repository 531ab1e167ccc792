"""How a running `millwright demo` is inspected: the banner naming its health URL and outbox,
and the small config file that `millwright status` and `millwright queue stats` read.

The demo's gateway listens on a health port the OS picks and keeps its outbox in a
temporary directory; both are known only once it runs, so the banner is printed then.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config import Config


def inspect_banner(cfg: Config, health_url: str, health_port: int) -> str:
    """Where this run's gateway can be inspected, and the commands that do it; writes the
    config those commands read (this run's data_dir and health port) into the data dir."""
    inspect = cfg.gateway.data_dir / "millwright.toml"
    inspect.write_text(inspection_config(cfg, health_port), encoding="utf-8")
    command = millwright_command()
    return (f"demo: the gateway's page is at {health_url}/ (health: /readyz, /metrics), outbox "
            f"{cfg.outbox_path}; inspect it from another terminal with\n"
            f"        {command} status --url {health_url}\n"
            f"        {command} queue stats --config {inspect}")


def inspection_config(cfg: Config, health_port: int) -> str:
    """The running demo's gateway as a config file `millwright status` and `millwright queue
    stats` read: its names, data_dir, outbox cap and the health port it really listens on."""
    def text(value: object) -> str:
        return json.dumps(str(value))  # a JSON string is a TOML basic string

    return "\n".join([
        "# The gateway of a running `millwright demo`, for `millwright status --config` and",
        "# `millwright queue stats --config`; its devices are config/millwright.toml's.",
        "[gateway]", f"id = {text(cfg.gateway.id)}", f"site = {text(cfg.gateway.site)}",
        f"data_dir = {text(cfg.gateway.data_dir)}",
        "[store]", f"max_bytes = {cfg.store.max_bytes}",
        "[health]", f"host = {text(cfg.health.host)}", f"port = {health_port}", ""])


def millwright_command() -> str:
    """`millwright` as another terminal in this directory runs it: the bare name when the
    shell finds this very one, else the path of the one beside this Python (.venv/bin/)."""
    beside = Path(sys.executable).parent / "millwright"
    found = shutil.which("millwright")
    if not beside.exists() or (found and Path(found).resolve() == beside.resolve()):
        return "millwright"
    with contextlib.suppress(ValueError):
        return str(beside.relative_to(Path.cwd()))
    return str(beside)

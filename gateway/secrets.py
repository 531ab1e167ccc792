"""Secret files the config names, all read by one function that masks them in logs and guards them.

Every password the config points to by file goes through `read_secret(path, where)`:
the cloud's `cloud.password_file`, an MQTT device's `password_file`, an OPC UA
device's `password_file` and `private_key_password_file`. The value (the file's first
line) is registered with the log redactor before any library sees it, so it is
`***` in every log line, whether written as text, as a `b'...'` bytes repr or as a
repr; a file that group or others can read draws one warning that names the file,
the key and the fix (`chmod 600`).

`named_secrets(config)` lists every secret file of a config with its TOML place
(`millwright check` reads them all), `[cloud.nats]`'s files among them; a NATS
credentials file is read whole by `read_creds`, its nkey seed registered the same way.
"""

from __future__ import annotations

import logging
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import logs

if TYPE_CHECKING:
    from gateway.config import Config

__all__ = ["DEVICE_SECRET_KEYS", "named_secrets", "read_creds", "read_secret"]

log = logging.getLogger(__name__)

#: The keys of a `[[devices]]` table that name a secret file, whatever the protocol.
DEVICE_SECRET_KEYS = ("password_file", "private_key_password_file")

_warned: set[Path] = set()
_warned_lock = threading.Lock()  # read_secret runs on worker threads


def read_secret(path: Path, where: str) -> str:
    """The first line of the secret file `path`, registered as a secret for the logs.

    `where` is the config key the file comes from (e.g. "cloud.password_file" or
    "password_file of device 'mill-2'"), named in the warning drawn when group or
    others can read the file; the warning comes once per file, not on every
    reconnect. Blocking (a stat and a small read): call it off the event loop.
    OSError and UnicodeDecodeError are left to the caller, which knows the fix.
    """
    lines = _read_guarded(path, where).splitlines()
    secret = lines[0] if lines else ""
    logs.register_secret(secret)  # before anyone (a library's debug line) can log it
    return secret


def read_creds(path: Path, where: str) -> str:
    """The whole of a NATS credentials file (a JWT and the nkey seed that signs with it),
    its seed registered as a secret for the logs; warns like `read_secret`. Blocking."""
    text = _read_guarded(path, where)
    for line in text.splitlines():
        if line.strip().startswith("SU"):  # a user's nkey seed
            logs.register_secret(line.strip())
    return text


def _read_guarded(path: Path, where: str) -> str:
    """The text of `path`, with the one warning when group or others can read it."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        with _warned_lock:
            first = path not in _warned
            _warned.add(path)
        if first:
            log.warning("secret file %s (%s) is readable by group/others; run: chmod 600 %s",
                        path, where, path)
    return path.read_text(encoding="utf-8")


def named_secrets(config: Config) -> list[tuple[str, Path]]:
    """(TOML place, path) of every secret file `config` names, in config order."""
    found: list[tuple[str, Path]] = []
    if config.cloud.password_file is not None:
        found.append(("cloud.password_file", config.cloud.password_file))
    for index, device in enumerate(config.devices):
        for key in DEVICE_SECRET_KEYS:
            path = getattr(device, key, None)
            if isinstance(path, Path):
                found.append((f"devices[{index}].{key} (device '{device.name}')", path))
    nats = config.cloud.nats
    if nats is not None:
        for key in ("creds_file", "nkey_seed_file", "password_file"):
            path = getattr(nats, key)
            if path is not None:
                found.append((f"cloud.nats.{key}", path))
    if config.health.password_file is not None:
        found.append(("health.password_file", config.health.password_file))
    return found

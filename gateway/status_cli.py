"""`millwright status`: ask a running gateway's health endpoint whether it is ready, and why not.

Exit status: 0 ready, 1 running but not ready, 2 unreachable (or no endpoint
configured). The endpoint is found from --url, or from the [health] table of
--config (only that table is read, so a config the running version accepts is
enough even if this copy of millwright would reject other parts of it).
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.config import HealthSection
from gateway.config_text import Problems
from gateway.errors import ConfigError

EXIT_READY = 0
EXIT_NOT_READY = 1
EXIT_UNREACHABLE = 2

DEFAULT_CONFIG = Path("/etc/millwright/millwright.toml")


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        url, cafile = (args.url, None) if args.url else _url_from_config(args.config)
    except ValueError as exc:
        print(f"millwright status: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    url = url.rstrip("/")
    try:
        code, body = _get(url + "/readyz", args.timeout_s, cafile)
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        print(f"millwright status: no gateway answering at {url}: {reason}\n"
              "  is it running? systemctl status millwright ; journalctl -u millwright -n 50",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    try:
        status = json.loads(body)
    except ValueError:
        print(f"millwright status: {url}/readyz answered {code} with something other than "
              "JSON; is that port really the gateway's health endpoint?", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(summary(url, status))
    return EXIT_READY if code == 200 and status.get("ready") else EXIT_NOT_READY


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="millwright status",
        description="Ask a running gateway's health endpoint whether it is ready, and why not.",
        epilog="exit status: 0 ready, 1 not ready, 2 unreachable")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="the health endpoint, e.g. http://127.0.0.1:9110")
    where.add_argument("--config", type=Path, default=DEFAULT_CONFIG,
                       help=f"find the endpoint in this config's [health] table "
                            f"(default {DEFAULT_CONFIG})")
    parser.add_argument("--json", action="store_true", help="print the /readyz JSON as is")
    parser.add_argument("--timeout-s", type=float, default=5.0, help="HTTP timeout (default 5)")
    return parser


def _url_from_config(path: Path) -> tuple[str, Path | None]:
    """The endpoint's URL, and the certificate to trust when it is served over TLS."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: file not found; pass --config FILE or --url URL") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: TOML syntax error: {exc}") from None
    # Relative file paths are relative to the config file, as `millwright run` reads them.
    try:
        problems = Problems({"health": raw.get("health", {})}, path.parent)
    except ConfigError as exc:
        raise ValueError(f"{path}: {exc}") from None
    if problems.lines:
        raise ValueError(f"{path}: {problems.lines[0]}")
    try:
        health = HealthSection.model_validate(problems.raw["health"])
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: health.{where}: {first['msg']}") from None
    if not health.enabled:
        raise ValueError(f"{path}: the health endpoint is off ([health] enabled = false); "
                         "enable it to use millwright status")
    if health.port == 0:
        raise ValueError(f"{path}: [health] port = 0 picks a random port; pass --url instead")
    # A server bound to every address is reached on loopback.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(health.host, health.host)
    host = f"[{host}]" if ":" in host else host
    if health.cert_file is not None:  # the endpoint's own certificate, trusted as it is
        return f"https://{host}:{health.port}", health.cert_file
    return f"http://{host}:{health.port}", None


def _get(url: str, timeout_s: float, cafile: Path | None = None) -> tuple[int, bytes]:
    """(status code, body); a 503 is an answer, not an error. With `cafile`, https is
    checked against that certificate alone (its name need not match the address)."""
    # No proxies: the endpoint is on this machine or the plant network, never behind $HTTP_PROXY.
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if cafile is not None:
        context = ssl.create_default_context(cafile=str(cafile))
        context.check_hostname = False  # pinned: only this certificate is trusted
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # a leaf as its own anchor
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()


def summary(url: str, status: dict[str, Any]) -> str:
    """A few readable lines from a /readyz body."""
    ready = bool(status.get("ready"))
    name = status.get("gateway", "gateway")
    if status.get("site"):
        name = f"{status['site']}/{name}"
    lines = [f"{name} at {url}: {'READY' if ready else 'NOT READY'}"
             + (f" (up {_duration(status['uptime_s'])})" if status.get("uptime_s") else "")]
    for problem in status.get("problems", []):
        lines.append(f"  ! {problem}")
    outbox = status.get("outbox") or {}
    writable = status.get("outbox_writable")
    parts = ["writable" if writable else "NOT WRITABLE" if writable is not None else "?"]
    if "depth" in outbox:
        parts.append(f"{outbox['depth']} events waiting")
    if outbox.get("bytes") is not None:
        parts.append(_size(outbox["bytes"]))
    if outbox.get("oldest_age_s") is not None:
        parts.append(f"oldest {_duration(outbox['oldest_age_s'])}")
    dropped = outbox.get("dropped") or {}
    if dropped:
        parts.append("dropped " + ", ".join(f"{k}={v}" for k, v in sorted(dropped.items())))
    lines.append(f"  outbox   {', '.join(parts)}")
    connected = status.get("uplink_connected")
    uplink = "connected" if connected else "DISCONNECTED" if connected is not None else "?"
    if status.get("uplink_problem"):
        uplink += f": {status['uplink_problem']}"
    lines.append(f"  uplink   {uplink}")
    devices: dict[str, bool] = status.get("devices") or {}
    online = sum(1 for up in devices.values() if up)
    lines.append(f"  devices  {online}/{len(devices)} online")
    for device, up in sorted(devices.items()):
        lines.append(f"    {device:<24} {'online' if up else 'OFFLINE'}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"

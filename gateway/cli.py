"""The `millwright` command: run, check, simulate, demo, queue stats, model, status.

Config problems print one line each and exit 2, never a traceback. The rule about running
as root is here once (`root_refusal`): `run` refuses by it, `check` warns by it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from gateway.config import Config, GatewaySection

EXIT_CONFIG = 2
EXIT_NO_OUTBOX = 1

_CONFIG_HELP = "the gateway's TOML config file (e.g. config/millwright.toml)"

# Subcommands owned by other rooms: name -> "module:function(argv) -> int".
DELEGATED = {
    "simulate": ("simulators.cli:main", "run the bundled simulators, or write a dataset"),
    "model": ("models.cli:main", "train, predict with, or describe a failure model"),
    "demo": ("simulators.demo:main", "simulators + local broker + gateway + cloud printer"),
    "status": ("gateway.status_cli:main", "read a running gateway's health endpoint"),
    "command": ("gateway.command_cli:main", "send a command to a device and wait for its result"),
    "probe": ("drivers.modbus.probe:main", "read registers once, decoded in every type and order"),
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        target, _ = DELEGATED[argv[0]]
        module_name, _, function = target.partition(":")
        entry: Callable[[list[str]], int] = getattr(importlib.import_module(module_name),
                                                    function)
        return entry(argv[1:])
    args = _parser().parse_args(argv)
    return args.handler(args)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="millwright", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run the gateway until SIGTERM/SIGINT",
        description="Run the gateway until SIGTERM or SIGINT, then flush the outbox and stop.",
        epilog="exit status: 0 stopped cleanly, 1 could not start (another gateway holds the "
               "data_dir, or the outbox cannot be opened), 2 config problems (one line each) "
               "or running as root without gateway.allow_root")
    run.add_argument("--config", required=True, type=Path, help=_CONFIG_HELP)
    run.set_defaults(handler=_run)

    check = sub.add_parser(
        "check", help="validate the config and build every driver",
        description="Validate the config, build every driver and load every model, without "
                    "connecting to anything; every problem is one line naming its TOML path.",
        epilog="exit status: 0 the config is good (warning: lines may still say what to fix: "
               "unreadable secret files, running as root), 2 problems, one line each")
    check.add_argument("--config", required=True, type=Path, help=_CONFIG_HELP)
    check.set_defaults(handler=_check)

    queue = sub.add_parser("queue", help="inspect the outbox")
    queue_sub = queue.add_subparsers(dest="queue_command", required=True, metavar="COMMAND")
    stats = queue_sub.add_parser(
        "stats", help="depth, bytes, oldest age, drops by reason",
        description="Read the outbox of the config's data_dir (read-only, while the gateway "
                    "runs or not): depth, bytes, oldest age, ingest rate, drops by reason.",
        epilog="exit status: 0 figures shown, 1 no outbox at that path (the gateway has not run "
               "with this data_dir; --json still prints {\"exists\": false, ...}), "
               "2 config problems")
    stats.add_argument("--config", required=True, type=Path, help=_CONFIG_HELP)
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(handler=_queue_stats)

    for name, (_, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _load(path: Path) -> Config:
    from gateway import config

    return config.load(path)


def _report(problems: list[str]) -> int:
    for line in problems:
        print(line, file=sys.stderr)
    return EXIT_CONFIG


def problems_in(path: Path) -> list[str]:
    """Everything `millwright check` finds wrong with a config file (empty when fine)."""
    return _checked(path)[2]


def _checked(path: Path) -> tuple[Config | None, GatewaySection | None, list[str]]:
    """The config (None when it does not load), its [gateway] section (when valid, even if
    the rest is not) and every problem: the devices and assets that are valid are built and
    loaded in the same pass as the rest is validated."""
    from gateway.config import InvalidConfig

    cfg: Config | None = None
    try:
        cfg = _load(path)
    except InvalidConfig as exc:
        gateway, devices, assets = exc.gateway, exc.devices, exc.assets
        problems = list(exc.problems)
    except ConfigError as exc:
        return None, None, exc.problems
    else:
        gateway, devices, assets, problems = cfg.gateway, dict(enumerate(cfg.devices)), \
            cfg.assets, []
    import drivers

    for index, device in devices.items():
        try:
            drivers.driver_class(device.protocol)(device)  # constructors do no I/O
        except ConfigError as exc:
            problems.extend(exc.problems)
        except (ValueError, OSError) as exc:
            problems.append(f"devices[{index}] (device '{device.name}'): {exc}")
    if assets:
        from gateway.predictor import check_assets

        problems.extend(check_assets(assets))
    return cfg, gateway, problems


def effective_uid() -> int | None:
    """The user id the process runs as (None where the OS has none): the root rule's source."""
    return os.geteuid() if hasattr(os, "geteuid") else None


def root_refusal(gateway: GatewaySection) -> str | None:
    """Why `millwright run` refuses to start as this user, or None: the one rule for root."""
    if effective_uid() != 0 or gateway.allow_root:
        return None
    return ("refusing to run as root; run as the millwright user (systemd/install.sh creates "
            "it) or set gateway.allow_root = true")


def _check(args: argparse.Namespace) -> int:
    cfg, gateway, problems = _checked(args.config)
    refusal = None if gateway is None else root_refusal(gateway)
    if refusal is not None:
        # A warning, not a problem: the service usually runs as another user than `check`
        # (systemd/install.sh checks as that user), and then root does not apply.
        print(f"warning: gateway.allow_root: you are root, and millwright run would say: "
              f"{refusal}", file=sys.stderr)
    if problems or cfg is None:
        return _report(problems)
    _read_secrets(cfg)
    from gateway.config import writable_points

    if cfg.commands.enabled and not writable_points(cfg):
        print("warning: commands.enabled: no point is writable, so every command will be "
              "rejected; add writable = true (with min/max or allowed) to the points the "
              "cloud may write, or set commands.enabled = false", file=sys.stderr)
    _exposure_warnings(cfg)
    print(f"{args.config}: OK — {len(cfg.devices)} devices, {len(cfg.assets)} assets, "
          f"outbox {cfg.outbox_path}, cloud {cfg.cloud.url}")
    return 0


def _exposure_warnings(cfg: Config) -> None:
    from gateway.page_access import exposure_warnings

    for line in exposure_warnings(cfg.health):
        print(line, file=sys.stderr)


def _read_secrets(cfg: Config) -> None:
    """Read every secret file as the gateway will: one warning each for files others can read.

    Warnings, not problems: `check` may run as another user than the service.
    """
    from gateway import secrets

    for where, path in secrets.named_secrets(cfg):
        try:
            secrets.read_secret(path, where)
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            print(f"warning: {where}: cannot read {path} ({reason}); the user the gateway "
                  "runs as must be able to read it (and only that user: chmod 600)",
                  file=sys.stderr)


def _queue_stats(args: argparse.Namespace) -> int:
    from gateway.outbox_stats import read_stats

    try:
        cfg = _load(args.config)
    except ConfigError as exc:
        return _report(exc.problems)
    stats = read_stats(cfg.outbox_path, cfg.store.max_bytes)
    if args.json:
        print(json.dumps(stats, sort_keys=True))
        return 0 if stats["exists"] else EXIT_NO_OUTBOX
    if not stats["exists"]:
        print(f"no outbox at {stats['path']}: the gateway has not run with this config's "
              "data_dir yet (or it is another machine's path)", file=sys.stderr)
        return EXIT_NO_OUTBOX
    age = stats["oldest_age_s"]
    per_reading = stats["bytes_per_reading"]
    hours = stats["hours_at_current_rate"]
    ingest = stats["ingest"]
    print(f"outbox      {stats['path']}")
    print(f"depth       {stats['depth']} events, {stats['readings']} readings")
    print(f"bytes       {stats['bytes']}"
          + (f" ({per_reading:g} per reading)" if per_reading is not None else ""))
    print(f"oldest age  {'-' if age is None else f'{age:.1f} s'}")
    print(f"ingest      {ingest['readings_per_s']:g} readings/s, {ingest['bytes_per_s']:g} B/s "
          "(as last measured by the gateway)")
    print("capacity    " + (f"max_bytes holds {hours:g} h of outage at that rate"
                            if hours is not None else "- (no ingest measured yet)"))
    dropped = stats["dropped"] or {}
    print("dropped     " + (", ".join(f"{k}={v}" for k, v in sorted(dropped.items())) or "none"))
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        cfg = _load(args.config)
    except ConfigError as exc:
        return _report(exc.problems)
    refusal = root_refusal(cfg.gateway)
    if refusal is not None:
        return _report([f"{args.config}: {refusal}"])
    _setup_logging(cfg.gateway.log_format, cfg.gateway.log_level)
    from gateway.lock import AlreadyRunning

    try:
        asyncio.run(_serve(cfg))
    except ConfigError as exc:
        return _report(exc.problems)
    except AlreadyRunning as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 1
    except StoreError as exc:
        print(f"{args.config}: {exc}", file=sys.stderr)
        return 1
    return 0


async def _serve(cfg: Config) -> None:
    from gateway import sd_notify
    from gateway.runtime import Gateway

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with Gateway(cfg) as gateway:
        sd_notify.ready(f"{len(gateway.drivers)} devices, outbox {cfg.outbox_path}")
        # Pinged from this loop: a stuck loop stops the pings and systemd restarts us.
        watchdog = asyncio.create_task(sd_notify.watchdog_loop(), name="watchdog")
        try:
            await stop.wait()
        finally:
            sd_notify.stopping("flushing the outbox")
            watchdog.cancel()


def _setup_logging(fmt: str, level: str) -> None:
    from gateway import logs

    logs.setup(fmt, level)


if __name__ == "__main__":
    raise SystemExit(main())

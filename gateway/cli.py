"""The `millwright` command: run, check, simulate, demo, queue stats, model, status.

Config problems print one line each and exit 2, never a traceback.
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
    from gateway.config import Config

EXIT_CONFIG = 2

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

    run = sub.add_parser("run", help="run the gateway until SIGTERM/SIGINT")
    run.add_argument("--config", required=True, type=Path)
    run.set_defaults(handler=_run)

    check = sub.add_parser("check", help="validate the config and build every driver")
    check.add_argument("--config", required=True, type=Path)
    check.set_defaults(handler=_check)

    queue = sub.add_parser("queue", help="inspect the outbox")
    queue_sub = queue.add_subparsers(dest="queue_command", required=True, metavar="COMMAND")
    stats = queue_sub.add_parser("stats", help="depth, bytes, oldest age, drops by reason")
    stats.add_argument("--config", required=True, type=Path)
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
    return _checked(path)[1]


def _checked(path: Path) -> tuple[Config | None, list[str]]:
    """The config (None when it does not load) and every problem found with it."""
    try:
        cfg = _load(path)
    except ConfigError as exc:
        return None, exc.problems
    import drivers

    problems = []
    for index, device in enumerate(cfg.devices):
        try:
            drivers.driver_class(device.protocol)(device)  # constructors do no I/O
        except ConfigError as exc:
            problems.extend(exc.problems)
        except (ValueError, OSError) as exc:
            problems.append(f"devices[{index}] (device '{device.name}'): {exc}")
    if cfg.assets:
        from gateway.predictor import check_assets

        problems.extend(check_assets(cfg.assets))
    return cfg, problems


def _check(args: argparse.Namespace) -> int:
    cfg, problems = _checked(args.config)
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
        return 0
    if not stats["exists"]:
        print(f"no outbox at {stats['path']}: the gateway has not run with this config's "
              "data_dir yet (or it is another machine's path)", file=sys.stderr)
        return 1
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
    _setup_logging(cfg.gateway.log_format, cfg.gateway.log_level)
    if hasattr(os, "geteuid") and os.geteuid() == 0 and not cfg.gateway.allow_root:
        return _report([
            f"{args.config}: refusing to run as root; run as the millwright user "
            "(systemd/install.sh creates it) or set gateway.allow_root = true"])
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

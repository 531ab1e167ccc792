"""`millwright demo`: the bundled plant, a local broker, the gateway and a cloud-side printer.

One command on a fresh checkout. The plant runs accelerated (60 simulated seconds per
second by default) and press-1 is set to wear out early, so within a few minutes the
predictor raises `maintenance_needed` for it before the simulator reports its failure.
The gateway's config is config/millwright.toml with the ports of this run's simulators.
`--format sparkplug` runs the same plant with the gateway as a Sparkplug B edge node
(group = the site), and the printer reads it as a Sparkplug host does (docs/sparkplug.md).
With CloudEvents, commands are on (docs/commands.md): an alarm is printed with the
`millwright command` that answers it by slowing the press, and `--answer-alarms` sends
that command itself; the summaries show each asset's failure probability falling after.
The printer also says when a machine fails and when it is repaired. Once the gateway runs,
the banner names its health URL and outbox, and the `millwright status` and `millwright
queue stats` commands that inspect them from another terminal. Ctrl-C stops everything cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from simulators.demo_inspect import inspect_banner, millwright_command
from simulators.plant import MachineSpec, Plant

EXAMPLE_CONFIG = Path(__file__).resolve().parents[1] / "config" / "millwright.toml"
SUMMARY_EVERY_S = 5.0
ANSWER_RPM = 900  # the slowed press wears at (900/1480)^2 = 37 % of its nominal rate
TRAINING_STEP_S = 60.0  # the bundled model's step_s


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="millwright demo", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=EXAMPLE_CONFIG,
                        help="gateway config whose devices the demo serves")
    parser.add_argument("--cloud-url", help="cloud broker (default: a private Mosquitto)")
    parser.add_argument("--speed", type=float, default=60.0,
                        help="simulated seconds per real second")
    parser.add_argument("--wear-out-s", type=float, default=3 * 3600.0,
                        help="simulated life of press-1, the machine that fails first")
    parser.add_argument("--duration-s", type=float, default=None, help="stop after this long")
    parser.add_argument("--format", choices=("cloudevents", "sparkplug"), default="cloudevents",
                        help="what the gateway publishes: CloudEvents JSON, or Sparkplug B")
    parser.add_argument("--answer-alarms", action="store_true",
                        help="answer a press alarm by commanding its speed setpoint down to "
                             f"{ANSWER_RPM} rpm (CloudEvents only)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))
    return 0


async def run(args: argparse.Namespace) -> None:
    from gateway import config, logs
    from gateway.runtime import Gateway
    from simulators.cloud_listener import CloudListener
    from simulators.modbus_server import ModbusSimulator
    from simulators.mosquitto import Mosquitto
    from simulators.mqtt_publisher import MqttSimulator
    from simulators.opcua_server import OpcUaSimulator

    logs.setup("plain", "warning")
    # The printer shows each alarm as the cloud receives it: the predictor's own line would
    # say it a second time.
    logging.getLogger("gateway.predictor").setLevel(logging.ERROR)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    plant = Plant([MachineSpec("press-1", 1, life_s=args.wear_out_s, onset_fraction=0.4),
                   MachineSpec("mill-2", 2), MachineSpec("pump-3", 3)], speed=args.speed)
    fmt = getattr(args, "format", "cloudevents")
    printer = Printer()
    with contextlib.ExitStack() as sync_stack, \
            tempfile.TemporaryDirectory(prefix="millwright-demo-") as data_dir:
        broker_url = args.cloud_url or sync_stack.enter_context(Mosquitto()).url
        async with contextlib.AsyncExitStack() as stack:
            modbus = await stack.enter_async_context(ModbusSimulator(plant, port=0))
            opcua = await stack.enter_async_context(OpcUaSimulator(plant, port=0))
            await stack.enter_async_context(MqttSimulator(plant, url=broker_url))
            raw = demo_config(args.config, data_dir, broker_url, modbus.port, opcua.port,
                              args.speed, fmt)
            cfg = config.validate(raw, base_dir=args.config.parent)
            if cfg.commands.enabled:
                printer.commands = Answers(broker_url, cfg.cloud_prefix,
                                           send=getattr(args, "answer_alarms", False))
            topics = (f"spBv1.0/{cfg.cloud.sparkplug.group_id}/#" if cfg.cloud.sparkplug
                      else f"{cfg.cloud_prefix}/#")
            sync_stack.enter_context(CloudListener(broker_url, topics,
                                                   on_event=printer.on_event))
            plant.on_tick(printer.on_tick)
            plant_task = asyncio.create_task(plant.run(), name="plant")
            stack.callback(plant_task.cancel)
            print(f"demo: plant at {args.speed:g}x (press-1 wears out in "
                  f"{args.wear_out_s / args.speed / 60:.1f} min), cloud broker {broker_url}, "
                  f"events under {topics[:-2]}/; Ctrl-C stops", flush=True)
            async with Gateway(cfg) as gateway:
                if gateway.health is not None:
                    print(inspect_banner(cfg, gateway.health.url, gateway.health.port),
                          flush=True)
                summary = asyncio.create_task(printer.summaries(plant))
                stack.callback(summary.cancel)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.duration_s)
            print("demo: stopped", flush=True)


def demo_config(path: Path, data_dir: str, broker_url: str, modbus_port: int,
                opcua_port: int, speed: float, fmt: str = "cloudevents") -> dict[str, Any]:
    """The example config, pointed at this run's simulators, broker and a temporary data dir
    (and, with `fmt = "sparkplug"`, speaking Sparkplug B in the group named after the site)."""
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    raw.setdefault("gateway", {})["data_dir"] = data_dir
    raw["gateway"]["allow_root"] = True
    raw.setdefault("cloud", {})["url"] = broker_url
    if fmt == "sparkplug":
        raw["cloud"]["format"] = "sparkplug_b"
        raw["cloud"].setdefault("sparkplug", {}).setdefault(
            "group_id", raw["gateway"].get("site", "site"))
    else:
        raw.setdefault("commands", {})["enabled"] = True  # the press's setpoint is writable
    health = raw.setdefault("health", {})
    health.pop("host", None)
    health.pop("port", None)
    health["listen"] = "127.0.0.1:0"  # a free port; the demo prints the page's address
    for asset in raw.get("assets", []):
        # The plant runs `speed` times faster: a training step passes in step/speed seconds.
        asset.setdefault("sample_every_s", TRAINING_STEP_S / speed)
        asset.setdefault("evaluate_every_s", 1.0)
    broker = urlsplit(broker_url)
    for device in raw.get("devices", []):
        if device.get("protocol") == "modbus" and "port" in device:
            device["port"] = modbus_port
        elif device.get("protocol") == "opcua":
            parts = urlsplit(device["endpoint"])
            device["endpoint"] = urlunsplit(parts._replace(
                netloc=f"{parts.hostname}:{opcua_port}"))
        elif device.get("protocol") == "mqtt":
            device["url"] = urlunsplit(broker)
    return raw


class Printer:
    """Prints alarms, status changes, failures and repairs at once, and telemetry as a
    periodic summary."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: dict[str, dict[str, Any]] = {}
        self._count = 0
        self._failed: dict[str, bool] = {}
        self.commands: Answers | None = None

    def on_tick(self, plant: Plant) -> None:
        """A machine's failure and its repair, as the plant (the simulators' truth) has them."""
        for name, machine in plant.machines.items():
            if machine.failed == self._failed.get(name, False):
                continue
            self._failed[name] = machine.failed
            if machine.failed:
                print(f"{_now()} FAILED   {name}: the machine broke down; the plant repairs it "
                      f"after {plant.failure_hold_s / 60:g} simulated min", flush=True)
            else:
                print(f"{_now()} REPAIRED {name}: the failure has cleared, the machine runs "
                      "again as new", flush=True)

    def on_event(self, topic: str, event: dict[str, Any]) -> None:
        kind = event.get("type", "").rsplit(".", 1)[-1]
        data = event.get("data") or {}
        if kind == "telemetry":
            values = data.get("values") or {}
            with self._lock:
                self._count += len(values)
                self._latest.setdefault(data.get("device", "?"), {}).update(values)
        elif kind == "maintenance_needed":
            print(format_alarm(data), flush=True)
            if self.commands is not None:
                self.commands.answer(str(data.get("asset")))
        elif kind == "command_result":
            print(format_result(data), flush=True)
        elif kind == "device_status":
            print(f"{_now()} status   {data.get('device')}: {data.get('status')} "
                  f"{data.get('reason') or ''}".rstrip(), flush=True)
        elif kind == "data_dropped":
            print(f"{_now()} DROPPED  {data.get('by_reason')}", flush=True)

    async def summaries(self, plant: Plant) -> None:
        while True:
            await asyncio.sleep(SUMMARY_EVERY_S)
            with self._lock:
                latest, count, self._count = dict(self._latest), self._count, 0
            for device, values in sorted(latest.items()):
                shown = ", ".join(f"{k}={_short(v)}" for k, v in sorted(values.items())[:6])
                print(f"{_now()} telemetry {device}: {shown}", flush=True)
            risks = ", ".join(f"{asset} {p:.2f}" for asset, p in probabilities().items())
            if risks:
                print(f"{_now()} failure probability: {risks}", flush=True)
            failed = [name for name, m in plant.machines.items() if m.failed]
            print(f"{_now()} cloud received {count} readings in the last "
                  f"{SUMMARY_EVERY_S:g} s" + (f"; FAILED now: {', '.join(failed)}"
                                              if failed else ""), flush=True)


class Answers:
    """The cloud operator's side of an alarm: the command that slows the press, printed
    once per asset (and sent, with `send`) the first time the asset alarms."""

    def __init__(self, broker_url: str, prefix: str, *, send: bool) -> None:
        self.broker_url, self.prefix, self.send = broker_url, prefix, send
        self._answered: set[str] = set()

    def answer(self, asset: str) -> None:
        if asset != "press-1" or asset in self._answered:  # the press has the setpoint
            return
        self._answered.add(asset)
        if not self.send:
            print(f"{_now()} answer it (another terminal): {millwright_command()} command --url "
                  f"{self.broker_url} --prefix {self.prefix} {asset} "
                  f"speed_setpoint_rpm={ANSWER_RPM}", flush=True)
            return
        print(f"{_now()} answering: speed_setpoint_rpm={ANSWER_RPM} to {asset}", flush=True)
        threading.Thread(target=self._send, args=(asset,), daemon=True).start()

    def _send(self, device: str) -> None:
        from gateway.command_cli import NoResult, send_command

        with contextlib.suppress(NoResult):  # the result event is printed as it arrives
            send_command(self.broker_url, self.prefix, device,
                         {"speed_setpoint_rpm": ANSWER_RPM}, timeout_s=30)


def probabilities() -> dict[str, float]:
    """Each asset's last failure probability, from the gateway's own metrics."""
    from prometheus_client import REGISTRY

    return {sample.labels["asset"]: sample.value
            for family in REGISTRY.collect() if family.name == "millwright_predictor_probability"
            for sample in family.samples}


def format_result(data: dict[str, Any]) -> str:
    written = ", ".join(f"{k}={v}" for k, v in (data.get("written") or {}).items())
    read_back = ", ".join(f"{k}={v}" for k, v in (data.get("read_back") or {}).items())
    return (f"{_now()} COMMAND  {data.get('device')}: {data.get('status')}"
            + (f", wrote {written}" if written else "")
            + (f" (read back {read_back})" if read_back else "")
            + (f": {data.get('reason')}" if data.get("reason") else ""))


def format_alarm(data: dict[str, Any]) -> str:
    rul = data.get("rul_s")
    drivers = data.get("drivers") or []
    top = ", ".join(
        d.get("feature", str(d)) if isinstance(d, dict) else str(d) for d in drivers[:3])
    return (f"{_now()} MAINTENANCE NEEDED {data.get('asset')}: p={data.get('probability')}"
            f" (threshold {data.get('threshold')}), failure expected within "
            f"{_hours(data.get('horizon_s'))}"
            + (f", remaining life ~{_hours(rul)}" if rul is not None else "")
            + (f"; driven by {top}" if top else ""))


def _hours(seconds: Any) -> str:
    return "?" if not isinstance(seconds, int | float) else f"{seconds / 3600:.1f} h (simulated)"


def _short(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _now() -> str:
    return time.strftime("%H:%M:%S")

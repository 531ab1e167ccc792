"""`millwright simulate`: serve the bundled plant over Modbus, OPC UA and MQTT, or write a dataset.

With `--config`, the ports and broker URL come from the gateway config's devices, so
`millwright simulate --config config/millwright.toml` serves exactly what that config
reads. `--dataset OUT.csv` writes run-to-failure histories instead (simulators.dataset).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from urllib.parse import urlsplit

from simulators.plant import DEFAULT_PLANT, MachineSpec, Plant

DEFAULT_MODBUS_PORT = 5020
DEFAULT_OPCUA_PORT = 4840
DEFAULT_PLANT_BROKER = "mqtt://127.0.0.1:1884"


def main(argv: list[str]) -> int:
    if any(arg == "--dataset" or arg.startswith("--dataset=") for arg in argv):
        from simulators import dataset

        return dataset.main(argv)
    args = _parser().parse_args(argv)
    if args.config is not None:
        problem = _ports_from_config(args)
        if problem:
            print(problem, file=sys.stderr)
            return 2
    specs = list(DEFAULT_PLANT)
    if args.life_s is not None:
        specs = [MachineSpec(s.name, s.seed, life_s=args.life_s) for s in specs]
    try:
        asyncio.run(serve(Plant(specs, speed=args.speed), args))
    except KeyboardInterrupt:
        pass
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="millwright simulate",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="take ports and broker URL from this config")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on")
    parser.add_argument("--modbus-port", type=int, default=DEFAULT_MODBUS_PORT)
    parser.add_argument("--opcua-port", type=int, default=DEFAULT_OPCUA_PORT)
    parser.add_argument("--mqtt-url", default=None,
                        help=f"plant broker to publish to (default: start one at "
                             f"{DEFAULT_PLANT_BROKER})")
    parser.add_argument("--no-mqtt", action="store_true", help="do not publish over MQTT")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="simulated seconds per real second (wear shows faster)")
    parser.add_argument("--life-s", type=float, default=None,
                        help="simulated seconds from start to failure for every machine")
    parser.add_argument("--dataset", help="write run-to-failure histories to this CSV instead "
                        "(see `millwright simulate --dataset X --help`)")
    return parser


def _ports_from_config(args: argparse.Namespace) -> str | None:
    from gateway import config
    from gateway.errors import ConfigError

    try:
        cfg = config.load(args.config)
    except ConfigError as exc:
        return "\n".join(exc.problems)
    for device in cfg.devices:
        if device.protocol == "modbus" and getattr(device, "port", None):
            args.modbus_port = device.port
        elif device.protocol == "opcua":
            args.opcua_port = urlsplit(device.endpoint).port or DEFAULT_OPCUA_PORT
        elif device.protocol == "mqtt" and args.mqtt_url is None:
            args.mqtt_url = device.url
    return None


async def serve(plant: Plant, args: argparse.Namespace) -> None:
    """Run the plant and every simulator until SIGINT/SIGTERM."""
    from simulators.modbus_server import ModbusSimulator
    from simulators.opcua_server import OpcUaSimulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with contextlib.AsyncExitStack() as stack:
        modbus = await stack.enter_async_context(
            ModbusSimulator(plant, host=args.host, port=args.modbus_port))
        print(f"modbus  tcp://{args.host}:{modbus.port}  units "
              + ", ".join(f"{name}={unit}" for name, unit in modbus.unit_ids.items()))
        opcua = await stack.enter_async_context(
            OpcUaSimulator(plant, host=args.host, port=args.opcua_port))
        print(f"opcua   {opcua.endpoint}")
        if not args.no_mqtt:
            url = args.mqtt_url or _start_plant_broker(stack)
            if url is not None:
                from simulators.mqtt_publisher import MqttSimulator

                await stack.enter_async_context(MqttSimulator(plant, url=url))
                print(f"mqtt    {url}  topics plant/<machine>/telemetry")
        print(f"plant   {', '.join(plant.machines)} at {plant.speed:g}x; Ctrl-C stops",
              flush=True)
        runner = asyncio.create_task(plant.run())
        try:
            await stop.wait()
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


def _start_plant_broker(stack: contextlib.AsyncExitStack) -> str | None:
    from simulators.mosquitto import INSTALL_HINT, Mosquitto, mosquitto_binary

    if mosquitto_binary() is None:
        print(f"mqtt    skipped: no mosquitto to act as the plant broker ({INSTALL_HINT})")
        return None
    broker = stack.enter_context(Mosquitto(port=urlsplit(DEFAULT_PLANT_BROKER).port))
    return broker.url

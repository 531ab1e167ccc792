"""`millwright command`: send a command through the cloud broker and wait for its result.

The cloud side of docs/commands.md, for operators, scripts and tests:

    millwright command --config gateway.toml press-1 speed_setpoint=40 mode=auto
    millwright command --url mqtt://broker:1883 --prefix millwright/plant-a/line-1 \\
        press-1 speed_setpoint=40

It subscribes to `{prefix}/command_result/{device}` (QoS 1) first, then publishes the
command (QoS 1) to `{prefix}/command/{device}` and waits (`--timeout`) for the result
that names its id. It prints the result's data as JSON. Exit 0 when the status is
`done`; 1 for any other status; 3 when no result came in time or the broker could not
be reached; 2 for bad arguments or config.

Values are JSON when they parse as JSON (`40`, `2.5`, `true`, `"40"`), text otherwise.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway import events
from gateway.cloudevents import CloudEventError, decode
from gateway.commands import COMMAND_TYPE, RESULT_TYPE
from gateway.config_base import TlsClient, parse_mqtt_url
from gateway.errors import ConfigError
from gateway.topics import sanitise_level

EXIT_DONE, EXIT_NOT_DONE, EXIT_USAGE, EXIT_NO_RESULT = 0, 1, 2, 3


class NoResult(Exception):
    """No result arrived in time, or the broker could not be reached."""


def command_event(command_id: str, device: str, values: dict[str, Any],
                  at: float | None = None) -> dict[str, Any]:
    """An `io.millwright.command` CloudEvent (structured JSON, as a dict)."""
    return {"specversion": "1.0", "id": command_id, "source": "/millwright-command",
            "type": COMMAND_TYPE, "subject": device,
            "time": events.rfc3339(time.time() if at is None else at),
            "datacontenttype": "application/json", "data": {"values": values}}


def send_command(url: str, prefix: str, device: str, values: dict[str, Any], *,
                 command_id: str | None = None, timeout_s: float = 30.0,
                 tls: TlsClient | None = None, at: float | None = None,
                 payload: bytes | None = None) -> dict[str, Any]:
    """Publish a command and return its result's data; NoResult after `timeout_s`.

    `payload` replaces the command's JSON (tests send malformed ones; `command_id` must
    then be the id inside it, or None to take the first result on the device's topic).
    """
    scheme, host, port = parse_mqtt_url(url)
    prefix = prefix.rstrip("/")
    level = sanitise_level(device)
    if payload is None:
        command_id = command_id or uuid.uuid4().hex
        payload = json.dumps(command_event(command_id, device, values, at)).encode()
    results: queue.Queue[dict[str, Any]] = queue.Queue()
    subscribed = queue.Queue[bool]()
    client = mqtt.Client(CallbackAPIVersion.VERSION2,
                         client_id=f"millwright-command-{uuid.uuid4().hex[:8]}")
    if scheme == "mqtts" or tls is not None:
        from gateway import mqtt_tls

        mqtt_tls.configure(client, tls or TlsClient(), use_tls=scheme == "mqtts")

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            subscribed.put(False)
        else:
            c.subscribe(f"{prefix}/command_result/{level}", qos=1)

    def on_subscribe(_c: Any, _u: Any, _m: Any, reasons: Any, _p: Any) -> None:
        subscribed.put(not any(r.is_failure for r in reasons))

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            batch = decode(message.payload)
        except CloudEventError:
            return
        for event in batch:
            data = event.get("data")
            if event.get("type") == RESULT_TYPE and isinstance(data, dict) and (
                    command_id is None or data.get("command_id") == command_id):
                results.put(data)

    client.on_connect, client.on_subscribe = on_connect, on_subscribe
    client.on_message = on_message
    deadline = time.monotonic() + timeout_s
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise NoResult(f"cannot reach the broker at {host}:{port}: {exc}") from exc
    client.loop_start()
    try:
        try:
            if not subscribed.get(timeout=max(0.1, deadline - time.monotonic())):
                raise NoResult(f"the broker at {host}:{port} refused the connection or the "
                               f"subscription to {prefix}/command_result/{level}")
        except queue.Empty:
            raise NoResult(f"no answer from the broker at {host}:{port}") from None
        client.publish(f"{prefix}/command/{level}", payload, qos=1)
        try:
            return results.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise NoResult(f"no result for command {command_id} within {timeout_s:g} s: is "
                           "the gateway running with [commands] enabled = true?") from None
    finally:
        client.disconnect()
        client.loop_stop()


def publish_command(url: str, prefix: str, device: str, values: dict[str, Any], *,
                    command_id: str, timeout_s: float = 10.0) -> None:
    """Publish a command (QoS 1, returns after the broker's PUBACK) without waiting for its
    result: for a gateway that will answer later, or never (tests kill it)."""
    _, host, port = parse_mqtt_url(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2,
                         client_id=f"millwright-command-{uuid.uuid4().hex[:8]}")
    client.connect(host, port, keepalive=30)
    client.loop_start()
    try:
        payload = json.dumps(command_event(command_id, device, values)).encode()
        info = client.publish(f"{prefix.rstrip('/')}/command/{sanitise_level(device)}",
                              payload, qos=1)
        info.wait_for_publish(timeout_s)
        if not info.is_published():
            raise NoResult(f"the broker at {host}:{port} did not acknowledge the command")
    finally:
        client.disconnect()
        client.loop_stop()


def parse_values(pairs: Sequence[str]) -> dict[str, Any]:
    """`point=value` pairs; a value is JSON when it parses as JSON, text otherwise."""
    values: dict[str, Any] = {}
    for pair in pairs:
        point, sep, text = pair.partition("=")
        if not sep or not point:
            raise ValueError(f"'{pair}' is not point=value")
        try:
            values[point] = json.loads(text)
        except json.JSONDecodeError:
            values[point] = text
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="millwright command", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="take the broker URL, TLS and topic prefix "
                        "from the gateway's config")
    parser.add_argument("--url", help="the cloud broker, mqtt://HOST:PORT or mqtts://")
    parser.add_argument("--prefix", help="the gateway's topic prefix, e.g. "
                        "millwright/plant-a/line-1")
    parser.add_argument("--id", dest="command_id", help="the command id (default: a random one)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the "
                        "result (default 30)")
    parser.add_argument("device")
    parser.add_argument("values", nargs="+", metavar="POINT=VALUE")
    args = parser.parse_args(argv)
    try:
        values = parse_values(args.values)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    url, prefix, tls = args.url, args.prefix, None
    if args.config is not None:
        from gateway import config

        try:
            cfg = config.load(args.config)
        except ConfigError as exc:
            for line in exc.problems:
                print(line, file=sys.stderr)
            return EXIT_USAGE
        url, prefix, tls = url or cfg.cloud.url, prefix or cfg.cloud_prefix, cfg.cloud
    if not url or not prefix:
        print("error: give --config, or both --url and --prefix", file=sys.stderr)
        return EXIT_USAGE
    try:
        result = send_command(url, prefix, args.device, values, command_id=args.command_id,
                              timeout_s=args.timeout, tls=tls)
    except (NoResult, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_RESULT
    print(json.dumps(result, indent=2))
    return EXIT_DONE if result.get("status") == "done" else EXIT_NOT_DONE


if __name__ == "__main__":
    raise SystemExit(main())

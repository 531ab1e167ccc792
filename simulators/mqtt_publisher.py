"""MQTT sensors for the simulated plant: JSON payloads with a timestamp and a sequence number.

`async with MqttSimulator(url=broker.url) as sim:` publishes every machine's sample
every `interval_s` on `plant/{machine}/telemetry` (QoS 1), as

    {"machine": "press-1", "seq": 17, "ts": 1767225600.123, "running": true,
     "signals": {"speed_rpm": 1479.2, "current_a": 9.61, "temperature_c": 49.8,
                 "vibration_mm_s": 2.03, "pressure_bar": 5.97}}

Fault switches arm the next published messages: `malformed`, `wrong_types`,
`missing_fields`, `oversized`; `burst` publishes many messages at once, and
`publish_numbered` publishes N numbered messages at QoS 1 and waits for the
broker's acknowledgements (for tests that count what arrives).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import Counter, deque
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config_base import parse_mqtt_url
from simulators.plant import Plant

log = logging.getLogger(__name__)

FAULTS = ("malformed", "wrong_types", "missing_fields", "oversized")
MAX_UNACKED = 1_000  # publishes waiting for PUBACK before the simulator waits too


class MqttSimulator:
    """Publishes the plant's machines to an MQTT broker; an async context manager.

    With `plant=None` it makes a `Plant()` and runs it itself; a plant passed in is
    run by the caller. `interval_s=None` publishes nothing on its own (tests drive it
    with `publish_numbered` and `burst`).

    Commands: it subscribes to `command_template` (None: no commands) for every machine
    and applies `{"values": {"speed_setpoint_rpm": <rpm>}}` to the machine named by the
    topic (its speed and wear rate, simulators/machine.py). Each command is recorded in
    `commands` as (machine, values); one it cannot apply (not JSON, another shape, an
    unknown value, a setpoint outside 0-1800) only counts in `commands_ignored`.
    """

    def __init__(self, plant: Plant | None = None, *, url: str,
                 topic_template: str = "plant/{machine}/telemetry",
                 interval_s: float | None = 1.0, qos: int = 1,
                 client_id: str | None = None, connect_timeout_s: float = 10.0,
                 username: str | None = None, password: str | None = None,
                 served: list[tuple[str, bytes]] | None = None,
                 command_template: str | None = "plant/{machine}/command") -> None:
        _, self.host, self.port = parse_mqtt_url(url)
        self.url = url
        self._own_plant = plant is None
        self.plant = plant if plant is not None else Plant()
        self.topic_template = topic_template
        self.interval_s = interval_s
        self.qos = qos
        self.connect_timeout_s = connect_timeout_s
        self.published: Counter[str] = Counter()  # by kind: "good" or a fault name
        # When given, every good message published is recorded here as (topic, payload):
        # the ground truth for tests that check what reached the cloud.
        self.served = served
        self.command_template = command_template
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.commands_ignored = 0
        self.acked = 0
        self.oversized_bytes = 1_048_576
        self._seq: Counter[str] = Counter()
        self._faults: deque[str] = deque()
        self._unacked: set[int] = set()
        self._progress = asyncio.Event()
        self._connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"millwright-sim-{uuid.uuid4().hex[:8]}",
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.max_inflight_messages_set(200)
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(0.05, 1.0)
        self._client.on_connect = self._on_connect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> MqttSimulator:
        self._loop = asyncio.get_running_loop()
        self._client.connect_async(self.host, self.port, keepalive=30)
        self._client.loop_start()
        try:
            await asyncio.wait_for(self._connected.wait(), self.connect_timeout_s)
        except TimeoutError:
            await asyncio.to_thread(self._client.loop_stop)
            raise ConnectionError(f"MQTT simulator: no broker at {self.url}") from None
        if self._own_plant:
            self._tasks.append(asyncio.create_task(self.plant.run(), name="mqtt-sim-plant"))
        if self.interval_s is not None:
            self._tasks.append(asyncio.create_task(self._publish_forever(self.interval_s),
                                                   name="mqtt-sim-publish"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        with contextlib.suppress(TimeoutError):
            await self.wait_acked(timeout_s=5.0)
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)

    # -- fault switches ----------------------------------------------------------------

    def malformed(self, count: int = 1) -> None:
        """The next `count` messages are cut-off JSON."""
        self._faults.extend(["malformed"] * count)

    def wrong_types(self, count: int = 1) -> None:
        """The next `count` messages carry signals as strings, lists and objects."""
        self._faults.extend(["wrong_types"] * count)

    def missing_fields(self, count: int = 1) -> None:
        """The next `count` messages have no "signals" and no "ts"."""
        self._faults.extend(["missing_fields"] * count)

    def oversized(self, count: int = 1, size_bytes: int = 1_048_576) -> None:
        """The next `count` messages are valid JSON padded to about `size_bytes`."""
        self.oversized_bytes = size_bytes
        self._faults.extend(["oversized"] * count)

    async def burst(self, messages: int, machine: str | None = None) -> None:
        """Publish `messages` samples per machine (or of one machine) at once; waits for acks."""
        names = [machine] if machine is not None else list(self.plant.machines)
        for _ in range(messages):
            for name in names:
                await self.publish(name)
        await self.wait_acked()

    # -- publishing --------------------------------------------------------------------------

    def topic(self, machine: str) -> str:
        return self.topic_template.format(machine=machine)

    def payload(self, machine: str, seq: int, ts: float, fault: str | None = None) -> bytes:
        """The JSON for one sample of `machine`, spoiled as `fault` asks."""
        sample = self.plant.sample(machine)
        signals: dict[str, Any] = {k: round(v, 4) for k, v in sample.signals().items()}
        body: dict[str, Any] = {"machine": machine, "seq": seq, "ts": round(ts, 6),
                                "running": not sample.failed, "signals": signals}
        if fault == "malformed":
            return json.dumps(body).encode()[: 40]
        if fault == "wrong_types":
            body["signals"] = {k: (str(v) if i % 3 == 0 else [v] if i % 3 == 1 else {"v": v})
                               for i, (k, v) in enumerate(signals.items())}
            body["running"] = "yes"
        elif fault == "missing_fields":
            del body["signals"], body["ts"]
        elif fault == "oversized":
            body["padding"] = "x" * self.oversized_bytes
        return json.dumps(body, separators=(",", ":")).encode()

    async def publish(self, machine: str, *, seq: int | None = None) -> int:
        """Publish one message of `machine` (the next fault, if armed); returns its seq."""
        while len(self._unacked) >= MAX_UNACKED:
            await self._wait_progress(30.0)
        if seq is None:
            seq = self._seq[machine]
        self._seq[machine] = max(self._seq[machine], seq + 1)
        fault = self._faults.popleft() if self._faults else None
        payload = self.payload(machine, seq, time.time(), fault)
        info = self._client.publish(self.topic(machine), payload, qos=self.qos)
        if self.served is not None and fault is None:
            self.served.append((self.topic(machine), payload))
        self.published[fault or "good"] += 1
        if self.qos > 0:
            # on_publish reaches the loop only after this coroutine yields: no race.
            self._unacked.add(info.mid)
        return seq

    async def publish_numbered(self, count: int, *, machine: str | None = None,
                               rate_per_s: float | None = None,
                               timeout_s: float = 60.0) -> range:
        """Publish `count` messages of `machine` with consecutive seq numbers, paced at
        `rate_per_s` if given; returns the seq numbers once the broker acknowledged all."""
        name = machine or next(iter(self.plant.machines))
        first = self._seq[name]
        started = time.monotonic()
        for index in range(count):
            if rate_per_s is not None:
                ahead = started + index / rate_per_s - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)  # pacing, not synchronisation
            await self.publish(name, seq=first + index)
        await self.wait_acked(timeout_s)
        return range(first, first + count)

    async def wait_acked(self, timeout_s: float = 30.0) -> None:
        """Return when the broker has acknowledged every QoS 1 message published so far."""
        deadline = time.monotonic() + timeout_s
        while self._unacked:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(self._unacked)} messages not acknowledged by "
                                   f"{self.url} within {timeout_s} s")
            await self._wait_progress(remaining)

    async def _wait_progress(self, timeout_s: float) -> None:
        self._progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._progress.wait(), min(timeout_s, 1.0))

    async def _publish_forever(self, interval_s: float) -> None:
        while True:
            for name in self.plant.machines:
                await self.publish(name)
            await asyncio.sleep(interval_s)

    # -- paho's thread: hand over to the loop only -------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if not reason.is_failure:
            if self.command_template is not None:
                client.subscribe(self.command_template.format(machine="+"), qos=1)
            self._call(self._connected.set)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: Any) -> None:
        self._call(self._command, message.topic, bytes(message.payload))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                    properties: Any) -> None:
        self._call(self._acknowledged, mid)

    def _call(self, callback: Any, *args: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(callback, *args)

    def _command(self, topic: str, payload: bytes) -> None:
        machine = next((m for m in self.plant.machines
                        if self.command_template is not None
                        and self.command_template.format(machine=m) == topic), None)
        try:
            if machine is None:
                raise ValueError("no machine of this plant has that command topic")
            values = json.loads(payload)["values"]
            rpm = values["speed_setpoint_rpm"]
            if set(values) != {"speed_setpoint_rpm"} or isinstance(rpm, bool) or \
                    not isinstance(rpm, int | float):
                raise ValueError(f"not a speed setpoint: {values!r}")
            self.plant.machines[machine].speed_setpoint_rpm = float(rpm)
        except (ValueError, TypeError, KeyError) as exc:  # JSONDecodeError is a ValueError
            self.commands_ignored += 1
            log.info("MQTT simulator: command on %s ignored: %s", topic, exc)
            return
        self.commands.append((machine, values))

    def _acknowledged(self, mid: int) -> None:
        if mid in self._unacked:
            self._unacked.discard(mid)
            self.acked += 1
        self._progress.set()

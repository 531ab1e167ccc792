"""A cloud-side subscriber that collects every CloudEvent the gateway publishes.

Used by the tests (to count what arrived, by id), the benchmarks (latency) and
`millwright demo` (to print events). It keeps a persistent session (fixed client id,
no clean start) so that messages published while it was disconnected, for example
across a broker restart, are still delivered to it.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.cloudevents import CloudEventError, decode, telemetry_readings
from gateway.config_base import parse_mqtt_url
from simulators import wait


class CloudReading(NamedTuple):
    """One value as the cloud received it, taken back out of its frame."""

    device: str
    point: str
    time: str  # RFC 3339, the value's own sample time
    value: Any
    quality: str


class CloudListener:
    """`with CloudListener(url) as cloud:` subscribes to `topic` and gathers events.

    `events` holds every event received (duplicates included), `by_id` the first
    copy of each id, `duplicates` how many extra copies arrived.
    """

    def __init__(self, url: str, topic: str = "#", *,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None,
                 client_id: str | None = None) -> None:
        _, self.host, self.port = parse_mqtt_url(url)
        self.topic = topic
        self.on_event = on_event
        self.events: list[dict[str, Any]] = []
        self.by_id: dict[str, dict[str, Any]] = {}
        self.topics: Counter[str] = Counter()
        self.receive_times: dict[str, float] = {}
        self.messages = 0
        self.malformed = 0
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"millwright-listener-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.reconnect_delay_set(0.05, 0.5)

    @property
    def duplicates(self) -> int:
        with self._lock:
            return len(self.events) - len(self.by_id)

    def ids(self) -> set[str]:
        with self._lock:
            return set(self.by_id)

    def of_type(self, suffix: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.by_id.values() if e.get("type", "").endswith(suffix)]

    def readings(self, device: str | None = None) -> list[CloudReading]:
        """Every reading in the telemetry received (the first copy of each event), in
        arrival order; only `device`'s when given."""
        found = [CloudReading(*r) for e in self.of_type("telemetry")
                 for r in telemetry_readings(e)]
        return found if device is None else [r for r in found if r.device == device]

    def values(self, device: str, point: str | None = None) -> list[Any]:
        """The values of `device` (of one `point`, when given), in arrival order."""
        return [r.value for r in self.readings(device) if point is None or r.point == point]

    def start(self, timeout_s: float = 10.0) -> None:
        self._client.connect_async(self.host, self.port, keepalive=10)
        self._client.loop_start()
        if not self._subscribed.wait(timeout_s):
            self.stop()
            raise TimeoutError(f"no subscription to {self.topic} at {self.host}:{self.port}")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> CloudListener:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_for(self, condition: Callable[[CloudListener], bool], timeout_s: float = 30.0,
                 what: str = "condition") -> None:
        """Poll `condition` until true; TimeoutError (with what arrived) after `timeout_s`."""
        wait.wait_for(lambda: condition(self), timeout_s, what, detail=self.summary)

    async def until(self, condition: Callable[[CloudListener], bool], timeout_s: float = 30.0,
                    what: str = "condition") -> None:
        """The async form of `wait_for`, for tests that run the gateway on their own loop."""
        await wait.until(lambda: condition(self), timeout_s, what, detail=self.summary)

    def summary(self) -> str:
        with self._lock:
            kinds = Counter(e.get("type", "?").rsplit(".", 1)[-1] for e in self.by_id.values())
            return (f"{len(self.by_id)} unique events, {len(self.events) - len(self.by_id)} "
                    f"duplicates, {self.malformed} malformed, by type {dict(kinds)}")

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, *args: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        try:
            batch = decode(msg.payload)  # one CloudEvent or a batch, attributes checked
        except CloudEventError:
            with self._lock:
                self.malformed += 1
            return
        with self._lock:
            self.messages += 1
            self.topics[msg.topic] += 1
            for event in batch:
                self.events.append(event)
                if event["id"] not in self.by_id:
                    self.by_id[event["id"]] = event
                    self.receive_times[event["id"]] = now
        if self.on_event is not None:
            for event in batch:
                self.on_event(msg.topic, event)

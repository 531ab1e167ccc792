"""A cloud-side subscriber that collects every CloudEvent the gateway publishes.

Used by the tests (to count what arrived, by id), the benchmarks (latency) and
`millwright demo` (to print events). It keeps a persistent session (fixed client id,
no clean start) so that messages published while it was disconnected, for example
across a broker restart, are still delivered to it.

On `spBv1.0/...` topics it reads Sparkplug B as a host does (gateway/sparkplug/decode.py's
`Reader`: aliases resolved by births, seq and birth order checked): `sparkplug` holds each
decoded message in arrival order, and `on_event` gets the CloudEvent-shaped view of it
(`sparkplug_events`), so the demo's printer shows either format.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any, NamedTuple

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.cloudevents import CloudEventError, decode, telemetry_readings
from gateway.config_base import parse_mqtt_url
from gateway.sparkplug.decode import Reader, SparkplugError
from gateway.sparkplug.maintenance import maintenance_fields
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
        self.reader = Reader()
        self.sparkplug: list[dict[str, Any]] = []  # decoded, with "topic" and "received"
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
        if msg.topic.startswith("spBv1.0/"):
            self._on_sparkplug(msg, now)
            return
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

    def _on_sparkplug(self, msg: mqtt.MQTTMessage, now: float) -> None:
        if msg.topic.startswith("spBv1.0/STATE/"):
            return  # a host's JSON state, not an edge node's payload
        with self._lock:
            try:
                decoded = self.reader.read(msg.topic, msg.payload)
            except (SparkplugError, ValueError):
                self.malformed += 1
                return
            decoded["received"] = now
            self.messages += 1
            self.topics[msg.topic] += 1
            self.sparkplug.append(decoded)
        if self.on_event is not None:
            for event in sparkplug_events(decoded):
                self.on_event(msg.topic, event)

    def spb(self, verb: str | None = None, device: str | None = None) -> list[dict[str, Any]]:
        """The Sparkplug messages received (of one verb, of one device), in arrival order."""
        with self._lock:
            return [m for m in self.sparkplug
                    if (verb is None or m["topic"].verb == verb)
                    and (device is None or m["topic"].device_id == device)]


_PREFIX = "io.millwright."


def sparkplug_events(decoded: dict[str, Any]) -> list[dict[str, Any]]:
    """A decoded Sparkplug message as the CloudEvents it stands for (type and data only):
    DDATA -> telemetry (and maintenance_needed for `Maintenance/` metrics), DBIRTH/DDEATH
    and NBIRTH/NDEATH -> device_status, an NDATA of drops -> data_dropped."""
    where = decoded["topic"]
    device = where.device_id or "_gateway"
    metrics = {m["name"]: m["value"] for m in decoded["metrics"] if m["name"] is not None}
    if where.verb in ("DBIRTH", "NBIRTH", "DDEATH", "NDEATH"):
        status = "online" if where.verb.endswith("BIRTH") else "offline"
        return [{"type": _PREFIX + "device_status",
                 "data": {"device": device, "status": status, "reason": where.verb}}]
    out = []
    values = {k: v for k, v in metrics.items() if not k.startswith("Maintenance/")}
    if where.verb == "DDATA" and values:
        out.append({"type": _PREFIX + "telemetry", "data": {"device": device, "values": values}})
    maintenance = {k.removeprefix("Maintenance/"): v for k, v in metrics.items()
                   if k.startswith("Maintenance/")}
    if maintenance and where.verb == "DDATA":
        out.append({"type": _PREFIX + "maintenance_needed",
                    "data": {"asset": device, **maintenance_fields(maintenance)}})
    if where.verb == "NDATA" and "Gateway/last_drop" in metrics:
        try:
            out.append({"type": _PREFIX + "data_dropped",
                        "data": orjson.loads(metrics["Gateway/last_drop"])})
        except (orjson.JSONDecodeError, TypeError):
            pass
    return out

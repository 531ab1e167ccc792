"""The `[[devices]]` table of an MQTT device: plant broker, topic filter, session, points.

Validated by `millwright check`: a bad topic filter, a point path that cannot
address anything, a wildcard device level that is missing or ambiguous, and
unknown keys are errors naming the TOML path and the fix.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from drivers.mqtt.codec import device_level, parse_path, validate_filter
from gateway.config_base import (
    DeviceConfig,
    MqttUrl,
    Name,
    PointReporting,
    PointWriting,
    TlsClient,
)
from gateway.topics import check_topic

PointType = Literal["number", "integer", "bool", "string"]


class MqttPoint(PointReporting, PointWriting):
    """One value in a payload, found by a dotted `path` ("" = the whole payload)."""

    name: Name
    # "a.b.0.c": keys of JSON objects, and decimal indexes into JSON arrays.
    path: str
    # None accepts any JSON scalar (number, bool, string); a type makes others a rejection.
    type: PointType | None = None
    unit: str | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        parse_path(value)
        return value


class MqttDeviceConfig(DeviceConfig, TlsClient):
    """Messages from one topic filter on a plant broker, as one `[[devices]]` table.

    With `device_from_topic = true` the filter's single `+` level names the
    device of each reading (`plant/+/telemetry` on `plant/press-1/telemetry`
    gives device "press-1"); otherwise every reading belongs to `name`.
    """

    protocol: Literal["mqtt"]
    url: MqttUrl
    topic: str
    device_from_topic: bool = False
    # Where commands to this device are published (QoS 1, JSON `{"values": {point: value}}`);
    # without it no point of the device can be writable.
    command_topic: str | None = None
    # How long a command waits for the broker's PUBACK before it counts as not delivered.
    command_timeout_s: float = Field(10.0, gt=0, le=300)
    # Fixed, so a restarted gateway resumes its session; default "millwright-<name>".
    client_id: str | None = Field(None, min_length=1, max_length=256)
    qos: Literal[0, 1] = 1
    mqtt_version: Literal["3.1.1", "5"] = "5"
    keepalive_s: int = Field(30, ge=5, le=3600)
    connect_timeout_s: float = Field(10.0, gt=0, le=300)
    # How long the broker keeps our session (and queues for us) while we are away (MQTT 5).
    session_expiry_s: int = Field(7 * 86_400, ge=0, le=0xFFFFFFFF)
    # Unacknowledged messages the broker may send us (MQTT 5); also the inbox size.
    receive_maximum: int = Field(512, ge=1, le=65_535)
    batch_max_messages: int = Field(256, ge=1, le=65_535)
    timestamp_path: str | None = None
    timestamp_unit: Literal["s", "ms", "us", "ns"] = "s"
    # Bigger messages are refused as they arrive, before they are buffered.
    max_payload_bytes: int = Field(65_536, ge=16, le=256 * 1024 * 1024)
    # The inbox's bound in payload bytes (beside receive_maximum's bound in messages):
    # past it the socket is not read until the runtime takes messages out.
    inbox_max_bytes: int = Field(8 * 1024 * 1024, ge=1024, le=1024 * 1024 * 1024)
    reject_log_interval_s: float = Field(30.0, gt=0)
    points: list[MqttPoint] = Field(min_length=1)

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        validate_filter(value)
        return value

    @field_validator("command_topic")
    @classmethod
    def _command_topic(cls, value: str | None) -> str | None:
        if value is not None:
            check_topic(value)
        return value

    @field_validator("timestamp_path")
    @classmethod
    def _timestamp_path(cls, value: str | None) -> str | None:
        if value is not None:
            if value == "":
                raise ValueError("must name a field of the payload, e.g. \"ts\"; "
                                 "leave it out to use the gateway's receive time")
            parse_path(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MqttDeviceConfig:
        names = [p.name for p in self.points]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"point names must be unique; repeated: {', '.join(duplicates)}")
        writable = [p.name for p in self.points if p.writable]
        if writable and self.command_topic is None:
            raise ValueError(f"point(s) {', '.join(repr(n) for n in writable)} are writable but "
                             "the device has no command_topic to publish commands to; set "
                             "command_topic (e.g. \"plant/press-1/command\") or remove "
                             "writable")
        if writable and self.device_from_topic:
            raise ValueError(f"point(s) {', '.join(repr(n) for n in writable)} are writable but "
                             "device_from_topic = true names many devices behind one table, "
                             "and a command needs one device's command_topic; give the "
                             "device its own table, or remove writable")
        if self.device_from_topic:
            device_level(self.topic)  # raises with the fix when there is not exactly one '+'
        if self.inbox_max_bytes < self.max_payload_bytes:
            raise ValueError(f"inbox_max_bytes ({self.inbox_max_bytes}) must be at least "
                             f"max_payload_bytes ({self.max_payload_bytes}), or no message of "
                             "the largest size allowed would fit; raise inbox_max_bytes or "
                             "lower max_payload_bytes")
        return self

    def produces(self, device: str, point: str) -> bool:
        # With the device named by the topic, any device may carry these points.
        if self.device_from_topic:
            return any(p.name == point for p in self.points)
        return super().produces(device, point)

    @property
    def effective_client_id(self) -> str:
        return self.client_id or f"millwright-{self.name}"

"""The config's sections as pydantic models, each checking only itself.

[gateway], [cloud], [store], [health], [commands] and each of [[assets]]. What one section
needs of another (the topics [gateway] and [cloud] make together, the device points an asset
reads) is checked by gateway/config.py, which validates the whole file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from gateway.config_base import ExistingFile, Name, Strict, TlsClient
from gateway.nats_config import CloudUrl, NatsSection
from gateway.sparkplug.config import SparkplugSection
from gateway.topics import check_level, check_topic, shown

# The MQTT packet size limits: below 512 bytes no event would fit; the protocol's maximum.
MIN_PACKET_BYTES = 512
MAX_PACKET_BYTES = 268_435_455


def _topic_level(value: str) -> str:
    return check_level(value, fix="use letters, digits, '-', '_' or '.' instead: the value is "
                              "one level of every cloud topic (the will topic too) and of each "
                              "event's source")


TopicLevel = Annotated[Name, AfterValidator(_topic_level)]


class GatewaySection(Strict):
    id: TopicLevel
    site: TopicLevel = "site"
    data_dir: Path = Path("/var/lib/millwright")
    log_format: Literal["plain", "json"] = "plain"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    allow_root: bool = False
    shutdown_timeout_s: float = Field(10.0, gt=0, le=300)


class CloudSection(TlsClient):
    # mqtt:// or mqtts:// (MQTT), or nats:// or tls:// (NATS JetStream, [cloud.nats];
    # several servers comma-separated): the cloud bus is chosen by the URL.
    url: CloudUrl = "mqtt://127.0.0.1:1883"
    topic_prefix: str = "millwright/{site}/{gateway}"
    client_id: str | None = None
    mqtt_version: Literal["3.1.1", "5"] = "3.1.1"
    keepalive_s: int = Field(30, ge=5, le=3600)
    batch_max_events: int = Field(100, ge=1, le=10_000)
    batch_max_bytes: int = Field(256 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_inflight: int = Field(64, ge=1, le=65_535)
    # While the broker is unreachable (or dropped us), retries come every reconnect_min_s to
    # reconnect_max_s, jittered: a returning WAN is used within seconds, and a fleet does not
    # reconnect in the same millisecond. A refusal retrying cannot fix (credentials, ACL, an
    # untrusted certificate) waits refused_retry_s (half of it to all of it) instead.
    reconnect_min_s: float = Field(0.5, gt=0)
    reconnect_max_s: float = Field(2.0, gt=0)
    refused_retry_s: float = Field(60.0, gt=0)
    # "zstd": each MQTT payload compressed, marked by the MQTT 5 user property
    # content-encoding = zstd (gateway/cloudevents.py decodes both forms).
    compression: Literal["none", "zstd"] = "none"
    # A batch short of batch_max_events may wait this long for more events to share its
    # message (fewer, fuller messages compress far better on a metered link); 0: send now.
    linger_s: float = Field(0.0, ge=0, le=3600)
    # A message the broker has not acknowledged this long means a stalled link: reconnect,
    # and the uplink is not ready until acknowledgements flow again.
    ack_timeout_s: float = Field(30.0, gt=0, le=3600)
    # The largest MQTT packet the broker takes, for brokers that cannot announce it (3.1.1);
    # an MQTT 5 broker's CONNACK Maximum Packet Size applies as well (the smaller one wins).
    max_packet_bytes: int | None = Field(None, ge=MIN_PACKET_BYTES, le=MAX_PACKET_BYTES)
    # What goes on the wire: CloudEvents JSON, or Sparkplug B (docs/sparkplug.md), whose
    # group and node ids are in [cloud.sparkplug]. The outbox is the same under both.
    format: Literal["cloudevents", "sparkplug_b"] = "cloudevents"
    sparkplug: SparkplugSection | None = None
    nats: NatsSection | None = None  # with a NATS url (docs/jetstream.md)

    @model_validator(mode="after")
    def _compression_needs_mqtt_5(self) -> CloudSection:
        if self.compression != "none" and self.mqtt_version != "5":
            raise ValueError(f"compression = \"{self.compression}\" is announced with an MQTT 5 "
                             "user property; set mqtt_version = \"5\" or compression = \"none\"")
        return self

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        try:
            formatted = value.format(site="s", gateway="g")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError("only the placeholders {site} and {gateway} are allowed") from exc
        check_topic(formatted, fix="remove it (the placeholders {site} and {gateway} are "
                                   "allowed)")
        if not formatted.strip("/"):
            raise ValueError("needs at least one level that is not empty, e.g. "
                             "\"millwright/{site}/{gateway}\"")
        return value


class StoreSection(Strict):
    max_bytes: int = Field(1 << 30, ge=1 << 16)
    ttl_s: float = Field(7 * 86_400, gt=0)
    durability: Literal["process", "power"] = "process"


class HealthSection(Strict):
    """The HTTP endpoint: probes, metrics and the page (docs/operations.md).

    `listen = "HOST:PORT"` is the same as `host` + `port` (which stay accepted), and
    fills them in. Off loopback the page needs `username` + `password_file`, and should
    have TLS (`cert_file` + `key_file`): gateway/page_access.py.
    """

    enabled: bool = True
    listen: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(9110, ge=0, le=65_535)
    username: str | None = None
    password_file: ExistingFile | None = None
    cert_file: ExistingFile | None = None
    key_file: ExistingFile | None = None

    @model_validator(mode="after")
    def _listen_and_pairs(self) -> HealthSection:
        if self.listen is not None:
            if {"host", "port"} & self.model_fields_set:
                raise ValueError("set listen = \"HOST:PORT\", or host and port, not both")
            host, port = _listen_address(self.listen)
            object.__setattr__(self, "host", host)  # frozen: filled in once, here
            object.__setattr__(self, "port", port)
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together for TLS; set both or neither")
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together for the page's login")
        return self


def _listen_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not (sep and host and port.isdigit() and int(port) <= 65_535):
        raise ValueError(f"listen {shown(value)} must be HOST:PORT, e.g. \"127.0.0.1:9110\" "
                         "or \"[::1]:9110\"")
    return host, int(port)


class CommandsSection(Strict):
    """Commands from the cloud (docs/commands.md): off unless `enabled = true`.

    A command older than `max_age_s` (by its own `time`) is refused as `expired`, and
    executed command ids are kept at least that long, so no stale or repeated command fires.
    """

    enabled: bool = False
    max_age_s: float = Field(30.0, gt=0, le=86_400)

def _device_point(value: str) -> str:
    device, sep, point = value.partition("/")
    if not (sep and device and point):
        raise ValueError(f"'{value}' must be 'DEVICE/POINT'")
    return value


DevicePoint = Annotated[str, AfterValidator(_device_point)]


class AssetConfig(Strict):
    name: Name
    model: str = "bundled"
    inputs: dict[str, DevicePoint]
    alarm_after: int = Field(3, ge=1, description="evaluations above threshold before alarming")
    cooldown_s: float = Field(3600.0, ge=0)
    evaluate_every_s: float = Field(5.0, gt=0)
    stale_after_s: float = Field(300.0, gt=0)
    # One reading per input per this many seconds enters the window; None: the model's
    # training step (step_s in model.json), so a fast poll cannot shrink the window's span.
    sample_every_s: float | None = Field(None, ge=0)


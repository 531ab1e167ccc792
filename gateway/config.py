"""TOML configuration: pydantic models for the envelope, two-step device validation, error lines.

Validation runs in two steps, as in Telegraf: first the envelope (gateway,
cloud, store, health, assets and each device's `name`/`protocol`), then each
device table against its driver's own model from the registry. Every problem
becomes one line that names its TOML path, the device, and what is allowed. All of
them come in one pass: a part of the config that is valid on its own (a section, a
device, an asset) is checked even when another part is not, and a problem caused by
another (an asset reading an invalid device) is one line, not one per input.

Config text echoed in a line is made safe to print first: control characters are
escaped (a key or name cannot start a second line or drive the terminal) and the
password in a URL's user info is masked.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

import drivers
from gateway.config_base import (
    DeviceConfig,
    ExistingFile,
    Name,
    Strict,
    TlsClient,
)
from gateway.config_text import Problems, config_error
from gateway.errors import ConfigError
from gateway.nats_config import CloudUrl, NatsSection, is_nats_url, nats_problems
from gateway.sparkplug.config import SparkplugSection, sparkplug_problems
from gateway.topics import check_level, check_topic, sanitise_level, shown

# The MQTT packet size limits: below 512 bytes no event would fit; the protocol's maximum.
MIN_PACKET_BYTES = 512
MAX_PACKET_BYTES = 268_435_455

# The `device` (and event source) of the gateway's own events and their status topic.
RESERVED_DEVICE = "_gateway"


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


class _DeviceHead(BaseModel):
    """Step one of device validation: only name and protocol, the rest waits for step two."""

    model_config = ConfigDict(extra="allow")
    name: Name
    protocol: str


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



class _Envelope(Strict):
    gateway: GatewaySection
    cloud: CloudSection = CloudSection()
    store: StoreSection = StoreSection()
    health: HealthSection = HealthSection()
    commands: CommandsSection = CommandsSection()
    devices: list[_DeviceHead] = []
    assets: list[AssetConfig] = []


class Config(Strict):
    gateway: GatewaySection
    cloud: CloudSection
    store: StoreSection
    health: HealthSection
    devices: list[DeviceConfig]
    commands: CommandsSection = CommandsSection()
    assets: list[AssetConfig]
    source_path: Path | None = None

    @property
    def outbox_path(self) -> Path:
        return self.gateway.data_dir / "outbox.db"

    @property
    def commands_path(self) -> Path:
        """The command ledger (gateway/command_ledger.py): ids executed, and their results."""
        return self.gateway.data_dir / "commands.db"

    @property
    def cloud_prefix(self) -> str:
        return self.cloud.topic_prefix.format(site=self.gateway.site, gateway=self.gateway.id)


def load(path: str | Path) -> Config:
    """Read and validate a config file; ConfigError lists every problem found."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise config_error([f"{path}: file not found; pass --config with an existing file"]) \
            from None
    except (OSError, UnicodeDecodeError) as exc:
        raise config_error([f"{path}: cannot read: {exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise config_error([f"{path}: TOML syntax error: {exc}"]) from None
    except RecursionError:
        # tomllib recurses once per level of nested arrays and inline tables.
        raise config_error([f"{path}: TOML nested too deeply (arrays or inline tables inside each "
                      "other hundreds of levels deep); a config needs only a few levels"]) \
            from None
    return validate(raw, base_dir=path.parent, source_path=path)


class InvalidConfig(ConfigError):
    """A config with problems, and the parts of it that are valid on their own: `millwright
    check` builds those devices' drivers and loads those assets' models in the same pass."""

    def __init__(self, problems: list[str], *, gateway: GatewaySection | None,
                 devices: dict[int, DeviceConfig], assets: list[AssetConfig]) -> None:
        super().__init__(problems)
        self.gateway, self.devices, self.assets = gateway, devices, assets


def validate(raw: dict[str, Any], base_dir: Path = Path("."),
             source_path: Path | None = None) -> Config:
    """Validate parsed TOML; relative file paths are taken relative to `base_dir`.

    InvalidConfig lists every problem (and carries the valid parts), or ConfigError when the
    text cannot be walked at all.
    """
    problems = Problems(raw, base_dir)
    envelope: _Envelope | None = None
    try:
        envelope = _Envelope.model_validate(problems.raw)
    except ValidationError as exc:
        problems.add_invalid(exc, _Envelope)
    parts = _parts(envelope, problems.raw)
    devices: dict[int, DeviceConfig] = {}
    for index, head in parts.heads:
        where = f"devices[{index}]"
        suffix = f" (device '{head.name}')"
        if head.protocol not in drivers.REGISTRY:
            problems.add(
                f"{where}.protocol{suffix}: unknown protocol '{head.protocol}'; "
                f"allowed: {', '.join(drivers.protocols())}"
            )
            continue
        model = drivers.driver_class(head.protocol).config_model
        table = problems.raw["devices"][index]
        try:
            devices[index] = model.model_validate(table)
        except ValidationError as exc:
            problems.add_invalid(exc, model, table, prefix=where, suffix=suffix)
    for line in _cross_check(parts, devices):
        problems.add(line)
    if problems.lines or envelope is None:
        raise InvalidConfig(problems.error().problems, gateway=parts.gateway, devices=devices,
                            assets=[asset for _, asset in parts.assets])
    return Config(
        gateway=envelope.gateway, cloud=envelope.cloud, store=envelope.store,
        health=envelope.health, devices=list(devices.values()), assets=envelope.assets,
        commands=envelope.commands, source_path=source_path,
    )


class _Parts(NamedTuple):
    """What the cross-checks look at: the sections (None when invalid), and the device heads
    and assets that are valid, each with its index in the file."""

    gateway: GatewaySection | None
    cloud: CloudSection | None
    commands: CommandsSection | None
    heads: list[tuple[int, _DeviceHead]]
    assets: list[tuple[int, AssetConfig]]


_M = TypeVar("_M", bound=BaseModel)


def _parts(envelope: _Envelope | None, raw: dict[str, Any]) -> _Parts:
    """All of a valid envelope; else each part that is valid on its own (its problems are
    already lines: what is checked here must not repeat them)."""
    if envelope is not None:
        return _Parts(envelope.gateway, envelope.cloud, envelope.commands,
                      list(enumerate(envelope.devices)), list(enumerate(envelope.assets)))

    def valid(model: type[_M], value: Any) -> _M | None:
        try:
            return model.model_validate(value)
        except ValidationError:
            return None

    def each(key: str, model: type[_M]) -> list[tuple[int, _M]]:
        items = raw.get(key, [])
        found = enumerate(items) if isinstance(items, list) else iter(())
        return [(index, item) for index, value in found
                if (item := valid(model, value)) is not None]

    return _Parts(valid(GatewaySection, raw.get("gateway")),
                  valid(CloudSection, raw.get("cloud", {})),
                  valid(CommandsSection, raw.get("commands", {})),
                  each("devices", _DeviceHead), each("assets", AssetConfig))


def writable_points(config: Config) -> list[str]:
    """Every point the config lets the cloud write, as 'DEVICE/POINT'."""
    return [f"{device.name}/{point.name}" for device in config.devices if device.enabled
            for point in getattr(device, "points", ()) if getattr(point, "writable", False)]


def _cross_check(parts: _Parts, devices: dict[int, DeviceConfig]) -> list[str]:
    problems = []
    seen: dict[str, int] = {}
    for index, head in parts.heads:
        if head.name == RESERVED_DEVICE:
            problems.append(
                f"devices[{index}].name (device '{head.name}'): '{RESERVED_DEVICE}' is reserved "
                "for the gateway's own events (their source and status topic); "
                "give the device another name"
            )
        if head.name in seen:
            problems.append(
                f"devices[{index}].name (device '{head.name}'): duplicate of "
                f"devices[{seen[head.name]}]; device names must be unique"
            )
        seen.setdefault(head.name, index)
    valid = list(devices.values())
    if parts.gateway is not None and parts.cloud is not None:
        problems.extend(_topic_problems(parts.gateway, parts.cloud, valid))
        problems.extend(_format_problems(parts.gateway, parts.cloud,
                                         [head.name for _, head in parts.heads]))
        problems.extend(nats_problems(parts.cloud, parts.cloud.topic_prefix.format(
            site=parts.gateway.site, gateway=parts.gateway.id)))
    if parts.commands is not None and parts.cloud is not None and parts.commands.enabled \
            and is_nats_url(parts.cloud.url):
        problems.append("commands.enabled: commands arrive on an MQTT cloud broker (CloudEvents "
                        "or Sparkplug DCMD); with a NATS cloud.url they are not supported, so "
                        "none would ever arrive; set commands.enabled = false")
    invalid = {head.name for index, head in parts.heads if index not in devices}
    for index, asset in parts.assets:
        # An input from an invalid device is not checked: one line says why, for them all.
        broken = sorted({source.partition("/")[0] for source in asset.inputs.values()} & invalid)
        if broken:
            problems.append(
                f"assets[{index}] (asset '{asset.name}'): depends on device "
                f"{', '.join(repr(name) for name in broken)}, which is invalid "
                "(its lines above); its inputs from that device are checked once it is fixed")
        for model_input, source in asset.inputs.items():
            device, _, point = source.partition("/")
            if device not in invalid and not any(d.produces(device, point) for d in valid):
                problems.append(
                    f"assets[{index}].inputs.{model_input} (asset '{asset.name}'): "
                    f"'{source}' names no configured device point; use 'DEVICE/POINT' "
                    "from [[devices]]"
                )
    return problems


def _format_problems(gateway: GatewaySection, cloud: CloudSection,
                     device_names: list[str]) -> list[str]:
    """What `cloud.format` needs of the rest of the config."""
    if cloud.format != "sparkplug_b":
        if cloud.sparkplug is not None:
            return ["cloud.sparkplug: the table is used only with cloud.format = "
                    "\"sparkplug_b\"; set that format or remove [cloud.sparkplug]"]
        return []
    if cloud.sparkplug is None:
        return ["cloud.sparkplug: cloud.format = \"sparkplug_b\" needs a [cloud.sparkplug] "
                "table; add it with at least group_id (e.g. group_id = \"plant-a\"), "
                "or set cloud.format = \"cloudevents\""]
    problems = []
    if cloud.compression != "none":
        problems.append("cloud.compression: applies to CloudEvents only; with cloud.format = "
                        "\"sparkplug_b\" use cloud.sparkplug.compression = \"deflate\"")
    return problems + sparkplug_problems(cloud.sparkplug, gateway.id, device_names)


# The topic level of each kind of event the uplink publishes ({prefix}/{level}/{device}).
_EVENT_LEVELS = ("telemetry", "birth", "device_status", "maintenance_needed", "data_dropped",
                 "command", "command_result")


def _topic_problems(gateway: GatewaySection, cloud: CloudSection,
                    devices: list[DeviceConfig]) -> list[str]:
    """The cloud topics this config gives (the prefix with the real site and id, the will and
    status topic, each device's event topics), each checked as MQTT requires."""
    prefix = cloud.topic_prefix.format(site=gateway.site, gateway=gateway.id)
    names = [RESERVED_DEVICE, *(device.name for device in devices)]
    topics = [("the cloud topic prefix", prefix), ("the will and status topic",
                                                    f"{prefix.rstrip('/')}/status")]
    topics += [(f"the {level} topic of device '{name}'",
                f"{prefix.rstrip('/')}/{level}/{sanitise_level(name)}")
               for name in names for level in _EVENT_LEVELS]
    for what, topic in topics:
        try:
            check_topic(topic, where=f"{what} {shown(topic)}", fix=(
                f"shorten or change topic_prefix (gateway.site '{gateway.site}', gateway.id "
                f"'{gateway.id}')"))
        except ValueError as exc:
            return [f"cloud.topic_prefix: {exc}"]  # one line: the others share its cause
    return []

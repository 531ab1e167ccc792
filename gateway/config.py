"""TOML configuration: load and validate it in two steps, every problem one line, in one pass.

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

The sections' models are in gateway/config_sections.py, re-exported here (`X as X`): the
rest of the project imports them from this module.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

import drivers
from gateway.config_base import DeviceConfig, Name, Strict
from gateway.config_sections import AssetConfig as AssetConfig
from gateway.config_sections import CloudSection as CloudSection
from gateway.config_sections import CommandsSection as CommandsSection
from gateway.config_sections import GatewaySection as GatewaySection
from gateway.config_sections import HealthSection as HealthSection
from gateway.config_sections import StoreSection as StoreSection
from gateway.config_text import Problems, config_error
from gateway.errors import ConfigError
from gateway.nats_config import is_nats_url, nats_problems
from gateway.sparkplug.config import sparkplug_problems
from gateway.topics import check_topic, sanitise_level, shown

# The `device` (and event source) of the gateway's own events and their status topic.
RESERVED_DEVICE = "_gateway"


class _DeviceHead(BaseModel):
    """Step one of device validation: only name and protocol, the rest waits for step two."""

    model_config = ConfigDict(extra="allow")
    name: Name
    protocol: str


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

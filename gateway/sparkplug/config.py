"""`[cloud.sparkplug]`: the edge node's ids, checked against Sparkplug's rules, and where assets go.

```toml
[cloud]
format = "sparkplug_b"           # default "cloudevents"
[cloud.sparkplug]
group_id = "plant-a"             # required
edge_node_id = "line-1"          # default: gateway.id
primary_host_id = "scada-1"      # optional: follow spBv1.0/STATE/scada-1 (store and forward)
compression = "deflate"          # optional, default "none": DDATA/NDATA in Tahu's convention
```
Ids may hold any UTF-8 text but `+ / #` (and NUL). With the Sparkplug format, device names
become device ids, so `sparkplug_problems` also checks them (for `millwright check`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from pydantic import field_validator

from gateway.config_base import Strict
from gateway.sparkplug.names import check_id


class SparkplugSection(Strict):
    group_id: str
    edge_node_id: str | None = None  # None: the gateway's id
    primary_host_id: str | None = None
    # "deflate": each DDATA and NDATA travels inside a payload of the compressed-payload
    # convention of Eclipse Tahu (gateway/sparkplug/compression.py); births never do.
    compression: Literal["none", "deflate"] = "none"

    @field_validator("group_id")
    @classmethod
    def _group(cls, value: str) -> str:
        return check_id(value, "group_id")

    @field_validator("edge_node_id")
    @classmethod
    def _node(cls, value: str | None) -> str | None:
        return None if value is None else check_id(value, "edge_node_id")

    @field_validator("primary_host_id")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        return None if value is None else check_id(value, "primary_host_id")

    def node_id(self, gateway_id: str) -> str:
        """The edge node id: `edge_node_id`, or the gateway's id."""
        return self.edge_node_id if self.edge_node_id is not None else gateway_id


def sparkplug_problems(section: SparkplugSection, gateway_id: str,
                       device_names: Sequence[str]) -> list[str]:
    """One line per id the Sparkplug format cannot carry: the default edge node id (the
    gateway's id) and each device name (it becomes a device id)."""
    problems = []
    if section.edge_node_id is None:
        try:
            check_id(gateway_id, "gateway.id (the default cloud.sparkplug.edge_node_id)")
        except ValueError as exc:
            problems.append(f"{exc}; or set cloud.sparkplug.edge_node_id")
    for index, name in enumerate(device_names):
        try:
            check_id(name, f"devices[{index}].name (device '{name}')")
        except ValueError as exc:
            problems.append(f"{exc}; with cloud.format = \"sparkplug_b\" a device name is its "
                            "Sparkplug device id")
    return problems


def asset_devices(assets: Mapping[str, Iterable[str]],
                  device_names: Iterable[str]) -> dict[str, str | None]:
    """asset -> the device whose metrics its maintenance_needed updates, from the asset's name
    and inputs (`DEVICE/POINT`): the device of the same name; else the one device all its
    inputs come from; else None (the node's `Maintenance/{asset}/...` metrics)."""
    devices = set(device_names)
    out: dict[str, str | None] = {}
    for asset, sources in assets.items():
        if asset in devices:
            out[asset] = asset
            continue
        owners = {source.partition("/")[0] for source in sources}
        only = next(iter(owners)) if len(owners) == 1 else None
        out[asset] = only if only in devices else None
    return out

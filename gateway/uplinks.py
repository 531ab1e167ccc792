"""Which uplink speaks the configured `cloud.format`: the runtime's one seam for it.

Every format reads the same outbox (CloudEvents rows) and gives the runtime the same
surface: `run()`, `connected`, `problem`, `flush()`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from gateway.uplink import Uplink

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.driver import Driver
    from gateway.store import Outbox


def _cloudevents(config: Config, outbox: Outbox, drivers: Sequence[Driver]) -> Uplink:
    return Uplink(config.cloud, outbox, prefix=config.cloud_prefix,
                  gateway_id=config.gateway.id)


def _sparkplug_b(config: Config, outbox: Outbox, drivers: Sequence[Driver]) -> Uplink:
    from gateway.uplink_sparkplug import SparkplugUplink  # protobuf only when it is used

    return SparkplugUplink.for_config(config, outbox, drivers)


FORMATS: dict[str, Callable[[Config, Outbox, Sequence[Driver]], Uplink]] = {
    "cloudevents": _cloudevents,
    "sparkplug_b": _sparkplug_b,
}


def uplink_for(config: Config, outbox: Outbox, drivers: Sequence[Driver] = ()) -> Uplink:
    """The uplink of `config.cloud.format`, built without I/O."""
    return FORMATS[config.cloud.format](config, outbox, drivers)

"""Which uplink speaks the configured `cloud.format` on the bus of `cloud.url`: the runtime's
one seam for it.

Every format and bus reads the same outbox (CloudEvents rows) and gives the runtime the
same surface (`CloudUplink`): `run()`, `connected`, `problem`, `in_flight`, `last_ack_at`,
`flush()`. A nats:// or
tls:// URL picks NATS JetStream (gateway/uplink_nats.py, CloudEvents only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from gateway.nats_config import is_nats_url
from gateway.uplink import Uplink

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.driver import Driver
    from gateway.store import Outbox


class CloudUplink(Protocol):
    """What the runtime uses of an uplink, whatever the bus."""

    @property
    def connected(self) -> bool: ...

    @property
    def problem(self) -> str | None: ...

    @property
    def in_flight(self) -> int: ...

    @property
    def last_ack_at(self) -> float | None: ...

    async def run(self) -> None: ...

    async def flush(self, timeout_s: float) -> bool: ...


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


def uplink_for(config: Config, outbox: Outbox,
               drivers: Sequence[Driver] = ()) -> CloudUplink:
    """The uplink of `config.cloud.format` on the bus of `config.cloud.url`, built without I/O."""
    if is_nats_url(config.cloud.url):
        from gateway.uplink_nats import NatsUplink  # nats-py only when it is used

        return NatsUplink(config.cloud, outbox, prefix=config.cloud_prefix,
                          gateway_id=config.gateway.id)
    return FORMATS[config.cloud.format](config, outbox, drivers)

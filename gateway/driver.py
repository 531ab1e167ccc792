"""The contract every device driver fulfils: connect, read batches of readings, close.

Drivers do no I/O in `__init__`, so `millwright check` can build every one of
them without touching the network. They never retry on their own: when the
device cannot be reached they raise `NotConnected`, and the runtime owns
backoff, jitter, reconnection and the device's online/offline events.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from gateway.events import Reading

if TYPE_CHECKING:
    from gateway.config import DeviceConfig


@dataclass(slots=True)
class Batch:
    """Readings taken together; `ack` is called once they are durably in the outbox.

    Drivers whose source can redeliver (an MQTT broker) acknowledge upstream
    only from `ack`, so a crash before commit loses nothing.
    """

    readings: Sequence[Reading]
    ack: Callable[[], None] | None = None


class Driver(ABC):
    """One device. The runtime calls connect, then read in a loop, then close."""

    #: The pydantic model validating this protocol's `[[devices]]` table.
    config_model: ClassVar[type[DeviceConfig]]

    def __init__(self, config: DeviceConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @abstractmethod
    async def connect(self) -> None:
        """Open the connection; raise NotConnected when the device is unreachable."""

    @abstractmethod
    async def read(self) -> Batch:
        """Wait for and return the next batch (a poll, or notifications that arrived).

        Raise NotConnected when the connection is lost. A point that cannot be
        read is a reading with quality "bad", not an exception.
        """

    @abstractmethod
    async def close(self) -> None:
        """Release the connection. Must not raise, and must be safe to call twice."""

    def point_names(self) -> list[str]:
        """The names of the points this device produces (for config cross-checks)."""
        return [p.name for p in getattr(self.config, "points", [])]

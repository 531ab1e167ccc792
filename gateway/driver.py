"""The contract every device driver fulfils: connect, hand over batches of frames, close.

Drivers do no I/O in `__init__`, so `millwright check` can build every one of
them without touching the network. They never retry on their own: when the
device cannot be reached they raise `NotConnected`, and the runtime owns
backoff, jitter, reconnection and the device's online/offline events.

A device either pushes its data or is polled:
- a pushing driver (subscriptions, a broker) implements `read`: wait for the
  next batch and return it;
- a polling driver sets `poll_interval_s` and implements `poll`: read every
  point once, now. The runtime keeps the schedule (gateway/polling.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from gateway.config_base import DeviceConfig
from gateway.errors import WriteFailed
from gateway.frames import Frame, PointSpec, Value


@dataclass(slots=True)
class Batch:
    """Frames handed over together; `ack` is called once they are durably in the outbox.

    Drivers whose source can redeliver (an MQTT broker) acknowledge upstream
    only from `ack`, so a crash before commit loses nothing.
    """

    frames: Sequence[Frame]
    ack: Callable[[], None] | None = None

    @property
    def readings(self) -> int:
        return sum(len(frame.values) for frame in self.frames)


class Driver(ABC):
    """One device. The runtime calls connect, then read (or poll) in a loop, then close."""

    #: The pydantic model validating this protocol's `[[devices]]` table.
    config_model: ClassVar[type[DeviceConfig]]

    def __init__(self, config: DeviceConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def poll_interval_s(self) -> float | None:
        """Seconds between polls when the runtime polls this device; None when it pushes."""
        return None

    @abstractmethod
    async def connect(self) -> None:
        """Open the connection; raise NotConnected when the device is unreachable."""

    async def read(self) -> Batch:
        """A pushing device: wait for and return the next batch.

        Raise NotConnected when the connection is lost. A point that cannot be
        read is a value with quality "bad" in its frame, not an exception.
        """
        raise NotImplementedError(f"{type(self).__name__} is polled, not read")

    async def poll(self) -> Batch:
        """A polled device: read every point once, now (same rules as `read`).

        The first poll after `connect` proves the device answers: until it does, the
        device is not online.
        """
        raise NotImplementedError(f"{type(self).__name__} pushes its data; it is not polled")

    def describe(self, device: str) -> list[PointSpec]:
        """The points of `device` (this driver's, or one it names from a topic) for its
        birth: name, type, unit, writable, as far as the driver knows them now."""
        return [PointSpec(p.name, getattr(p, "type", None), getattr(p, "unit", None),
                          getattr(p, "writable", False))
                for p in getattr(self.config, "points", ())]

    def mapping_help(self, point: str) -> dict[str, Any] | None:
        """What `point`'s raw data from the last read decodes to in every layout the
        protocol allows (the page's mapping help); None when the driver has none."""
        return None

    async def write(self, values: Mapping[str, Value]) -> dict[str, Value]:
        """Write one command's values together (one request where the protocol allows),
        then read them back where the protocol can: the values read back, by point.

        Called only while connected, with points the config made writable and values
        already checked against their type and limits. Raise NotConnected when the device
        cannot be reached, WriteFailed when it refused the write.
        """
        raise WriteFailed(f"{type(self).__name__} cannot write")

    @abstractmethod
    async def close(self) -> None:
        """Release the connection. Must not raise, and must be safe to call twice."""

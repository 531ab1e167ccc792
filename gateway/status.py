"""What a running gateway says about itself: the typed status behind /readyz and `status`.

The runtime builds a `GatewayStatus`; the health endpoint serves `as_json()` of it
with the verdict of `readiness`. Typed, so a renamed field is a type error and a
test failure, never a probe that quietly reads "not ready".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class OutboxFigures:
    depth: int = 0
    bytes: int = 0
    readings: int = 0
    oldest_age_s: float | None = None
    dropped: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class GatewayStatus:
    gateway: str
    site: str
    uptime_s: float = 0.0
    outbox_writable: bool = True
    outbox: OutboxFigures = field(default_factory=OutboxFigures)
    uplink_connected: bool = False
    # Why the uplink is not delivering (unreachable, PUBACKs stopped, every publish
    # refused), or None.
    uplink_problem: str | None = None
    devices: dict[str, bool] = field(default_factory=dict)  # device name -> online

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def readiness(status: GatewayStatus) -> tuple[bool, list[str]]:
    """(ready, problems): ready when the outbox writes, the uplink is connected and
    delivering, and every device is online; each problem says what is wrong."""
    problems = []
    if not status.outbox_writable:
        problems.append("outbox is not writable: new readings are refused (disk full or "
                        "read-only? see the log)")
    if not status.uplink_connected:
        problems.append("not connected to the cloud broker: events wait in the outbox"
                        + (f" ({status.uplink_problem})" if status.uplink_problem else ""))
    elif status.uplink_problem:
        problems.append(f"the cloud uplink is not delivering: {status.uplink_problem}")
    offline = sorted(name for name, online in status.devices.items() if not online)
    if offline:
        problems.append(f"{len(offline)} of {len(status.devices)} devices offline: "
                        f"{', '.join(offline)}")
    return not problems, problems

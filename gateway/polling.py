"""Poll schedules: fixed-rate slots at each device's own phase, missed slots skipped and counted.

The runtime owns the schedule of every polled device (a driver only reads once when
asked), so all polling drivers keep time the same way:
- slots fall at `phase + k * interval` on the loop's monotonic clock. The phase comes
  from the device's name, so a hundred devices with one interval poll at a hundred
  spread-out instants, and a device keeps its phase across reconnects and restarts;
- a poll that runs past its next slot does not fire the missed slots late in a
  burst: they are skipped, and counted as overruns;
- start-up is staggered once, by the same hash: connections open spread over 10 ms per
  device, up to `MAX_STAGGER_S`, not all in the same millisecond (three devices start
  within 30 ms; a hundred within a second).
"""

from __future__ import annotations

import hashlib
import math

# Start-up is spread over at most this long, so a device with a long interval still
# reports soon after start, and over this much per device, so a few start at once.
MAX_STAGGER_S = 1.0
STAGGER_PER_DEVICE_S = 0.01


def name_fraction(name: str) -> float:
    """A fixed number in [0, 1) for a device name, spread evenly over names."""
    digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def start_delay_s(name: str, devices: int, interval_s: float | None = None) -> float:
    """How long a device, one of `devices`, waits before its first connection."""
    span = min(MAX_STAGGER_S, STAGGER_PER_DEVICE_S * devices)
    if interval_s is not None:
        span = min(span, interval_s)
    return name_fraction(name) * span


class PollSchedule:
    """When a polled device reads next; `restart` after each connect, `advance` after each poll."""

    def __init__(self, interval_s: float, phase_s: float) -> None:
        if interval_s <= 0:
            raise ValueError("a poll interval must be positive")
        self.interval_s = interval_s
        self.phase_s = phase_s % interval_s
        self.overruns = 0
        self._next = math.nan

    @classmethod
    def for_device(cls, name: str, interval_s: float) -> PollSchedule:
        return cls(interval_s, name_fraction(name) * interval_s)

    @property
    def next_slot(self) -> float:
        return self._next

    def restart(self, now: float) -> None:
        """After a (re)connect: the next slot is the first one after `now`; none counts missed."""
        self._next = self._slot_after(now)

    def wait_s(self, now: float) -> float:
        """Seconds from `now` to the next slot (0 when it is due)."""
        return max(0.0, self._next - now)

    def advance(self, now: float) -> int:
        """The current slot's poll ended at `now`: move to the next slot still ahead.

        Returns how many slots passed while the poll ran (0 when it fitted its interval).
        """
        following = self._next + self.interval_s
        if following > now:
            self._next = following
            return 0
        self._next = self._slot_after(now)
        missed = round((self._next - following) / self.interval_s)
        self.overruns += missed
        return missed

    def _slot_after(self, t: float) -> float:
        k = math.floor((t - self.phase_s) / self.interval_s) + 1
        return self.phase_s + k * self.interval_s

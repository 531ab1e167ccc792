"""Readings the outbox refused, per device: counted in a metric, logged once per episode.

When the outbox cannot commit (disk full, a failing disk, a lock held elsewhere) it
refuses new readings. That is the store's state, not the device's: the device stays
connected and online (a refusal used to end the device's session, so a full disk
made every device flap online/offline with each retry). Each refused reading is
counted in `millwright_device_readings_refused_total{device}`; the first refusal of
an episode logs one warning per supervised device, and the first commit after it
one line with the episode's length and count.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from gateway import metrics

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Episode:
    started: float
    readings: int


class Refusals:
    """The refusal episodes of every supervised device (by its `[[devices]]` name)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._episodes: dict[str, _Episode] = {}

    def refusing(self, device: str) -> bool:
        return device in self._episodes

    def refused(self, device: str, readings: Counter[str], reason: str, *, held: bool) -> None:
        """The outbox refused a batch of `device` carrying `readings` (per frame device)."""
        total = 0
        for name, count in readings.items():
            metrics.DEVICE_READINGS_REFUSED.labels(name).inc(count)
            total += count
        episode = self._episodes.get(device)
        if episode is not None:
            episode.readings += total
            return
        self._episodes[device] = _Episode(self._clock(), total)
        what = ("its batches are held and retried (the source is acknowledged only once "
                "they are stored)" if held else "they are lost")
        log.warning("device %s: the outbox refuses its readings (%s): the device stays online, "
                    "%s; counted in millwright_device_readings_refused_total", device, reason,
                    what)

    def accepted(self, device: str) -> None:
        """A batch of `device` was committed: ends its episode, if one was running."""
        episode = self._episodes.pop(device, None)
        if episode is not None:
            log.warning("device %s: the outbox takes its readings again after %.1f s; "
                        "%d readings were refused meanwhile", device,
                        self._clock() - episode.started, episode.readings)

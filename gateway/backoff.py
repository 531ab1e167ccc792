"""Capped exponential backoff with full jitter, for reconnecting devices and the uplink."""

from __future__ import annotations

import random


class Backoff:
    """`next()` gives the next delay: random in [min, min * 2**n], capped at `max_s`.

    Full jitter keeps a hundred devices that lost the same network from reconnecting
    in the same millisecond. `longest()` is for failures that retrying soon will not
    fix (a refused password): between half of and all of `refused_s` (default `max_s`).
    """

    def __init__(self, min_s: float, max_s: float, rng: random.Random | None = None, *,
                 refused_s: float | None = None) -> None:
        if min_s <= 0 or max_s < min_s:
            raise ValueError("backoff needs 0 < min_s <= max_s")
        self.min_s = min_s
        self.max_s = max_s
        self.refused_s = max(max_s, refused_s or max_s)
        self.attempts = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.max_s, self.min_s * 2 ** min(self.attempts, 32))
        self.attempts += 1
        return self._rng.uniform(self.min_s, ceiling)

    def longest(self) -> float:
        """A long delay, for errors that retrying soon will not fix."""
        self.attempts += 1
        return self._rng.uniform(self.refused_s / 2, self.refused_s)

    def reset(self) -> None:
        self.attempts = 0

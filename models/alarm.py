"""The alarm rule shared by the device and offline evaluation: N evaluations over, then quiet."""

from __future__ import annotations

import math


class AlarmRule:
    """Raises when the probability has been at or above `threshold` for `alarm_after`
    consecutive evaluations, then stays quiet for `cooldown` (in the caller's time unit:
    seconds on the device, steps offline).
    """

    def __init__(self, threshold: float, alarm_after: int, cooldown: float) -> None:
        if alarm_after < 1:
            raise ValueError("alarm_after must be at least 1")
        self.threshold = threshold
        self.alarm_after = alarm_after
        self.cooldown = cooldown
        self.consecutive = 0
        self.last_alarm = -math.inf

    def update(self, probability: float, now: float) -> bool:
        """Feed one evaluation; True when it raises an alarm."""
        self.consecutive = self.consecutive + 1 if probability >= self.threshold else 0
        if self.consecutive >= self.alarm_after and now - self.last_alarm >= self.cooldown:
            self.last_alarm = now
            return True
        return False

    def interrupt(self) -> None:
        """An evaluation that could not run (missing or stale inputs) breaks the streak."""
        self.consecutive = 0


def alarm_steps(probabilities: list[float], threshold: float, alarm_after: int,
                cooldown_steps: float) -> list[int]:
    """The indexes at which the rule raises over a series evaluated once per step."""
    rule = AlarmRule(threshold, alarm_after, cooldown_steps)
    return [i for i, p in enumerate(probabilities) if rule.update(p, float(i))]

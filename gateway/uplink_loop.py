"""What every uplink does between connections: the session loop, its backoff, and saying why once.

`SessionLoop.run` runs the subclass's `_session()` (one connection, from connect to loss)
until cancelled. After a refusal retrying cannot fix soon (`rejected`: credentials, a
certificate, a stream that is not there) the next attempt waits `refused_retry_s` (half
of it to all of it); after anything else it waits `reconnect_min_s`..`reconnect_max_s`,
jittered and escalating while sessions keep ending quickly. Each failure is logged when
it differs from the last one logged, not on every retry. The MQTT uplinks
(gateway/uplink.py) and the NATS one (gateway/uplink_nats.py) are built on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, ClassVar, Protocol

from gateway import metrics
from gateway.backoff import Backoff

if TYPE_CHECKING:
    import random

    from gateway.config import CloudSection
    from gateway.store import Outbox

STABLE_SESSION_S = 5.0  # a session that lasted this long resets the backoff


class LiveSession(Protocol):
    """What the loop reads of a subclass's current connection (for the page's figures)."""

    @property
    def in_flight(self) -> int: ...

    last_ack_at: float | None  # wall time of the last acknowledgement of data


class SessionLoop:
    """The connection-independent part of an uplink; subclasses implement `_session`."""

    logger: ClassVar[str] = __name__  # where its failures are logged
    rejected: ClassVar[tuple[type[Exception], ...]] = ()  # waits refused_retry_s
    unreachable: ClassVar[tuple[type[Exception], ...]] = ()  # waits reconnect_min..max_s

    def __init__(self, cloud: CloudSection, outbox: Outbox,
                 rng: random.Random | None = None) -> None:
        self.cloud = cloud
        self.outbox = outbox
        self.backoff = Backoff(cloud.reconnect_min_s,
                               max(cloud.reconnect_min_s, cloud.reconnect_max_s), rng,
                               refused_s=cloud.refused_retry_s)
        self._connected = False
        self._problem: str | None = None  # the failure last logged: repeats stay quiet
        self._down: str | None = None  # why the last connection attempt failed
        self._stalled: str | None = None  # acknowledgements stopped: until one comes again
        self.retry_delay_s: float | None = None  # the wait before the current retry, if any
        self._current: LiveSession | None = None  # the connection now: subclasses set it
        self._last_ack_at: float | None = None

    @property
    def in_flight(self) -> int:
        """Messages published on the current connection and not yet acknowledged."""
        return 0 if self._current is None else self._current.in_flight

    @property
    def last_ack_at(self) -> float | None:
        """Wall time of the last acknowledgement of data, on any connection so far."""
        if self._current is not None and self._current.last_ack_at is not None:
            self._last_ack_at = self._current.last_ack_at
        return self._last_ack_at

    @property
    def connected(self) -> bool:
        return self._connected

    async def flush(self, timeout_s: float) -> bool:
        """True when every row was acked (so deleted from the outbox) before the timeout."""
        return await self.outbox.wait_empty(timeout_s)

    async def _session(self) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        """Run one session after another, with the backoff between them; until cancelled."""
        while True:
            started = time.monotonic()
            try:
                await self._session()
            except self.rejected as exc:
                self._down = str(exc)
                self._report(str(exc), logging.ERROR)
                self.retry_delay_s = self.backoff.longest()
            except self.unreachable as exc:
                self._down = str(exc)
                self._report(str(exc), logging.WARNING)
                self.retry_delay_s = self.backoff.next()
            except Exception as exc:  # noqa: BLE001 - e.g. an outbox read failed: keep the link
                self._down = f"uplink session failed: {type(exc).__name__}: {exc}"
                self._report(self._down, logging.ERROR, exc)
                self.retry_delay_s = self.backoff.next()
            else:  # connected, then lost: a flapping link keeps escalating the delay
                if time.monotonic() - started >= STABLE_SESSION_S:
                    self.backoff.reset()
                self.retry_delay_s = self.backoff.next()
            await asyncio.sleep(self.retry_delay_s)

    def _report(self, problem: str, level: int, exc: BaseException | None = None) -> None:
        if problem != self._problem:
            logging.getLogger(self.logger).log(level, "%s", problem, exc_info=exc)
            self._problem = problem

    def _ack_timeout(self, who: str, broker: str, waited_s: float, in_flight: int) -> None:
        """Nothing `who` (at `broker`, host:port) was sent was acknowledged for `waited_s`:
        counted, said once."""
        metrics.UPLINK_ACK_TIMEOUTS.inc()
        if self._stalled is None:
            self._stalled = (f"{who} acknowledged no publish for {waited_s:.1f} s "
                             f"(cloud.ack_timeout_s = {self.cloud.ack_timeout_s:g}); "
                             "reconnecting until acknowledgements flow again")
            logging.getLogger(self.logger).error("%s", self._stalled, extra={
                "event": "uplink_ack_timeout", "broker": broker,
                "ack_timeout_s": self.cloud.ack_timeout_s, "in_flight": in_flight})

    def _set_connected(self, value: bool) -> None:
        self._connected = value
        metrics.UPLINK_CONNECTED.set(1 if value else 0)

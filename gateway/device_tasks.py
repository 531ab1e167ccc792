"""Each device's task: connect, read or poll, commit to the outbox, online/offline, reconnect.

`DeviceTasks` is the part of `Gateway` (gateway/runtime.py) that runs the devices: the
runtime builds the state declared below and starts one `_supervise` task per driver. It
owns reconnection (capped exponential backoff with jitter) and the devices'
online/offline events; one device failing never stops another. The command runner's
seams (`command_target`, `device_settled`, `read_values`) are here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Coroutine, Sequence
from typing import TYPE_CHECKING, Any

from gateway import events, metrics
from gateway.backoff import Backoff
from gateway.driver import Batch, Driver
from gateway.errors import NotConnected, StoreError
from gateway.feed import DeviceFeed
from gateway.polling import PollSchedule, start_delay_s

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.page_state import PageState
    from gateway.refusals import Refusals
    from gateway.store import Outbox

# The runtime's logger, as before the devices' part moved here: the lines keep their name.
log = logging.getLogger("gateway.runtime")

HOLD_RETRY_MIN_S = 0.05  # a held batch's shortest pause between commit attempts


class DeviceTasks:
    """The devices' part of `Gateway`; its state is set by `Gateway.__init__`."""

    config: Config
    drivers: list[Driver]
    outbox: Outbox
    online: dict[str, bool]
    _settled: dict[str, asyncio.Event]
    _value_waiters: dict[str, list[tuple[frozenset[str], asyncio.Future[Any]]]]
    retry_delay_s: dict[str, float]
    accepted: Counter[str]
    refusals: Refusals
    predictor: Any
    page_state: PageState | None

    async def _supervise(self, driver: Driver) -> None:
        cfg = driver.config
        backoff = Backoff(cfg.reconnect_min_s, max(cfg.reconnect_min_s, cfg.reconnect_max_s))
        interval = driver.poll_interval_s
        schedule = None if interval is None else PollSchedule.for_device(driver.name, interval)
        feed = DeviceFeed(driver)
        # Staggered once, so a hundred devices do not connect in the same millisecond.
        await asyncio.sleep(start_delay_s(driver.name, len(self.drivers), interval))
        while True:
            problem = ""
            permanent = False
            try:
                await driver.connect()
                if schedule is None:
                    await self._run_pushed(driver, feed, backoff)
                else:
                    await self._run_polled(driver, feed, backoff, schedule)
            except asyncio.CancelledError:
                raise
            except NotConnected as exc:
                problem = str(exc) or "not connected"
            except StoreError as exc:
                problem = f"outbox refused readings: {exc}"
            except Exception as exc:  # noqa: BLE001 - one device must never stop the others
                problem = f"{type(exc).__name__}: {exc}"
                permanent = True
            finally:
                with contextlib.suppress(Exception):
                    await driver.close()
            metrics.DEVICE_ERRORS.labels(driver.name).inc()
            if self.page_state is not None:
                self.page_state.error(driver.name, problem)
            self._settled[driver.name].set()
            if self.online[driver.name]:
                await self._set_online(driver.name, False, problem)
            elif backoff.attempts == 0:
                log.warning("device %s unreachable: %s", driver.name, problem)
            delay = self.retry_delay_s[driver.name] = (
                backoff.longest() if permanent else backoff.next())
            await asyncio.sleep(delay)

    async def _run_pushed(self, driver: Driver, feed: DeviceFeed, backoff: Backoff) -> None:
        self.retry_delay_s.pop(driver.name, None)
        feed.connected()
        await self._set_online(driver.name, True, "connected")
        await self._accept(feed, await driver.read())
        backoff.reset()
        async with _Commits() as commits:
            while True:
                await commits.add(self._accept(feed, await driver.read()))

    async def _run_polled(self, driver: Driver, feed: DeviceFeed, backoff: Backoff,
                          schedule: PollSchedule) -> None:
        # A device that does not answer its first poll is not online: it stays offline
        # under the growing backoff instead of flapping.
        first = await self._poll(driver)
        self.retry_delay_s.pop(driver.name, None)
        feed.connected()
        await self._set_online(driver.name, True, "connected")
        await self._accept(feed, first)
        backoff.reset()
        loop = asyncio.get_running_loop()
        overruns = metrics.DEVICE_POLL_OVERRUNS.labels(driver.name)
        schedule.restart(loop.time())
        async with _Commits() as commits:
            while True:
                await asyncio.sleep(schedule.wait_s(loop.time()))  # the schedule, not a sync
                await commits.add(self._accept(feed, await self._poll(driver)))
                missed = schedule.advance(loop.time())
                if missed:
                    overruns.inc(missed)

    async def _poll(self, driver: Driver) -> Batch:
        started = time.monotonic()
        batch = await driver.poll()
        if self.page_state is not None:
            self.page_state.polled(driver.name, time.monotonic() - started)
        return batch

    async def _accept(self, feed: DeviceFeed, batch: Batch) -> None:
        """Commit a driver's batch, then feed the predictor, then acknowledge upstream.

        A batch the outbox refuses (gateway/refusals.py) leaves the device online: with
        an `ack` (a source that waits for it, e.g. MQTT QoS 1) it is held and retried
        until it commits, which holds the device back; without one it is counted and
        dropped, and the next batch is read."""
        if self._value_waiters and batch.frames:  # rare: an interrupted command's read-back
            self._hand_values(batch)
        if batch.frames:
            if self.page_state is not None:  # shown even if the outbox then refuses them
                self.page_state.frames(batch.frames)
            committed, readings = feed.events(batch.frames)
            if committed and not await self._commit(feed, committed, readings,
                                                    held=batch.ack is not None):
                return
            for device, count in readings.items():
                metrics.DEVICE_READINGS.labels(device).inc(count)
                self.accepted[device] += count
            if self.predictor is not None:
                self.predictor.observe(batch.frames)
        if batch.ack is not None:
            batch.ack()

    async def _commit(self, feed: DeviceFeed, committed: list[events.Event],
                      readings: Counter[str], *, held: bool) -> bool:
        """Append `committed`; False when the outbox refused it (and it is not held)."""
        name = feed.driver.name
        first = True
        while True:
            try:
                await self.outbox.append(committed)
            except StoreError as exc:
                if self.outbox.closed:
                    raise
                if first:
                    self.refusals.refused(name, readings, str(exc), held=held)
                    first = False
                if not held:
                    feed.refused()
                    return False
                # Backoff, not synchronisation: the outbox's own pause before its next try.
                await asyncio.sleep(max(HOLD_RETRY_MIN_S, self.outbox.retry_in_s))
            else:
                if self.refusals.refusing(name):
                    self.refusals.accepted(name)
                return True

    async def _set_online(self, device: str, online: bool, reason: str) -> None:
        self.online[device] = online
        if self.page_state is not None:
            self.page_state.set_online(device, online, reason)
        self._settled[device].set()
        metrics.DEVICE_ONLINE.labels(device).set(1 if online else 0)
        if online:
            log.info("device %s online", device)
        else:
            log.warning("device %s offline: %s", device, reason)
        with contextlib.suppress(StoreError):
            await self.outbox.append(
                [events.device_status(device, "online" if online else "offline", reason)])

    def command_target(self, device: str) -> tuple[Driver | None, bool]:
        """The driver of an enabled device named `device` (None: no such device), and whether
        it is online now: the seam the command runner writes through."""
        for driver in self.drivers:
            if driver.name == device:
                return driver, self.online.get(device, False)
        return None, False

    async def device_settled(self, device: str, timeout_s: float) -> None:
        """Return once `device`'s first connection attempt has ended (or after `timeout_s`): a
        command queued at the broker while the gateway was away, delivered the moment it
        reconnects, is not refused as offline only because its device is still connecting."""
        settled = self._settled.get(device)
        if settled is not None and not settled.is_set() and timeout_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(settled.wait(), timeout_s)

    async def read_values(self, device: str, points: Sequence[str],
                          timeout_s: float) -> dict[str, Any]:
        """The values of `points` in `device`'s next frame that has any of them ({} after
        `timeout_s`): what the command runner reports as read back for a command whose
        result was lost with the process (`Driver.write` is the only read-back a driver
        offers, and that write must not be repeated)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiter = (frozenset(points), future)
        self._value_waiters.setdefault(device, []).append(waiter)
        try:
            return dict(await asyncio.wait_for(future, timeout_s))
        except TimeoutError:
            return {}
        finally:
            waiters = self._value_waiters.get(device, [])
            if waiter in waiters:
                waiters.remove(waiter)
            if not waiters:
                self._value_waiters.pop(device, None)

    def _hand_values(self, batch: Batch) -> None:
        for frame in batch.frames:
            for points, future in self._value_waiters.get(frame.device, ()):
                found = {p: frame.values[p] for p in points if p in frame.values}
                if found and not future.done():
                    future.set_result(found)


class _Commits:
    """A device's batches on their way into the outbox: the next batch is read while the
    last one commits (the loop decodes while the writer thread writes), never more than
    PIPELINE at once; a failed commit is raised by the next `add`."""

    PIPELINE = 2

    def __init__(self) -> None:
        self._tasks: deque[asyncio.Task[None]] = deque()

    async def add(self, commit: Coroutine[Any, Any, None]) -> None:
        self._tasks.append(asyncio.create_task(commit))
        while self._tasks and (len(self._tasks) >= self.PIPELINE or self._tasks[0].done()):
            await self._tasks.popleft()

    async def __aenter__(self) -> _Commits:
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Leaving (an error, or the device task cancelled): what is committing finishes;
        # a source that redelivers gets no ack for it, and sends it again.
        tasks, self._tasks = list(self._tasks), deque()
        await asyncio.gather(*tasks, return_exceptions=True)

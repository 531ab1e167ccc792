"""The gateway at run time: wires outbox, uplink, predictor and one supervised task per device.

Everything runs on one asyncio loop. The runtime, not the drivers, owns
reconnection (capped exponential backoff with jitter) and the devices'
online/offline events; one device failing never stops another. Shutdown commits
everything accepted, gives the uplink a bounded time to deliver it, and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Coroutine, Sequence
from typing import Any

import drivers
from gateway import events, metrics
from gateway.backoff import Backoff
from gateway.config import Config
from gateway.driver import Batch, Driver
from gateway.errors import ConfigError, NotConnected, StoreError
from gateway.feed import DeviceFeed
from gateway.lock import InstanceLock
from gateway.page_state import PageState
from gateway.polling import PollSchedule, start_delay_s
from gateway.refusals import Refusals
from gateway.status import GatewayStatus, OutboxFigures
from gateway.store import Outbox
from gateway.uplinks import CloudUplink, uplink_for

log = logging.getLogger(__name__)

CANCEL_TIMEOUT_S = 5.0
HOLD_RETRY_MIN_S = 0.05  # a held batch's shortest pause between commit attempts


def build_drivers(config: Config) -> list[Driver]:
    """Every enabled device's driver, built without I/O (also what `millwright check` does)."""
    return [drivers.driver_class(device.protocol)(device)
            for device in config.devices if device.enabled]


class Gateway:
    """`async with Gateway(config) as gw:` runs the gateway until the block ends."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.lock = InstanceLock(config.gateway.data_dir)
        self.outbox = Outbox(config.outbox_path, config.store,
                             source_prefix=f"/{config.gateway.site}/{config.gateway.id}")
        self.drivers = build_drivers(config)
        # By cloud.format, on the bus of cloud.url (MQTT or NATS JetStream).
        self.uplink: CloudUplink = uplink_for(config, self.outbox, self.drivers)
        self.online: dict[str, bool] = {d.name: False for d in self.drivers}
        # Set once a device's first connection attempt has ended (online, or failed).
        self._settled: dict[str, asyncio.Event] = {d.name: asyncio.Event()
                                                    for d in self.drivers}
        # Who waits for a device's next values (read_values): (points, future) by device.
        self._value_waiters: dict[str, list[tuple[frozenset[str], asyncio.Future[Any]]]] = {}
        # The wait before each device's next connection attempt, while it is failing.
        self.retry_delay_s: dict[str, float] = {}
        self.accepted: Counter[str] = Counter()  # readings (values) committed, per device
        self.refusals = Refusals()
        self.predictor: Any = None
        if config.assets:
            from gateway.predictor import Predictor

            self.predictor = Predictor(config.assets)
        self.health: Any = None
        self.page_state: PageState | None = None  # what the page shows, with [health] on
        if config.health.enabled:
            self.page_state = PageState()
            for d in self.drivers:
                self.page_state.add_device(d.name, d.config.protocol, d.poll_interval_s,
                                           d.describe(d.name))
        self.commands: Any = None  # a CommandRunner, with [commands] enabled
        if config.commands.enabled:
            from gateway.command_runner import CommandInbox, CommandRunner
            from gateway.uplink import Uplink

            inbox = CommandInbox()
            self.commands = CommandRunner(config, self.outbox, self, inbox)
            if isinstance(self.uplink, Uplink):  # MQTT only: `check` refuses them over NATS
                self.uplink.commands = inbox  # the uplink subscribes and fills it
        self._device_tasks: list[asyncio.Task[None]] = []
        self._service_tasks: list[asyncio.Task[None]] = []
        self.started_at: float | None = None

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> None:
        if self.predictor is not None:
            await asyncio.to_thread(self.predictor.load)
        # Before the outbox: a second gateway on this data_dir stops here (AlreadyRunning).
        await asyncio.to_thread(self.lock.acquire)
        try:
            await self._start_locked()
        except BaseException:
            self.lock.release()
            raise

    async def _start_locked(self) -> None:
        await self.outbox.open()
        if self.outbox.moved_aside:
            await self.outbox.append([events.device_status(
                "_gateway", "outbox_replaced",
                f"corrupt outbox moved aside to {self.outbox.moved_aside}")])
        if self.config.health.enabled:
            from gateway.health import for_gateway

            try:
                self.health = await for_gateway(self)
                await self.health.start()
            except ConfigError:  # its password or certificate files
                await self.outbox.close()
                raise
            except OSError as exc:
                await self.outbox.close()
                where = f"{self.config.health.host}:{self.config.health.port}"
                raise ConfigError([f"health: cannot listen on {where}: {exc.strerror}; "
                                   "choose another [health] port or stop what uses it"]) from None
        if self.commands is not None:
            try:  # before the uplink subscribes: last run's interrupted commands first
                await self.commands.open()
            except BaseException:
                if self.health is not None:
                    await self.health.stop()
                await self.outbox.close()
                raise
            self._service_tasks.append(asyncio.create_task(self.commands.run(),
                                                           name="commands"))
        self._service_tasks.append(asyncio.create_task(self.uplink.run(), name="uplink"))
        if self.predictor is not None:
            self._service_tasks.append(
                asyncio.create_task(self.predictor.run(self._predicted), name="predictor"))
        for driver in self.drivers:
            self._device_tasks.append(asyncio.create_task(
                self._supervise(driver), name=f"device:{driver.name}"))
        self.started_at = time.monotonic()
        log.info("gateway %s started: %d devices, %d assets, outbox %s",
                 self.config.gateway.id, len(self.drivers), len(self.config.assets),
                 self.config.outbox_path)

    async def stop(self) -> None:
        """Stop the devices, commit what they gave, let the uplink deliver it (bounded), close."""
        deadline = time.monotonic() + self.config.gateway.shutdown_timeout_s
        if self.commands is not None:  # no new command; running ones finish while devices last
            await _cancel([t for t in self._service_tasks if t.get_name() == "commands"])
            await self.commands.close()
        await _cancel(self._device_tasks)
        await _cancel([t for t in self._service_tasks if t.get_name() == "predictor"])
        for driver in self.drivers:
            if self.online.get(driver.name):
                self.online[driver.name] = False
                with contextlib.suppress(StoreError):
                    await self.outbox.append([events.device_status(driver.name, "offline",
                                                                   "gateway stopping")])
        remaining = max(0.1, deadline - time.monotonic())
        if self.uplink.connected and not await self.uplink.flush(remaining * 0.8):
            log.warning("shutdown: %d events stay in the outbox for the next start",
                        self.outbox.stats().depth)
        await _cancel(self._service_tasks)
        if self.health is not None:
            await self.health.stop()
        await self.outbox.close()
        self.lock.release()
        log.info("gateway %s stopped", self.config.gateway.id)

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run_until(self, stop: asyncio.Event) -> None:
        async with self:
            await stop.wait()

    # -- devices ---------------------------------------------------------------

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

    # -- health ------------------------------------------------------------------

    async def _predicted(self, alarms: list[events.Event]) -> None:
        if self.page_state is not None:
            self.page_state.events(alarms)
        await self.outbox.append(alarms)

    def status(self) -> GatewayStatus:
        stats = self.outbox.stats()
        return GatewayStatus(
            gateway=self.config.gateway.id,
            site=self.config.gateway.site,
            uptime_s=round(time.monotonic() - self.started_at, 3) if self.started_at else 0.0,
            outbox_writable=stats.writable,
            outbox=OutboxFigures(stats.depth, stats.bytes, stats.readings, stats.oldest_age_s,
                                 dict(stats.dropped)),
            uplink_connected=self.uplink.connected,
            uplink_problem=self.uplink.problem,
            devices=dict(self.online),
        )


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


async def _cancel(tasks: Sequence[asyncio.Task[None]],
                  timeout_s: float = CANCEL_TIMEOUT_S) -> None:
    """Cancel and await `tasks`, bounded: a task that swallows its cancellation is left behind."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, stuck = await asyncio.wait(tasks, timeout=timeout_s)
    for task in stuck:
        log.error("task %s did not stop within %.0f s; leaving it", task.get_name(), timeout_s)
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("task %s failed while stopping: %s", task.get_name(), task.exception())

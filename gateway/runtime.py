"""The gateway at run time: wires outbox, uplink, predictor and one supervised task per device.

Everything runs on one asyncio loop. The runtime, not the drivers, owns
reconnection (capped exponential backoff with jitter) and the devices'
online/offline events, in each device's task (gateway/device_tasks.py); one device
failing never stops another. Shutdown commits
everything accepted, gives the uplink a bounded time to deliver it, and stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import drivers
from gateway import events
from gateway.config import Config
from gateway.device_tasks import DeviceTasks
from gateway.driver import Driver
from gateway.errors import ConfigError, StoreError
from gateway.lock import InstanceLock
from gateway.page_state import PageState
from gateway.refusals import Refusals
from gateway.status import GatewayStatus, OutboxFigures
from gateway.store import Outbox
from gateway.uplinks import CloudUplink, uplink_for

log = logging.getLogger(__name__)

CANCEL_TIMEOUT_S = 5.0


def build_drivers(config: Config) -> list[Driver]:
    """Every enabled device's driver, built without I/O (also what `millwright check` does)."""
    return [drivers.driver_class(device.protocol)(device)
            for device in config.devices if device.enabled]


class Gateway(DeviceTasks):
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

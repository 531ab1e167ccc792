"""Commands executed: from the uplink's inbox, through the checks and the ledger, to the device.

The uplink's paho callback only puts each message in a `CommandInbox` (bounded; when
full the uplink stops reading its socket until there is room, and since it
acknowledges a command only once its result is in the outbox, the broker holds the
rest). The `CommandRunner` takes them out and, per device one at a time (so two
commands to one machine never interleave), does:

1. parse (gateway/commands.py) - a malformed command is `rejected`;
2. the ledger (gateway/command_ledger.py) - an id seen before is not run again: its
   earlier result is sent again;
3. the checks - clock, age (`expired`), device, points, types, limits, online (a
   device whose first connection attempt since start is still running is waited for,
   within the command's age budget: commands queued while the gateway was away arrive
   the moment it reconnects, before its devices have);
4. intent recorded durably, then `driver.write(values)` (through the runtime's
   `CommandTargets` seam) - `done` with what it read back; `failed` when the device
   refused (`WriteFailed`) or was lost (`NotConnected`); `uncertain` when the driver
   raised anything else (whether it wrote is unknown);
5. the result recorded in the ledger, appended to the outbox (one
   `io.millwright.command_result` whose id hashes the command id), counted in
   `millwright_commands_total{device,status}`, logged once, and only then the MQTT
   message acknowledged.

At start, a command found with an intent and no result (the process died between the
two) is not retried: its result is `uncertain`, `written` the values it was about to
write, `read_back` the device's first values of those points after the restart (from its
next frame: `Driver.write` is a driver's only read-back, and it must not be repeated), or
empty when none came within `max_age_s`. A redelivery meanwhile finds the intent and is
not run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gateway import commands, events, metrics
from gateway.command_ledger import CommandLedger, Entry
from gateway.errors import NotConnected, StoreError, WriteFailed

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.driver import Driver
    from gateway.store import Outbox

log = logging.getLogger(__name__)

INBOX_CAPACITY = 256
CLOSE_WAIT_S = 2.0  # how long a stopping gateway lets running commands finish
PRUNE_EVERY_S = 60.0
UNKNOWN_DEVICE_LABEL = "_unknown"  # the metric label of a device the config does not name
INTERRUPTED = ("the gateway stopped between writing and recording the result; the write is "
               "not retried, and whether it reached the device is unknown")
READ_BACK = "read_back is the device's first value of each point after the restart"
NO_READ_BACK = "no value of these points came from the device within {:g} s after the restart"


@dataclass(slots=True)
class Incoming:
    """One command message: a CloudEvent from `{prefix}/command/{device}`, or a Sparkplug
    DCMD (whose `parse` is gateway/sparkplug/commands.py's); `ack` acknowledges it."""

    device: str
    payload: bytes
    ack: Callable[[], None]
    parse: Callable[[bytes, str], commands.Command] = commands.parse


class CommandInbox:
    """The bounded hand-over from the uplink's paho callback to the runner.

    `offer` never blocks (it runs inside paho's read): it keeps the message and returns
    False once the inbox is full, and the uplink then stops reading its socket;
    `on_room` is called when the runner has made room again.
    """

    def __init__(self, capacity: int = INBOX_CAPACITY) -> None:
        self.capacity = capacity
        self._items: deque[Incoming] = deque()
        self._ready = asyncio.Event()
        self.on_room: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, item: Incoming) -> bool:
        self._items.append(item)
        self._ready.set()
        return len(self._items) < self.capacity

    async def get(self) -> Incoming:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if len(self._items) == self.capacity - 1 and self.on_room is not None:
            self.on_room()
        return item


class CommandTargets(Protocol):
    """The runtime's seam: a device's driver by name (None: no such enabled device), and
    whether it is online now."""

    def command_target(self, device: str) -> tuple[Driver | None, bool]: ...

    async def device_settled(self, device: str, timeout_s: float) -> None:
        """Wait (at most `timeout_s`) until the device's first connection attempt ended."""

    async def read_values(self, device: str, points: Sequence[str],
                          timeout_s: float) -> dict[str, Any]:
        """The values of `points` in the device's next frame ({} after `timeout_s`)."""


class CommandRunner:
    """Runs commands from `inbox` until cancelled (see the module docstring)."""

    def __init__(self, config: Config, outbox: Outbox, targets: CommandTargets,
                 inbox: CommandInbox, *, clock: Callable[[], float] = time.time) -> None:
        self.max_age_s = config.commands.max_age_s
        self.outbox = outbox
        self.targets = targets
        self.inbox = inbox
        self.clock = clock
        self.ledger = CommandLedger(config.commands_path,
                                    keep_s=max(2 * self.max_age_s + 60.0, 600.0),
                                    durability=config.store.durability)
        self._locks: dict[str, asyncio.Lock] = {}
        self._room = asyncio.Semaphore(inbox.capacity)
        self._tasks: set[asyncio.Task[None]] = set()
        self._pruned_at = 0.0
        self._interrupted: list[Entry] = []
        self._settling: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        """Open the ledger and settle what the last run left: interrupted commands become
        `uncertain`, results not yet in the outbox are appended."""
        await self.ledger.open()
        for entry in await self.ledger.unfinished():
            if entry.result is None:
                self._interrupted.append(entry)  # answered by `run`, once read back
            else:
                await self._send(entry, resent=False)

    async def _settle_interrupted(self, entry: Entry) -> None:
        """An interrupted command's one result: `uncertain`, with the device's next values of
        its points (it is polled or pushes them once it is back) as read back."""
        written = entry.intent or {}
        async with self._locks.setdefault(entry.device, asyncio.Lock()):
            wait_s = self.max_age_s
            read_back = await self.targets.read_values(entry.device, list(written), wait_s)
            reason = f"{INTERRUPTED}; {READ_BACK if read_back else NO_READ_BACK.format(wait_s)}"
            data = commands.result_data(entry.id, entry.device, "uncertain", reason,
                                        written=written, read_back=read_back)
            await self._finish(entry.id, entry.device, data, None)

    async def close(self, timeout_s: float = CLOSE_WAIT_S) -> None:
        """Let the commands already running finish (at most `timeout_s`: a write cut short
        stays an intent, `uncertain` at the next start), then close the ledger. Call it after
        cancelling `run`, and before the devices are closed."""
        for task in self._settling:
            task.cancel()  # they wait for a device's values: the next start asks again
        running = [task for task in self._tasks if task not in self._settling]
        if running:
            _, late = await asyncio.wait(running, timeout=timeout_s)
            for task in late:
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ledger.close()

    async def run(self) -> None:
        for entry in self._interrupted:
            task = asyncio.create_task(self._settle_interrupted(entry),
                                       name=f"command:{entry.device}")
            self._tasks.add(task)
            self._settling.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(self._settling.discard)
        self._interrupted = []
        while True:
            await self._room.acquire()
            try:
                item = await self.inbox.get()
            except BaseException:
                self._room.release()
                raise
            task = asyncio.create_task(self._one(item), name=f"command:{item.device}")
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._room.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("command to %s failed: %s", task.get_name().partition(":")[2],
                      task.exception())

    async def _one(self, item: Incoming) -> None:
        # Per device, in arrival order (asyncio.Lock wakes its waiters first come, first served).
        lock = self._locks.setdefault(item.device, asyncio.Lock())
        async with lock:
            try:
                await self.handle(item)
            except StoreError as exc:  # not acknowledged: the broker sends it again
                log.error("command to %s: its result could not be stored (%s); the broker "
                          "will deliver the command again", item.device, exc)
        if self.clock() - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = self.clock()
            await self.ledger.prune(self._pruned_at)

    async def handle(self, item: Incoming) -> None:
        """One command message, to its one result (see the module docstring)."""
        try:
            command = item.parse(item.payload, item.device)
        except commands.Refused as refused:
            key = refused.command_id or commands.payload_key(item.payload)
            self._log_command(refused.command_id, item.device, {})
            await self._refuse(key, refused, item.ack)
            return
        self._log_command(command.id, command.device, command.values)
        known = await self.ledger.lookup(command.id)
        if known is not None:
            if known.result is None:  # the first delivery is still running: it will answer
                log.info("command %s to %s delivered again while running; not run again",
                         command.id, command.device)
                item.ack()
            else:
                await self._send(known, resent=True)
                item.ack()
            return
        driver, online = self.targets.command_target(command.device)
        if driver is not None and not online:  # still connecting after a (re)start?
            budget = self.max_age_s - (self.clock() - command.time)
            await self.targets.device_settled(command.device, min(budget, self.max_age_s))
            driver, online = self.targets.command_target(command.device)
        points = None if driver is None else list(getattr(driver.config, "points", ()))
        try:
            commands.check(command, points, online=online, now=self.clock(),
                           max_age_s=self.max_age_s)
        except commands.Refused as refused:
            await self._refuse(command.id, refused, item.ack)
            return
        assert driver is not None  # checked: an unknown device is refused
        if not await self.ledger.record_intent(command.id, command.device, command.values):
            item.ack()  # another delivery got there first; it answers
            return
        data = await self._write(driver, command)
        await self._finish(command.id, command.device, data, item.ack)

    async def _write(self, driver: Driver, command: commands.Command) -> dict[str, Any]:
        def result(status: commands.Status, reason: str = "",
                   read_back: dict[str, Any] | None = None) -> dict[str, Any]:
            return commands.result_data(command.id, command.device, status, reason,
                                        written=command.values, read_back=read_back)

        try:
            read_back = await driver.write(command.values)
        except WriteFailed as exc:
            return result("failed", f"the device refused the write: {exc}")
        except NotConnected as exc:
            return result("failed", f"device '{command.device}' was lost during the write: "
                          f"{exc or 'not connected'}")
        except asyncio.CancelledError:
            raise  # the intent stays: the next start says `uncertain`
        except Exception as exc:  # noqa: BLE001 - a driver bug must still give one result
            return result("uncertain", f"the driver failed during the write "
                          f"({type(exc).__name__}: {exc}); whether it wrote is unknown")
        return result("done", read_back=dict(read_back))

    async def _refuse(self, key: str, refused: commands.Refused,
                      ack: Callable[[], None]) -> None:
        data = commands.result_data(refused.command_id, refused.device, refused.status,
                                    refused.reason, written={})
        await self._finish(key, refused.device, data, ack)

    async def _finish(self, key: str, device: str, data: dict[str, Any],
                      ack: Callable[[], None] | None) -> None:
        """Record the result, put it in the outbox, count and log it, then acknowledge."""
        at = self.clock()
        await self.ledger.record_result(key, device, data, at)
        entry = await self.ledger.lookup(key)
        if entry is None or entry.result is None:  # pragma: no cover - just recorded
            raise StoreError(f"the command ledger lost the result of {key}")
        await self._send(entry, resent=False)
        if ack is not None:
            ack()

    async def _send(self, entry: Entry, *, resent: bool) -> None:
        data = entry.result or {}
        at = entry.result_time if entry.result_time is not None else self.clock()
        await self.outbox.append([events.command_result(entry.id, entry.device, data, at)])
        await self.ledger.mark_sent(entry.id)
        status = data.get("status", "?")
        known = self.targets.command_target(entry.device)[0] is not None
        if not resent:
            metrics.COMMANDS.labels(entry.device if known else UNKNOWN_DEVICE_LABEL,
                                    status).inc()
        log.info("command %s to %s: %s%s%s", data.get("command_id"), entry.device, status,
                 f" ({data['reason']})" if data.get("reason") else "",
                 " (result sent again: the id was seen before)" if resent else "",
                 extra={"event": "command_result", "command_id": data.get("command_id"),
                        "device": entry.device, "status": status, "resent": resent})

    def _log_command(self, command_id: str | None, device: str,
                     values: dict[str, Any]) -> None:
        log.info("command %s to %s: %s", command_id, device, values or "(unreadable)",
                 extra={"event": "command", "command_id": command_id, "device": device,
                        "points": sorted(values)})

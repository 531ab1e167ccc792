"""Waiting on a condition with a timeout, for tests and benchmarks: never a fixed sleep.

The one place such loops live: `wait_for` blocks (threads, subprocess rigs), `until`
runs on the event loop, `succeeds` retries an async action the way the runtime's
backoff would. Each raises TimeoutError naming what was awaited (and, with `detail`,
what was there instead).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

POLL_S = 0.02


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, *,
             interval_s: float = POLL_S, detail: Callable[[], str] | None = None) -> None:
    """Block until `condition()` is true; TimeoutError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise _timeout(what, timeout_s, detail)
        time.sleep(interval_s)


async def until(condition: Callable[[], object], timeout_s: float, what: str, *,
                interval_s: float = POLL_S, detail: Callable[[], str] | None = None) -> None:
    """`wait_for` on the event loop: other tasks run while it waits. The condition may be
    a coroutine function (an HTTP probe, say): its result is awaited."""
    deadline = time.monotonic() + timeout_s
    while not await _holds(condition):
        if time.monotonic() > deadline:
            raise _timeout(what, timeout_s, detail)
        await asyncio.sleep(interval_s)


async def _holds(condition: Callable[[], object]) -> bool:
    result = condition()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)


async def succeeds(attempt: Callable[[], Awaitable[T]], timeout_s: float, what: str, *,
                   retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
                   interval_s: float = 0.2) -> T:
    """The result of the first `attempt()` that does not raise `retry_on`, tried every
    `interval_s`; after `timeout_s` the last error propagates, noted with `what`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await attempt()
        except retry_on as exc:
            if time.monotonic() > deadline:
                exc.add_note(f"{what}: not within {timeout_s}s")
                raise
        await asyncio.sleep(interval_s)


def _timeout(what: str, timeout_s: float, detail: Callable[[], str] | None) -> TimeoutError:
    return TimeoutError(f"{what}: not within {timeout_s}s"
                        + (f"; {detail()}" if detail is not None else ""))

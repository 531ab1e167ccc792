"""An uplink running over a real outbox, for the uplink tests of every cloud bus."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

from gateway.config import StoreSection
from gateway.store import Outbox
from gateway.uplinks import CloudUplink

U = TypeVar("U", bound=CloudUplink)


@contextlib.asynccontextmanager
async def running_uplink(outbox_path: Path,
                         build: Callable[[Outbox], U]) -> AsyncIterator[tuple[U, Outbox]]:
    """A real outbox at `outbox_path` and the uplink `build` makes of it, running."""
    outbox = Outbox(outbox_path, StoreSection(), source_prefix="/lab/gw-test")
    await outbox.open()
    uplink = build(outbox)
    task = asyncio.create_task(uplink.run())
    try:
        yield uplink, outbox
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await outbox.close()

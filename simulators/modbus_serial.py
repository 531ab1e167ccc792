"""A virtual serial line for Modbus RTU without hardware: a socat pty pair.

    async with VirtualSerialPair() as line:
        # serve RTU on line.server_end, connect the driver to line.client_end

Bytes written to one end come out of the other, like two devices on a cable.
Needs `socat` (Debian/Ubuntu package `socat`); `socat_available()` tells.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil

_PTY_LINE = re.compile(rb"PTY is (\S+)")


def socat_available() -> bool:
    return shutil.which("socat") is not None


class VirtualSerialPair:
    """Two connected pseudo-terminals made by a socat child process."""

    def __init__(self, start_timeout_s: float = 10.0) -> None:
        self.start_timeout_s = start_timeout_s
        self.server_end = ""
        self.client_end = ""
        self._process: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[bytes] | None = None

    async def __aenter__(self) -> VirtualSerialPair:
        socat = shutil.which("socat")
        if socat is None:
            raise FileNotFoundError("socat not found; install it (apt-get install socat)")
        self._process = await asyncio.create_subprocess_exec(
            socat, "-d", "-d", "pty,raw,echo=0", "pty,raw,echo=0",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self._process.stderr is not None
        ends: list[str] = []
        try:
            async with asyncio.timeout(self.start_timeout_s):
                while len(ends) < 2:
                    line = await self._process.stderr.readline()
                    if not line:
                        raise RuntimeError("socat exited before creating the pty pair")
                    if match := _PTY_LINE.search(line):
                        ends.append(os.fsdecode(match.group(1)))
                # socat logs the pair before it starts transferring; wait for that too.
                while b"starting data transfer loop" not in line:
                    line = await self._process.stderr.readline()
                    if not line:
                        raise RuntimeError("socat exited before starting to transfer")
        except BaseException:
            await self._stop()
            raise
        self.server_end, self.client_end = ends
        # socat keeps logging to stderr; drain it so the pipe never fills and blocks it.
        self._drain = asyncio.create_task(self._process.stderr.read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop()

    async def _stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            async with asyncio.timeout(5):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()
        drain, self._drain = self._drain, None
        if drain is not None:
            await asyncio.gather(drain, return_exceptions=True)

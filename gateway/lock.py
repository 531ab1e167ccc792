"""One gateway per data directory: an exclusive flock on `<data_dir>/millwright.lock`.

Two `millwright run` processes on one config would both open the outbox, both number
events of the same sources (duplicate (source, seq) pairs) and take turns knocking
each other off the brokers with the same client ids. The runtime takes this lock
before it opens the outbox and holds it for the process's lifetime; a second
process finds it taken and refuses to start with one line naming the data_dir and
the PID written into the file by the holder.

flock, not a PID file checked by hand: the kernel releases the lock when the holder
dies however it dies (kill -9, power loss), so a stale file never blocks a start.
The file itself is left in place (removing it would race with a starting process).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from gateway.errors import MillwrightError, StoreError

LOCK_NAME = "millwright.lock"


class AlreadyRunning(MillwrightError):
    """Another process holds the data directory's lock."""


class InstanceLock:
    """`acquire()` (non-blocking: it fails at once when taken), then `release()` at exit."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write our PID into it; AlreadyRunning when another holds it."""
        if self._fd is not None:
            return
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(
                f"cannot create the lock file {self.path}: {exc.strerror}; check that "
                f"gateway.data_dir ({self.data_dir}) is writable by this user") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"PID {holder}" if holder else "another process"
            raise AlreadyRunning(
                f"another millwright is already running on data_dir {self.data_dir} "
                f"({who} holds {self.path}); stop it first, or give this config its own "
                "gateway.data_dir") from None
        with contextlib.suppress(OSError):  # the PID is for the message only
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None

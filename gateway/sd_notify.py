"""systemd's sd_notify protocol without a dependency: READY, STOPPING, STATUS and the watchdog.

Under a `Type=notify` unit systemd puts a unix datagram socket's address in
$NOTIFY_SOCKET (a path, or an abstract-namespace name when it starts with '@')
and, when `WatchdogSec=` is set, the interval in $WATCHDOG_USEC (microseconds)
and the process it expects pings from in $WATCHDOG_PID. Outside systemd every
function here is a no-op that returns False, so the gateway runs the same way
from a terminal.

The watchdog is pinged by a task on the gateway's event loop, never by a
thread: a loop that is stuck (a blocking call, a busy coroutine) stops the
pings, and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

log = logging.getLogger(__name__)

__all__ = ["notify", "ready", "stopping", "status", "watchdog", "watchdog_interval_s",
           "watchdog_loop"]


def _address() -> str | None:
    """The notify socket address in the form `socket.sendto` takes, or None outside systemd."""
    raw = os.environ.get("NOTIFY_SOCKET", "")
    if raw.startswith("@"):
        # Abstract namespace: the name starts with a NUL byte instead of '@'.
        return "\0" + raw[1:]
    if raw.startswith("/"):
        return raw
    return None


def notify(message: str) -> bool:
    """Send one sd_notify message (e.g. "READY=1"); True when it was handed to systemd.

    Failures are logged, never raised: a lost notification must not take the
    gateway down (systemd will time the start out or restart us, which is the
    right outcome anyway).
    """
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Non-blocking: a full receive queue must never stall the event loop.
            sock.setblocking(False)
            sock.sendto(message.encode("utf-8"), address)
    except OSError as exc:
        log.warning("sd_notify %r to %s failed: %s", message.split("=", 1)[0],
                    os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    """Tell systemd start-up is complete (a Type=notify unit is 'active' from here)."""
    message = "READY=1"
    if status_text:
        message += "\nSTATUS=" + _one_line(status_text)
    return notify(message)


def stopping(status_text: str | None = None) -> bool:
    """Tell systemd the service is shutting down (flushing the outbox may take a while)."""
    message = "STOPPING=1"
    if status_text:
        message += "\nSTATUS=" + _one_line(status_text)
    return notify(message)


def status(text: str) -> bool:
    """A one-line status shown by `systemctl status millwright`."""
    return notify("STATUS=" + _one_line(text))


def watchdog() -> bool:
    """One keep-alive ping; only sent when the watchdog is on and meant for this process."""
    if watchdog_interval_s() is None:
        return False
    return notify("WATCHDOG=1")


def watchdog_interval_s() -> float | None:
    """The watchdog timeout in seconds from $WATCHDOG_USEC, or None when it is off.

    Off when the variable is missing, not a positive integer, or when
    $WATCHDOG_PID names another process (the variables were inherited).
    """
    usec = os.environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    pid = os.environ.get("WATCHDOG_PID", "")
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000


async def watchdog_loop() -> None:
    """Ping the watchdog at half its interval until cancelled; returns at once when it is off.

    Run it as a task on the gateway's loop. Half the interval is what
    sd_watchdog_enabled(3) recommends: one late ping never trips the watchdog,
    a loop stuck for a whole interval does.
    """
    interval = watchdog_interval_s()
    if interval is None:
        return
    log.info("systemd watchdog on: pinging every %.1f s (timeout %.1f s)",
             interval / 2, interval)
    while True:
        watchdog()
        await asyncio.sleep(interval / 2)


def _one_line(text: str) -> str:
    # A newline would start a new key=value assignment in the datagram.
    return " ".join(text.split())

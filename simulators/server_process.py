"""A server in a child process of its own, for the private brokers tests and benchmarks run.

`spawn_listening` starts it (its own session: a Ctrl-C meant for us must not kill it
before we stop it) with its output in a log file, and returns once it accepts TCP
connections on its port; `end` stops it with a signal, SIGKILL after a grace time.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def spawn_listening(argv: list[str], log_path: Path, port: int, what: str,
                    log_tail: Callable[[], str], timeout_s: float = 10.0
                    ) -> subprocess.Popen[bytes]:
    """Start `argv` and wait until 127.0.0.1:`port` accepts; RuntimeError with the log's
    tail when it exits first or does not listen in time."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.02)
    end(proc)
    raise RuntimeError(f"{what} did not listen on {port}: {log_tail()}")


def end(proc: subprocess.Popen[bytes], how: signal.Signals = signal.SIGTERM,
        grace_s: float = 5.0) -> bool:
    """Stop `proc` with `how`, SIGKILL after `grace_s` if it is still there; whether it had
    to be killed."""
    if proc.poll() is None:
        proc.send_signal(how)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return True
    return False

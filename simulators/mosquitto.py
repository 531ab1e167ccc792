"""A private Mosquitto broker on a free loopback port that can be stopped and restarted.

Tests use it as the cloud bus or a plant broker (stopping it simulates an outage),
`millwright demo` and the benchmarks use it when no broker is configured.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from simulators.server_process import end, spawn_listening

INSTALL_HINT = "install it with: apt-get install -y mosquitto"
# A loaded CI machine can take seconds to save the sessions on SIGTERM: wait for it.
STOP_GRACE_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None
    )


class Mosquitto:
    """`with Mosquitto() as broker:` gives a running broker at `broker.url`.

    `stop()` and `start()` keep the port, so clients reconnect to the same URL.
    Extra mosquitto.conf lines (TLS listeners, auth) can be passed in `conf`.
    """

    def __init__(self, port: int | None = None, conf: str = "") -> None:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError(f"mosquitto not found; {INSTALL_HINT}")
        self.binary = binary
        self.port = port or free_port()
        self.extra_conf = conf
        self._dir = Path(tempfile.mkdtemp(prefix="millwright-mosquitto-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self.forced_stops = 0

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        if self.running:
            return
        conf = self._dir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            # Persistence lets a subscriber's session (and what is queued for it)
            # outlive a stop/start, so an outage test can count every message.
            "persistence true\n"
            f"persistence_location {self._dir}/\n"
            # Test and demo subscribers must see every message: no queue or in-flight caps.
            "max_queued_messages 0\n"
            "max_queued_bytes 0\n"
            "max_inflight_messages 0\n"
            "log_type error\nlog_type warning\n"
            # As root, mosquitto would drop to its own user, who cannot write our temp dir.
            + ("user root\n" if os.geteuid() == 0 else "")
            + f"{self.extra_conf}\n"
        )
        self._proc = spawn_listening([self.binary, "-c", str(conf)], self._dir / "mosquitto.log",
                                     self.port, "mosquitto", self.log_tail, timeout_s)

    def stop(self) -> None:
        """SIGTERM: the broker saves its sessions and queued messages, then exits. Killed only
        if it has not exited after `STOP_GRACE_S` (counted in `forced_stops`: what it had
        queued is then lost, which an outage test must not blame on the gateway)."""
        if self._proc is not None and end(self._proc, grace_s=STOP_GRACE_S):
            self.forced_stops += 1
        self._proc = None

    def log_tail(self) -> str:
        path = self._dir / "mosquitto.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

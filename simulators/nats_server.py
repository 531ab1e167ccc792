"""Private nats-server processes with JetStream: one server, or a 3-node cluster on loopback.

Tests and benchmarks use them as the cloud bus; they never touch a NATS already running
on the machine (4222): every server listens on free loopback ports and keeps its
JetStream store in its own temporary directory. `stop()` (SIGTERM), `kill()` (SIGKILL)
and `start()` keep the ports and the store, so a restarted node rejoins its cluster with
its data, and clients reconnect to the same URLs. Extra server config (TLS, accounts)
goes in `conf`.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from simulators.mosquitto import free_port
from simulators.server_process import end, spawn_listening

INSTALL_HINT = "install it with: apt-get install -y nats-server"


def nats_server_binary() -> str | None:
    return shutil.which("nats-server") or next(
        (p for p in ("/usr/sbin/nats-server", "/usr/local/bin/nats-server") if Path(p).exists()),
        None)


class JetStreamServer:
    """`with JetStreamServer() as server:` gives a running server at `server.url`."""

    def __init__(self, name: str = "n0", *, port: int | None = None, conf: str = "",
                 root: Path | None = None, cluster_port: int | None = None,
                 routes: list[int] | None = None) -> None:
        binary = nats_server_binary()
        if binary is None:
            raise RuntimeError(f"nats-server not found; {INSTALL_HINT}")
        self.binary = binary
        self.name = name
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.extra_conf = conf
        self._owns_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="millwright-nats-"))
        self.dir = self.root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _config(self) -> str:
        lines = [f"server_name: {self.name}", f"listen: 127.0.0.1:{self.port}",
                 f"http: 127.0.0.1:{self.monitor_port}",
                 f'jetstream {{ store_dir: "{self.dir / "js"}" }}']
        if self.cluster_port is not None:
            routes = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes)
            lines.append(f"cluster {{ name: millwright-test, listen: 127.0.0.1:"
                         f"{self.cluster_port}, routes: [{routes}] }}")
        return "\n".join(lines) + "\n" + self.extra_conf + "\n"

    def start(self, timeout_s: float = 10.0) -> None:
        if self.running:
            return
        conf = self.dir / "server.conf"
        conf.write_text(self._config())
        self._proc = spawn_listening([self.binary, "-c", str(conf)], self.dir / "server.log",
                                     self.port, "nats-server", self.log_tail, timeout_s)

    def jetstream_ready(self) -> bool:
        """True once this server says JetStream is healthy (in a cluster: it has a leader)."""
        url = f"http://127.0.0.1:{self.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """A clean stop (SIGTERM; SIGKILL after 5 s)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: the node dies as in a crash, with whatever it had not written."""
        self._end(signal.SIGKILL)

    def _end(self, how: signal.Signals) -> None:
        if self._proc is not None:
            end(self._proc, how)
        self._proc = None

    def log_tail(self, chars: int = 2000) -> str:
        """The end of the log, without the retries to reach a route that is down."""
        path = self.dir / "server.log"
        if not path.exists():
            return ""
        lines = [line for line in path.read_text(errors="replace").splitlines()
                 if "Error trying to connect to route" not in line]
        return "\n".join(lines)[-chars:]

    def close(self) -> None:
        self.stop()
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> JetStreamServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JetStreamCluster:
    """`with JetStreamCluster(3) as cluster:` three routed JetStream servers on loopback."""

    def __init__(self, size: int = 3) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="millwright-nats-cluster-"))
        cluster_ports = [free_port() for _ in range(size)]
        self.nodes = [
            JetStreamServer(f"n{i}", root=self.root, cluster_port=cluster_ports[i],
                            routes=[p for j, p in enumerate(cluster_ports) if j != i])
            for i in range(size)]

    @property
    def url(self) -> str:
        """Every node, comma-separated, as `cloud.url` takes a cluster."""
        return ",".join(node.url for node in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def log_tails(self) -> str:
        """The end of each node's log, for a failed test's message."""
        return "\n".join(f"--- {node.name} ---\n{node.log_tail()}" for node in self.nodes)

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> JetStreamCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


"""The edge node's session state: bdSeq (persisted), seq, aliases, which devices are born.

- **bdSeq** numbers the node's MQTT sessions: the NDEATH registered as the will of a
  CONNECT and the NBIRTH that follows it carry the same value, and the next CONNECT uses
  one more (255 wraps to 0; the very first session is 0). It is kept in a small file in
  data_dir (`sparkplug.bdseq`), written atomically (temporary file, fsync, rename, fsync
  of the directory) *before* the CONNECT that uses it, so a kill -9 at any point never
  reuses a value. A damaged file starts the count again at 0, with a warning.
- **seq** runs 0-255 over every message the node sends but NDEATH: the NBIRTH is 0, each
  later message one more, 255 wraps to 0. A rebirth starts again at 0.
- **aliases** are given in the order metrics are first born (node metrics first), never
  reused and unique across the node, so a device born again keeps its aliases.
- **born** is the set of devices whose DBIRTH was sent in this session.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

BDSEQ_FILE = "sparkplug.bdseq"
_BDSEQ_TEXT = re.compile(rb"(\d{1,3})\n?")


class BdSeqFile:
    """The last bdSeq this node used, in `path`. The constructor does no I/O."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def in_dir(cls, data_dir: Path) -> BdSeqFile:
        return cls(data_dir / BDSEQ_FILE)

    def last(self) -> int | None:
        """The bdSeq of the last session, None when there was none (or the file is damaged,
        which is logged)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        match = _BDSEQ_TEXT.fullmatch(raw)
        if match is None or int(match.group(1)) > 255:
            log.warning("sparkplug: %s is damaged (%r); bdSeq starts again at 0. A host may "
                        "take the next NDEATH for an older session's until the next NBIRTH",
                        self.path, raw[:20])
            return None
        return int(match.group(1))

    def advance(self) -> int:
        """The bdSeq for a new session (one more than the last, 255 wraps to 0; 0 for the
        first), on disk before it is returned."""
        last = self.last()
        value = 0 if last is None else (last + 1) % 256
        self._write(value)
        return value

    def _write(self, value: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, f"{value}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


@dataclass(slots=True)
class MetricDef:
    """One metric as its birth describes it."""

    name: str
    alias: int
    datatype: int
    unit: str | None = None
    writable: bool = False


@dataclass(slots=True)
class DeviceDefs:
    """A device's metrics in birth order, with the last value sent for each (a DBIRTH
    carries current values): name -> (value, timestamp ms, quality)."""

    metrics: dict[str, MetricDef] = field(default_factory=dict)
    last: dict[str, tuple[object, int, str]] = field(default_factory=dict)
    inferred: bool = False  # described from a frame, not from a device_birth


class NodeSession:
    """What the node must remember between messages. No I/O but `begin` (bdSeq's file)."""

    def __init__(self, bdseq: BdSeqFile) -> None:
        self.bdseq_file = bdseq
        self.bd_seq: int | None = None  # None until the first session begins
        self._seq = -1  # the seq of the last message sent in this session
        self._next_alias = 1
        self._aliases: dict[tuple[str | None, str], int] = {}
        self.node_metrics: dict[str, MetricDef] = {}
        self.devices: dict[str, DeviceDefs] = {}
        self.born: set[str] = set()
        self.node_born = False

    # -- sessions and seq -------------------------------------------------------------------

    def begin(self) -> int:
        """A new MQTT session is about to CONNECT: its bdSeq (persisted first), for the will's
        NDEATH and the NBIRTH. Nothing is born in the new session yet."""
        self.bd_seq = self.bdseq_file.advance()
        self.rebirth()
        return self.bd_seq

    def rebirth(self) -> None:
        """Births are to be sent again (a new session, or the host's Node Control/Rebirth):
        the next message is the NBIRTH, seq 0; bdSeq is unchanged."""
        self._seq = -1
        self.born.clear()
        self.node_born = False

    def next_seq(self) -> int:
        """The seq of the next message (0-255, wrapping)."""
        self._seq = (self._seq + 1) % 256
        return self._seq

    @property
    def seq(self) -> int | None:
        """The seq of the last message sent in this session (None before the NBIRTH)."""
        return None if self._seq < 0 else self._seq

    # -- aliases ----------------------------------------------------------------------------

    def alias(self, device: str | None, name: str) -> int:
        """The alias of metric `name` of `device` (None: the node), given on first use."""
        key = (device, name)
        alias = self._aliases.get(key)
        if alias is None:
            alias = self._aliases[key] = self._next_alias
            self._next_alias += 1
        return alias

    def define_node_metric(self, name: str, datatype: int) -> MetricDef:
        definition = self.node_metrics.get(name)
        if definition is None or definition.datatype != datatype:
            definition = MetricDef(name, self.alias(None, name), datatype)
            self.node_metrics[name] = definition
        return definition

    def define_device(self, device: str, specs: list[tuple[str, int, str | None, bool]],
                      inferred: bool = False) -> DeviceDefs:
        """(Re)describe `device` with (name, datatype, unit, writable) per metric, keeping the
        aliases (and last values) of metrics it had before; it must be born again."""
        old = self.devices.get(device)
        defs = DeviceDefs(inferred=inferred)
        for name, datatype, unit, writable in specs:
            defs.metrics[name] = MetricDef(name, self.alias(device, name), datatype, unit,
                                           writable)
        if old is not None:
            defs.last = {k: v for k, v in old.last.items() if k in defs.metrics}
        self.devices[device] = defs
        self.born.discard(device)
        return defs

    def by_alias(self) -> dict[int, tuple[str | None, str]]:
        """alias -> (device or None, metric name), for tests and diagnostics."""
        return {alias: key for key, alias in self._aliases.items()}

"""Sparkplug DCMD writes as Millwright commands, and their results as node metrics.

A Sparkplug host writes to a device with a DCMD on `spBv1.0/{group}/DCMD/{node}/{device}`:
metrics by name (or by the alias the DBIRTH gave), each with its new value. The node
turns it into the same `Command` a CloudEvent on `{prefix}/command/{device}` becomes, so
it meets the same path (gateway/command_runner.py): the checks (writable, min/max/allowed,
type, online, age), the ledger (an id runs at most once), `Driver.write`, one
`io.millwright.command_result` through the outbox.

- **time** is the payload's timestamp, which Sparkplug 3.0 requires on a DCMD; without
  one the command's age cannot be checked and it is refused.
- **id**: a DCMD has none, so the node derives it from what the host sent: a hash of the
  device and the payload's bytes. A redelivery of the same message (same timestamp, same
  values) is the same id and does not write twice; a new DCMD carries a new timestamp.
- **The result** travels as node metrics, born in every NBIRTH when commands are on:
  `Commands/last_id`, `Commands/last_device`, `Commands/last_status` and
  `Commands/last_result` (the result's data as JSON: command_id, device, status, reason,
  written, read_back). The new values themselves arrive as the device's next DDATA.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from gateway.commands import Command, Refused
from gateway.sparkplug import datatypes as dt
from gateway.sparkplug.decode import SparkplugError, decode
from gateway.sparkplug.node import DeviceDefs

ID_PREFIX = "spb-dcmd:"
COMMAND_METRICS: tuple[tuple[str, int], ...] = (
    ("Commands/last_id", dt.STRING),
    ("Commands/last_device", dt.STRING),
    ("Commands/last_status", dt.STRING),
    ("Commands/last_result", dt.STRING),
)


def dcmd_id(device: str, payload: bytes) -> str:
    """The command id of a DCMD: the same message always gives the same id."""
    digest = hashlib.blake2b(device.encode() + b"\0" + payload, digest_size=16).hexdigest()
    return ID_PREFIX + digest


def dcmd_command(payload: bytes, device: str, defs: DeviceDefs | None) -> Command:
    """The command a DCMD to `device` asks for; Refused (rejected, "malformed: ...") when it
    is not one. `defs` is the device's birth (None: the node never described it), for
    metrics sent by alias only."""
    command_id = dcmd_id(device, payload)

    def malformed(reason: str) -> Refused:
        return Refused("rejected", f"malformed: {reason}", command_id, device)

    known = {} if defs is None else {m.alias: (m.name, m.datatype)
                                     for m in defs.metrics.values()}
    try:
        decoded = decode(payload, known)
    except SparkplugError as exc:
        raise malformed(f"not a Sparkplug B payload ({exc})") from None
    if decoded["timestamp"] is None:
        raise malformed("the DCMD has no payload timestamp, so its age cannot be checked "
                        "(Sparkplug 3.0 requires one on every DCMD)")
    values: dict[str, bool | int | float | str] = {}
    for metric in decoded["metrics"]:
        name = metric["name"]
        if name is None:
            raise malformed(f"metric alias {metric['alias']} was not born by device "
                            f"'{device}'; name the metric or use an alias from its DBIRTH")
        value = metric["value"]
        if metric["is_null"] or not isinstance(value, bool | int | float | str):
            raise malformed(f"metric '{name[:128]}' has no value Millwright can write "
                            "(null, bytes or a dataset)")
        values[name] = value
    if not values:
        raise malformed("the DCMD carries no metrics")
    return Command(command_id, device, decoded["timestamp"] / 1000.0, values)


def result_metrics(data: dict[str, Any]) -> dict[str, str]:
    """The node metrics that carry one command result (see the module docstring)."""
    return {"Commands/last_id": str(data.get("command_id") or ""),
            "Commands/last_device": str(data.get("device") or ""),
            "Commands/last_status": str(data.get("status") or ""),
            "Commands/last_result": orjson.dumps(data).decode()}

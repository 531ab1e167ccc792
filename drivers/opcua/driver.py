"""The OPC UA driver: one session per device, a subscription (or polling), frames in batches.

connect() builds a fresh asyncua client (auto-reconnect off), opens a session with
the configured security, resolves the points and creates one subscription with a
monitored item per point. The server's publish responses are turned into readings
in the library's publish loop, one frame per source time, and handed over through a
bounded queue (a poll is one frame, the points whose source time differs named in its
`times`): when the
gateway falls behind, the loop waits, the server holds the values in its queues
(queue_size), and nothing is dropped silently on our side.
The subscription and that queue: drivers/opcua/subscription.py.

A lost connection, a subscription the server ended, or a server that stopped
answering publish requests becomes `NotConnected` from read(); the runtime then
calls close() and, after its backoff, connect() again: recovery is a new session
and a new subscription, never a second one beside the old. A node that does not
exist (or cannot be read) is reported once, as a log line, a rejected-count and
one bad reading, and the other points keep flowing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Mapping

from asyncua import Client, ua

from drivers.opcua import session
from drivers.opcua.codec import PointPlan, convert, sample, status_text, type_name, variant_for
from drivers.opcua.config import OpcUaDeviceConfig
from drivers.opcua.node_types import write_types
from drivers.opcua.security import OpcUaRejected
from drivers.opcua.subscription import Subscriber
from gateway import metrics
from gateway.driver import Batch, Driver
from gateway.errors import NotConnected, WriteFailed
from gateway.frames import Frame, PointSpec, Sample, Value, one_frame

log = logging.getLogger(__name__)

QUEUE_BATCHES = 64  # publish responses waiting for read(); beyond this the server holds them
_MISSING = {"BadNodeIdUnknown", "BadNodeIdInvalid", "BadAttributeIdInvalid",
            "BadNotReadable", "BadUserAccessDenied", "BadNotFound"}


class OpcUaDriver(Subscriber, Driver):
    """Frames from one OPC UA server, by subscription or by polling."""

    config_model = OpcUaDeviceConfig
    config: OpcUaDeviceConfig

    def __init__(self, config: OpcUaDeviceConfig) -> None:
        super().__init__(config)
        self._client: Client | None = None
        self._plans: dict[int, PointPlan] = {}  # client handle -> point
        self._polled: list[tuple[ua.NodeId, PointPlan]] = []
        self._queue: asyncio.Queue[list[Frame] | None] = asyncio.Queue(QUEUE_BATCHES)
        self._lost: str | None = None
        self._generation = 0  # callbacks from an earlier session must not touch this one
        self._last_publish = 0.0
        self._stale_after_s = 30.0
        self._reported: set[str] = set()  # points whose problem was already reported
        self._pending: list[Sample] = []  # the one bad value of each newly reported point
        self._types: dict[str, str] = {}  # point -> the OPC UA type its values came in
        self._writable: dict[str, ua.NodeId] = {}  # writable point -> its node
        self._write_types: dict[str, ua.VariantType | str] = {}  # ... -> variant type, or why not
        self.subscription_id: int | None = None

    @property
    def poll_interval_s(self) -> float | None:
        return self.config.poll_interval_s if self.config.mode == "poll" else None

    # -- lifecycle ---------------------------------------------------------------------

    async def connect(self) -> None:
        await self.close()
        self._queue = asyncio.Queue(QUEUE_BATCHES)
        self._lost = None
        self._generation += 1
        client = await session.new_client(self.config)
        try:
            await session.secure(client, self.config)
            await client.connect()
            client.connection_lost_callback = functools.partial(
                self._on_connection_lost, self._generation)
            self._client = client
            points = await session.resolve(client, self.config)
            for rp in points:
                if rp.problem is not None:
                    self._report(rp.point.name, rp.problem, "node_unknown")
            self._plans = {rp.index + 1: PointPlan(self.config.name, rp.point.name, rp.unit)
                           for rp in points if rp.node is not None}
            self._writable = {rp.point.name: rp.node for rp in points
                              if rp.node is not None and rp.point.writable}
            self._write_types = await write_types(client, self._writable)
            nodes = {rp.index + 1: rp.node for rp in points if rp.node is not None}
            if self.config.mode == "subscribe":
                await self._subscribe(client, nodes)
            else:
                self._polled = [(node, self._plans[h]) for h, node in nodes.items()]
        except BaseException as exc:
            self._client = None
            await self._teardown(client)
            if isinstance(exc, Exception):
                raise session.translate(exc, self.config) from exc
            raise

    async def read(self) -> Batch:
        """Subscription mode: the notifications of the next publish responses."""
        if self._client is None:
            raise NotConnected(f"{self.config.endpoint}: not connected")
        return await self._next_notifications()

    async def close(self) -> None:
        client, self._client = self._client, None
        self.subscription_id = None
        if client is not None:
            await self._teardown(client)

    async def _on_connection_lost(self, generation: int, exc: Exception) -> None:
        if generation != self._generation:
            return
        self._mark_lost(f"connection to {self.config.endpoint} lost: "
                        f"{str(exc) or type(exc).__name__}")

    # -- polling ------------------------------------------------------------------------

    async def poll(self) -> Batch:
        """Poll mode: read every point once, now."""
        client = self._client
        if client is None:
            raise NotConnected(f"{self.config.endpoint}: not connected")
        if self._lost is not None:
            raise NotConnected(self._lost)
        samples = self._take_pending()
        problems: dict[str, str] = {}
        missing: list[int] = []
        try:
            for start in range(0, len(self._polled), session.MAX_PER_REQUEST):
                chunk = self._polled[start:start + session.MAX_PER_REQUEST]
                values = await client.uaclient.read(ua.ReadParameters(
                    MaxAge=0, TimestampsToReturn=ua.TimestampsToReturn.Both,
                    NodesToRead=[ua.ReadValueId(NodeId=node, AttributeId=ua.AttributeIds.Value)
                                 for node, _ in chunk]))
                for offset, ((_, plan), dv) in enumerate(zip(chunk, values, strict=True)):
                    if dv.StatusCode is not None and status_text(dv.StatusCode) in _MISSING:
                        missing.append(start + offset)
                        self._report(plan.name, f"cannot be read ({status_text(dv.StatusCode)})",
                                     "node_unknown")
                        continue
                    samples.append(self._sample(plan, dv, problems))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise session.translate(exc, self.config) from exc
        for index in reversed(missing):
            del self._polled[index]
        for point, problem in problems.items():
            self._report(point, problem, "unsupported_type")
        samples.extend(self._take_pending())
        return Batch([one_frame(self.config.name, samples, time.time())])

    def describe(self, device: str) -> list[PointSpec]:
        """Units as the server gives them (unless configured), types as its values came."""
        units = {plan.name: plan.unit for plan in self._plans.values()}
        return [PointSpec(p.name, self._types.get(p.name), p.unit or units.get(p.name),
                          p.writable)
                for p in self.config.points]

    # -- commands -------------------------------------------------------------------------

    async def write(self, values: Mapping[str, Value]) -> dict[str, Value]:
        """Write every value with its node's data type in one Write call, read back in one Read.

        The variant type comes from each node's DataType attribute, read at connect (a
        Python float sent to a Float node would be refused as BadTypeMismatch). A value
        that does not fit the type fails the command before anything is sent; a node
        the server refuses (BadUserAccessDenied, BadNotWritable, BadOutOfRange...) makes
        WriteFailed with its status name, the other nodes of the call being written.
        """
        client = self._client
        if client is None:
            raise NotConnected(f"{self.config.endpoint}: not connected")
        if self._lost is not None:
            raise NotConnected(self._lost)
        items: list[tuple[str, ua.NodeId, ua.Variant]] = []
        for name, value in values.items():
            node = self._writable.get(name)
            if node is None:
                raise WriteFailed(f"point '{name}' of device '{self.name}' is not a writable "
                                  "point found on the server")
            vtype = self._write_types.get(name, "the server did not tell the node's data type")
            if isinstance(vtype, str):
                raise WriteFailed(f"point '{name}': {vtype}; nothing was written")
            try:
                items.append((name, node, variant_for(value, vtype)))
            except ValueError as exc:
                raise WriteFailed(f"point '{name}': {exc}; nothing was written") from None
        if not items:
            return {}
        try:
            statuses = await client.uaclient.write(ua.WriteParameters(NodesToWrite=[
                ua.WriteValue(NodeId=node, AttributeId=ua.AttributeIds.Value,
                              Value=ua.DataValue(variant))
                for _, node, variant in items]))
            answers = await client.uaclient.read(ua.ReadParameters(
                MaxAge=0, TimestampsToReturn=ua.TimestampsToReturn.Neither,
                NodesToRead=[ua.ReadValueId(NodeId=node, AttributeId=ua.AttributeIds.Value)
                             for _, node, _ in items]))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise session.translate(exc, self.config) from exc
        refused = [f"'{name}' {status_text(status)}"
                   for (name, _, _), status in zip(items, statuses, strict=True)
                   if not status.is_good()]
        if refused:
            written = [name for (name, _, _), status in zip(items, statuses, strict=True)
                       if status.is_good()]
            raise WriteFailed(f"{self.config.endpoint} refused the write of "
                              f"{', '.join(refused)}; "
                              + (f"written: {', '.join(written)}" if written
                                 else "nothing was written"))
        read_back: dict[str, Value] = {}
        for (name, _, _), dv in zip(items, answers, strict=True):
            good = dv.StatusCode is None or dv.StatusCode.is_good()
            read_back[name] = convert(dv.Value)[0] if good else None
        return read_back

    def _sample(self, plan: PointPlan, dv: ua.DataValue, problems: dict[str, str]) -> Sample:
        kind = type_name(dv)
        if kind is not None:
            self._types[plan.name] = kind
        return sample(plan, dv, problems)

    # -- reporting and teardown -------------------------------------------------------------

    def _report(self, point: str, problem: str, reason: str) -> None:
        """Log a point's problem once per driver, count it, and emit one bad value for it."""
        if point in self._reported:
            return
        self._reported.add(point)
        log.warning("device %s point %s: %s; the other points keep flowing",
                    self.config.name, point, problem)
        metrics.DEVICE_REJECTED.labels(self.config.name, reason).inc()
        self._pending.append(Sample(point, None, "bad"))

    def _take_pending(self) -> list[Sample]:
        pending, self._pending = self._pending, []
        return pending

    async def _teardown(self, client: Client) -> None:
        """Close the session (and its subscription) if the server still listens; never raises."""
        client.connection_lost_callback = None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.config.request_timeout_s):
                if self._lost is None:
                    await client.disconnect()
                else:
                    # The server is gone: stop asyncua's tasks and drop the socket.
                    await client.close_session()
        with contextlib.suppress(Exception):
            client.disconnect_socket()


__all__ = ["OpcUaDriver", "OpcUaRejected"]

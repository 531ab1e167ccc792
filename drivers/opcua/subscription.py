"""The OPC UA driver's subscription: monitored items in, publish responses queued as frames.

A base of OpcUaDriver (drivers/opcua/driver.py), kept apart so each stays small: the
driver sets up every attribute declared below in its __init__ and connect(), and
provides the reporting (`_report`, `_sample`, `_take_pending`) shared with polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time

from asyncua import Client, ua

from drivers.opcua import session
from drivers.opcua.codec import PointPlan, status_text
from drivers.opcua.config import OpcUaDeviceConfig
from gateway.driver import Batch
from gateway.errors import NotConnected
from gateway.frames import Frame, Sample, frames_by_time, one_frame

MAX_BATCH = 10_000  # values handed to the runtime at once
KEEPALIVE_S = 5.0  # the server sends at least this often, even when nothing changes


class Subscriber:
    """OpcUaDriver's subscription mode: `_subscribe` at connect, `_next_notifications` in read()."""

    config: OpcUaDeviceConfig
    subscription_id: int | None
    _plans: dict[int, PointPlan]
    _queue: asyncio.Queue[list[Frame] | None]
    _lost: str | None
    _generation: int
    _last_publish: float
    _stale_after_s: float

    def _report(self, point: str, problem: str, reason: str) -> None:
        raise NotImplementedError

    def _sample(self, plan: PointPlan, dv: ua.DataValue, problems: dict[str, str]) -> Sample:
        raise NotImplementedError

    def _take_pending(self) -> list[Sample]:
        raise NotImplementedError

    async def _subscribe(self, client: Client, nodes: dict[int, ua.NodeId]) -> None:
        cfg = self.config
        keepalive = max(1, round(KEEPALIVE_S * 1000 / cfg.publishing_interval_ms))
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=cfg.publishing_interval_ms,
            # The server may end the subscription after six unanswered keep-alives.
            RequestedLifetimeCount=keepalive * 6,
            RequestedMaxKeepAliveCount=keepalive,
            MaxNotificationsPerPublish=MAX_BATCH,
            PublishingEnabled=True,
            Priority=0,
        )
        result = await client.uaclient.create_subscription(
            params, functools.partial(self._on_publish, self._generation))
        self.subscription_id = result.SubscriptionId
        self._last_publish = time.monotonic()
        keepalive_s = result.RevisedPublishingInterval * result.RevisedMaxKeepAliveCount / 1000
        self._stale_after_s = max(3 * keepalive_s, 3 * cfg.request_timeout_s, 5.0)
        handles = list(nodes)
        for start in range(0, len(handles), session.MAX_PER_REQUEST):
            chunk = handles[start:start + session.MAX_PER_REQUEST]
            request = ua.CreateMonitoredItemsParameters(
                SubscriptionId=result.SubscriptionId,
                TimestampsToReturn=ua.TimestampsToReturn.Both,
                ItemsToCreate=[self._item(handle, nodes[handle]) for handle in chunk],
            )
            outcomes = await client.uaclient.create_monitored_items(request)
            for handle, outcome in zip(chunk, outcomes, strict=True):
                if not outcome.StatusCode.is_good():
                    plan = self._plans.pop(handle)
                    self._report(plan.name, session.monitor_problem(
                        self.config.points[handle - 1], outcome.StatusCode), "node_unknown")

    def _item(self, handle: int, node: ua.NodeId) -> ua.MonitoredItemCreateRequest:
        cfg, point = self.config, self.config.points[handle - 1]
        sampling = point.sampling_interval_ms
        if sampling is None:
            sampling = cfg.sampling_interval_ms
        if sampling is None:
            sampling = -1  # OPC UA: "the publishing interval"
        flt = None
        if point.deadband is not None:
            flt = ua.DataChangeFilter(
                Trigger=ua.DataChangeTrigger.StatusValue,
                DeadbandType=(ua.DeadbandType.Absolute if point.deadband_type == "absolute"
                              else ua.DeadbandType.Percent),
                DeadbandValue=point.deadband,
            )
        return ua.MonitoredItemCreateRequest(
            ItemToMonitor=ua.ReadValueId(NodeId=node, AttributeId=ua.AttributeIds.Value),
            MonitoringMode=ua.MonitoringMode.Reporting,
            RequestedParameters=ua.MonitoringParameters(
                ClientHandle=handle, SamplingInterval=sampling, Filter=flt,
                QueueSize=point.queue_size or cfg.queue_size, DiscardOldest=True,
            ),
        )

    async def _on_publish(self, generation: int, result: ua.PublishResult) -> None:
        """Runs in asyncua's publish loop: convert, then wait for room (back-pressure)."""
        if generation != self._generation:
            return
        self._last_publish = time.monotonic()
        data = result.NotificationMessage.NotificationData
        if not data:
            return  # a keep-alive
        now = time.time()
        problems: dict[str, str] = {}
        samples: list[Sample] = []
        plans = self._plans
        for notification in data:
            if isinstance(notification, ua.DataChangeNotification):
                for item in notification.MonitoredItems:
                    plan = plans.get(item.ClientHandle)
                    if plan is not None and item.Value is not None:
                        samples.append(self._sample(plan, item.Value, problems))
            elif isinstance(notification, ua.StatusChangeNotification):
                self._mark_lost(f"subscription ended by {self.config.endpoint} "
                                f"({status_text(notification.Status)})")
        for point, problem in problems.items():
            self._report(point, problem, "unsupported_type")
        if samples:
            await self._queue.put(frames_by_time(self.config.name, samples, now))

    def _mark_lost(self, reason: str) -> None:
        if self._lost is None:
            self._lost = reason
        # Wake a read() waiting on an empty queue; a full queue wakes it by itself.
        with contextlib.suppress(asyncio.QueueFull):
            self._queue.put_nowait(None)

    async def _next_notifications(self) -> Batch:
        pending = self._take_pending()
        frames = [one_frame(self.config.name, pending, time.time())] if pending else []
        while not frames:
            if self._queue.empty() and self._lost is not None:
                raise NotConnected(self._lost)
            try:
                async with asyncio.timeout(self._stale_after_s):
                    first = await self._queue.get()
            except TimeoutError:
                if time.monotonic() - self._last_publish > self._stale_after_s:
                    raise NotConnected(f"{self.config.endpoint} sent nothing, not even a "
                                       f"keep-alive, for {self._stale_after_s:.0f} s") from None
                continue
            if first is None:
                continue  # the loss marker: the top of the loop raises once the queue is empty
            frames = first
        # Hand over everything already waiting, so commits stay large under load.
        while sum(len(f.values) for f in frames) < MAX_BATCH and not self._queue.empty():
            more = self._queue.get_nowait()
            if more is None:
                break
            frames.extend(more)
        return Batch(frames)

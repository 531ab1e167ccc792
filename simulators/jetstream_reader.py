"""The cloud side of a JetStream stream, for tests and benchmarks: what it holds, read back.

`read_stream` reads every message of a stream matching a subject filter with an
ephemeral pull consumer (acknowledgement none: reading changes nothing), and returns
each message's subject, `Nats-Msg-Id` and decoded CloudEvent, in stream order.
`stream_counts` is the cheap question: messages per subject, from the stream's info.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

FETCH_BATCH = 1_000


async def _quiet(exc: Exception) -> None:
    """nats-py's default error callback prints a traceback for every refused connection."""


async def _connect(url: str) -> nats.NATS:
    return await nats.connect(url.split(","), connect_timeout=5, error_cb=_quiet)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    subject: str
    msg_id: str | None
    event: dict[str, Any]


async def read_stream(url: str, stream: str, subjects: str = ">",
                      timeout_s: float = 60.0) -> list[StoredEvent]:
    """Every message of `stream` on `subjects`, oldest first."""
    client = await _connect(url)
    try:
        js = client.jetstream(timeout=10)
        info = await js.stream_info(stream, subjects_filter=subjects)
        total = sum((info.state.subjects or {}).values())
        subscription = await js.pull_subscribe(
            subjects, stream=stream, config=ConsumerConfig(
                ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL,
                inactive_threshold=30.0))
        out: list[StoredEvent] = []
        async with asyncio.timeout(timeout_s):
            while len(out) < total:
                try:
                    messages = await subscription.fetch(FETCH_BATCH, timeout=1.0)
                except nats.errors.TimeoutError:
                    break  # nothing more matches the filter
                for message in messages:
                    headers = message.headers or {}
                    out.append(StoredEvent(message.subject, headers.get("Nats-Msg-Id"),
                                           json.loads(message.data)))
        await subscription.unsubscribe()
        return out
    finally:
        await client.close()


async def stream_counts(url: str, stream: str, subjects: str = ">") -> dict[str, int]:
    """Messages per subject of `stream` (on `subjects`), from the stream's info."""
    client = await _connect(url)
    try:
        info = await client.jetstream(timeout=10).stream_info(stream, subjects_filter=subjects)
        return dict(info.state.subjects or {})
    finally:
        await client.close()


async def create_stream(url: str, stream: str, subjects: list[str], *,
                        replicas: int = 1, duplicate_window_s: float = 120.0) -> None:
    """Create a stream as an operator would (tests whose gateway must find it there)."""
    client = await _connect(url)
    try:
        await client.jetstream(timeout=10).add_stream(
            name=stream, subjects=subjects, num_replicas=replicas,
            duplicate_window=duplicate_window_s)
    finally:
        await client.close()

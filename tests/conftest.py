"""Shared fixtures: private Mosquitto brokers and nats-servers on free ports, cloud-side
listeners, the counter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import drivers
from simulators.cloud_listener import CloudListener
from simulators.mosquitto import Mosquitto
from simulators.nats_server import JetStreamCluster, JetStreamServer
from tests.support import counter_driver


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A running private broker (the cloud bus); `.stop()`/`.start()` simulate an outage."""
    with Mosquitto() as broker:
        yield broker


@pytest.fixture
def plant_broker() -> Iterator[Mosquitto]:
    """A second private broker, standing for the plant-floor broker."""
    with Mosquitto() as broker:
        yield broker


@pytest.fixture
def cloud(mosquitto: Mosquitto) -> Iterator[CloudListener]:
    """A subscriber on the cloud broker collecting every event the gateway publishes."""
    with CloudListener(mosquitto.url) as listener:
        yield listener


@pytest.fixture
def counter_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test-only `counter` protocol in the driver registry, for this test only."""
    monkeypatch.setitem(drivers.REGISTRY, counter_driver.PROTOCOL,
                        f"{counter_driver.__name__}:CounterDriver")


@pytest.fixture
def jetstream() -> Iterator[JetStreamServer]:
    """A private nats-server with JetStream (never the machine's own on 4222)."""
    with JetStreamServer() as server:
        yield server


@pytest.fixture(scope="module")
def jetstream_cluster() -> Iterator[JetStreamCluster]:
    """Three routed JetStream servers on loopback, shared by a module's tests (each uses a
    stream of its own); a test that kills or stops nodes starts them again."""
    with JetStreamCluster(3) as cluster:
        yield cluster

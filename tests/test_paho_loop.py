"""The paho bridge (gateway/paho_loop.py) against a real Mosquitto: what outlives its loop."""

from __future__ import annotations

import asyncio
import gc

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.paho_loop import PahoLoop
from simulators.mosquitto import Mosquitto
from simulators.wait import until


def test_a_client_collected_after_its_loop_closed_leaves_the_loop_alone(
        mosquitto: Mosquitto) -> None:
    # A connection that was never closed (a test that forgot, a loop stopped under it):
    # its client closes the socket when collected, later, and paho then calls the bridge's
    # socket callbacks. Those must not touch the closed loop; pytest turns what a __del__
    # raises into a failure of this test (filterwarnings = error).
    left: list[mqtt.Client] = []

    async def connect_and_walk_away() -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="left-behind")
        bridge = PahoLoop(client, progress=lambda: 0)
        await bridge.open(lambda: client.connect("127.0.0.1", mosquitto.port, 60))
        await until(lambda: bridge.attached, 10, "the socket watched by the loop")
        left.append(client)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(connect_and_walk_away())
    finally:
        loop.close()  # its keepalive task still pending, as when a loop is stopped under it
    left.clear()
    gc.collect()  # the client, its bridge and their cycle go now, not in some later test

"""Sparkplug B wire bytes per reading, for the frames benchmark's 100-point device.

The same device as bench/frames.py (60 float32 values drifting slowly, 25 scaled int16,
10 counters, 5 booleans; ISA-style tags), born the way its Modbus driver describes it
(`float32`, `int16`, `uint32`, `bool`), one poll a second. Each frame goes through the
real translation (gateway/sparkplug/translate.py) into a DDATA with aliases, and the size
counted is the whole MQTT 3.1.1 PUBLISH packet at QoS 1 (fixed header, topic, packet id,
payload): what the broker receives. No broker is needed; the arithmetic is MQTT's.

Beside it, in the same run: the CloudEvents JSON of the same frames in the same kind of
packet (bench/frames.py measures that path through a real broker: ~20.6 B), the values
alone, packed (the raw limit), the DDATA as `[cloud.sparkplug] compression = "deflate"`
sends it (deflated inside a payload of Eclipse Tahu's compressed-payload convention,
gateway/sparkplug/compression.py), and, to show where the bytes go, the DDATA without its
per-metric timestamps (not sent: 7 B each, which the spec requires,
tck-id-payloads-name-birth-data-requirement).

`python -m bench.sparkplug_bytes [--quick]`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import orjson

from bench.core import figure
from bench.frames import RAW_BYTES_PER_READING, SOURCE, Device
from gateway import events
from gateway.frames import PointSpec
from gateway.sparkplug import sparkplug_b_pb2 as pb
from gateway.sparkplug.compression import wrap
from gateway.sparkplug.node import BdSeqFile, NodeSession
from gateway.sparkplug.translate import Translator

T0 = 1_790_000_000.0
WARM_UP = 10
DRIVER_TYPES = {"analog": "float32", "scaled": "int16", "counter": "uint32", "flag": "bool"}


def publish_bytes(topic: str, payload: bytes, qos: int = 1) -> int:
    """The size of an MQTT 3.1.1 PUBLISH packet carrying `payload` on `topic`."""
    variable = 2 + len(topic.encode()) + (2 if qos else 0) + len(payload)
    length, n = 1, variable
    while n >= 128:
        n //= 128
        length += 1
    return 1 + length + variable


def main(quick: bool) -> list[dict[str, Any]]:
    frames = 120 if quick else 600
    device = Device()
    points = [PointSpec(name, DRIVER_TYPES[kind]) for name, kind in device.points]
    with tempfile.TemporaryDirectory(prefix="mw-bench-spb-") as tmp:
        session = NodeSession(BdSeqFile.in_dir(Path(tmp)))
        translator = Translator(session, "plant-a", "line-1", clock=lambda: T0)
        session.begin()
        translator.births()
        translator.translate(_stored(events.device_birth("press-1", points, at=T0)))
        made = [device.frame(T0 + 1 + i) for i in range(WARM_UP + frames)]
        # A scaled int16 point is reborn as Float at its first fraction (a once-per-session
        # cost): the first frames are left out; a rebirth after them is counted.
        for frame in made[:WARM_UP]:
            translator.translate(_stored(events.telemetry(frame)))
        spb = bare = deflated = json_bytes = readings = 0
        for frame in made[WARM_UP:]:
            event = events.telemetry(frame)
            *births, message = translator.translate(_stored(event))
            spb += sum(publish_bytes(m.topic, m.payload) for m in [*births, message])
            stripped = pb.Payload.FromString(message.payload)
            for metric in stripped.metrics:
                metric.ClearField("timestamp")
            bare += publish_bytes(message.topic, stripped.SerializeToString())
            # As the uplink sends it with compression = "deflate" (births stay plain).
            deflated += sum(publish_bytes(m.topic, m.payload) for m in births)
            deflated += publish_bytes(message.topic, wrap(message.payload, message.seq,
                                                          int(T0 * 1000)))
            json_bytes += publish_bytes("millwright/plant-a/line-1/telemetry/press-1",
                                        event.encode(SOURCE, 1).encode())
            readings += len(frame.values)
    return [
        figure("wire_bytes_per_reading_sparkplug_ddata_1s_poll", spb / readings,
               RAW_BYTES_PER_READING, "B/reading", "<= 12 B", 2),
        figure("wire_bytes_per_reading_cloudevents_json_same_frames", json_bytes / readings,
               RAW_BYTES_PER_READING, "B/reading", "<= 25 B", 2),
        figure("wire_bytes_per_reading_sparkplug_without_metric_timestamps", bare / readings,
               RAW_BYTES_PER_READING, "B/reading", "(not sent: the spec requires them)", 2),
        figure("wire_bytes_per_reading_sparkplug_ddata_deflate", deflated / readings,
               RAW_BYTES_PER_READING, "B/reading", "<= 12 B (compression = \"deflate\")", 2),
    ]


def _stored(event: events.Event) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(event.encode(SOURCE, 1))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    for result in main(parser.parse_args().quick):
        print(json.dumps(result))

"""Compressed Sparkplug payloads, in the convention of Eclipse Tahu (the reference implementation).

The 3.0 specification defines no compression; Tahu and the hosts built on it (Ignition's
MQTT Engine among them) read this wrapping, which is what `[cloud.sparkplug] compression =
"deflate"` sends:

- an outer Payload whose `uuid` is `SPBV1.0_COMPRESSED`,
- whose `body` is the inner Payload's bytes compressed: `DEFLATE` is the zlib stream format
  (RFC 1950, as java.util.zip.Deflater writes by default), `GZIP` the gzip format,
- with one metric `algorithm` (String) naming which; a wrapper without it means DEFLATE,
- and the inner payload's `seq` (Tahu copies it; a host checks seq before it unwraps).

`wrap` makes one (DEFLATE); `unwrap` reads both algorithms, refusing a body that would
inflate past `max_bytes` (a small message must not be able to claim gigabytes).
"""

from __future__ import annotations

import zlib

from gateway.sparkplug import datatypes as dt
from gateway.sparkplug import sparkplug_b_pb2 as pb

COMPRESSED_UUID = "SPBV1.0_COMPRESSED"
ALGORITHM = "algorithm"
_WBITS = {"DEFLATE": zlib.MAX_WBITS, "GZIP": zlib.MAX_WBITS | 16}


class CompressionError(ValueError):
    """A wrapper that cannot be unwrapped (unknown algorithm, damaged or oversized body)."""


def wrap(inner: bytes, seq: int | None, timestamp_ms: int, level: int = 6) -> bytes:
    """`inner` (a serialised Payload) DEFLATE-compressed inside a Tahu wrapper."""
    outer = pb.Payload(timestamp=timestamp_ms, uuid=COMPRESSED_UUID,
                       body=zlib.compress(inner, level))
    outer.metrics.add(name=ALGORITHM, timestamp=timestamp_ms, datatype=dt.STRING,
                      string_value="DEFLATE")
    if seq is not None:
        outer.seq = seq
    return outer.SerializeToString()


def is_wrapped(payload: pb.Payload) -> bool:
    return payload.HasField("uuid") and payload.uuid == COMPRESSED_UUID


def unwrap(outer: pb.Payload, max_bytes: int) -> tuple[bytes, str]:
    """(the inner payload's bytes, the algorithm) of a wrapper (`is_wrapped`)."""
    algorithm = "DEFLATE"
    for metric in outer.metrics:
        if metric.name == ALGORITHM and metric.WhichOneof("value") == "string_value":
            algorithm = metric.string_value.upper()
    wbits = _WBITS.get(algorithm)
    if wbits is None:
        raise CompressionError(f"compressed payload: unknown algorithm {algorithm!r} "
                               "(DEFLATE and GZIP are read)")
    inflater = zlib.decompressobj(wbits)
    try:
        inner = inflater.decompress(outer.body, max_bytes)
    except zlib.error as exc:
        raise CompressionError(f"compressed payload: the {algorithm} body is damaged: "
                               f"{exc}") from None
    if inflater.unconsumed_tail:
        raise CompressionError(f"compressed payload inflates past {max_bytes} bytes")
    if not inflater.eof:
        raise CompressionError(f"compressed payload: the {algorithm} body is truncated")
    return inner, algorithm

"""A broker that never acknowledges: takes CONNECT, answers CONNACK, never PUBACKs a QoS 1 publish.

A minimal asyncio MQTT server (3.1.1 and 5) for the one misbehaviour a real broker
will not play on request: a link where publishes vanish and no PUBACK ever comes
(a half-dead TCP path, a wedged broker). It answers PINGREQ, so keepalive alone
never notices. `async with SilentBroker() as broker:` gives `broker.url`;
`connections` and `publishes` count what it saw.
"""

from __future__ import annotations

import asyncio
import contextlib

CONNECT, CONNACK, PUBLISH, PINGREQ, PINGRESP, DISCONNECT = 1, 2, 3, 12, 13, 14


class SilentBroker:
    """Listens on 127.0.0.1 (port 0: a free one); see the module docstring."""

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self.connections = 0
        self.publishes = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._port, "not started"
        return self._port

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    async def __aenter__(self) -> SilentBroker:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self._port)
        self._port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                while True:
                    first = (await reader.readexactly(1))[0]
                    body = await reader.readexactly(await _remaining_length(reader))
                    kind = first >> 4
                    if kind == CONNECT:
                        self.connections += 1
                        # The protocol level follows the protocol name ("MQTT"): 5 takes
                        # an (empty) property length after the flags and return code.
                        v5 = len(body) > 6 and body[6] == 5
                        writer.write(bytes([CONNACK << 4, 3, 0, 0, 0]) if v5
                                     else bytes([CONNACK << 4, 2, 0, 0]))
                    elif kind == PUBLISH:
                        self.publishes += 1  # and no PUBACK, whatever its QoS
                    elif kind == PINGREQ:
                        writer.write(bytes([PINGRESP << 4, 0]))
                    elif kind == DISCONNECT:
                        break
                    await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.transport.abort()


async def _remaining_length(reader: asyncio.StreamReader) -> int:
    value, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value
        shift += 7
        if shift > 21:
            raise ConnectionError("malformed remaining length")

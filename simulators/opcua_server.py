"""The plant's machines as an OPC UA server (asyncua), with optional security and fault switches.

Address space (documented in drivers/opcua/README.md): namespace `urn:millwright:machines`
(index 2), one object per machine under Objects, named after the machine in PascalCase
(`mill-2` -> `Mill2`, node id `ns=2;s=Mill2`), holding typed variables with engineering
units (`ns=2;s=Mill2.VibrationRms`, browse path `/2:Mill2/2:VibrationRms`).

Values come from `simulators.plant.Plant`: every plant tick marks the view dirty and
one writer task copies the latest samples into the server (coalesced: a slow write
never queues up ticks). Each value carries the wall-clock time of the tick as its
SourceTimestamp.

Writes: each machine's `SpeedSetpoint` (Double, rpm, `ns=2;s=Press1.SpeedSetpoint`) is
writable; a client's write sets the machine's speed and wear rate. A value outside
0-1800 rpm is accepted by the server but ignored by the machine, and the variable
returns to the setpoint in force (as a drive clamps a bad setpoint). The other variables
are read-only: a write to them is refused with BadUserAccessDenied.

Fault switches: `restart()` (a new server on the same port: sessions and
subscriptions are gone, as after a real power cycle), `stop()`/`start()`, and
`set_status(machine, variable, "BadSensorFailure")` to serve a bad (or uncertain)
status code on one variable until it is cleared with `None`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.callback import CallbackType
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions

from simulators.opcua_space import (
    NAMESPACE_URI,
    SETPOINT,
    VARIABLE_NAMES,
    VARIABLES,
    browse_path,
    node_id,
    object_name,
    populate,
)
from simulators.plant import Plant

__all__ = ["APPLICATION_URI", "ENDPOINT_PATH", "NAMESPACE_URI", "VARIABLE_NAMES",
           "OpcUaSimulator", "SimSecurity", "browse_path", "node_id", "object_name"]

log = logging.getLogger(__name__)

APPLICATION_URI = "urn:millwright:simulator"
ENDPOINT_PATH = "/millwright/"
STOP_TIMEOUT_S = 10.0  # a stop that takes longer cuts the connections (see `stop`)
_GOOD = ua.StatusCode(ua.StatusCodes.Good)


@dataclass(frozen=True, slots=True)
class SimSecurity:
    """The simulator's secure endpoints.

    policies: `ua.SecurityPolicyType` member names, e.g. "Basic256Sha256_SignAndEncrypt",
    "Aes256Sha256RsaPss_Sign". Add "NoSecurity" to also offer an open endpoint.
    trusted_clients_dir: when set, only client certificates found there are accepted
    (otherwise asyncua accepts any client certificate).
    """

    certificate: Path
    private_key: Path
    policies: tuple[str, ...] = ("Basic256Sha256_SignAndEncrypt", "Basic256Sha256_Sign")
    trusted_clients_dir: Path | None = None
    application_uri: str = APPLICATION_URI


class _Users:
    """asyncua user manager: username/password from a dict; anything else is refused."""

    def __init__(self, users: Mapping[str, str]) -> None:
        self._users = dict(users)

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> User | None:
        if username is not None and self._users.get(username) == password:
            return User(role=UserRole.User, name=username)
        return None


class OpcUaSimulator:
    """`async with OpcUaSimulator() as sim:` serves the plant at `sim.endpoint`.

    plant: served machines; None makes a default `Plant()` and runs it here (a passed
    plant is run by the caller). port 0 picks a free port, kept across restarts.
    users: username -> password; when set, anonymous sessions are refused.
    load_variables: extra Double variables `ns=2;s=Load.V0000`... for load tests,
    written by `write_load()`.
    """

    def __init__(self, plant: Plant | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 security: SimSecurity | None = None, users: Mapping[str, str] | None = None,
                 load_variables: int = 0,
                 served: list[tuple[str, str, float, Any]] | None = None) -> None:
        self._owns_plant = plant is None
        self.plant = plant if plant is not None else Plant()
        self.host = host
        self.port = port
        self.security = security
        self.users = dict(users) if users is not None else None
        self.load_variables = load_variables
        # When given, every value written is recorded here as (machine, variable, source
        # time, value): the ground truth for tests that check what reached the cloud.
        self.served = served
        self.namespace_index = 2
        self._server: Server | None = None
        self._statuses: dict[tuple[str, str], ua.StatusCode] = {}
        self._dirty = asyncio.Event()
        self._lock = asyncio.Lock()  # writes never interleave with a stop or a restart
        self._tasks: list[asyncio.Task[None]] = []
        self._load_ids: list[ua.NodeId] = []
        self.plant.on_tick(self._on_tick)

    # -- lifecycle ---------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        if not self.port:
            raise RuntimeError("the simulator has not been started yet")
        return f"opc.tcp://{self.host}:{self.port}{ENDPOINT_PATH}"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def __aenter__(self) -> OpcUaSimulator:
        await self.start()
        self._tasks.append(asyncio.create_task(self._writer(), name="opcua-sim-writer"))
        if self._owns_plant:
            self._tasks.append(asyncio.create_task(self.plant.run(), name="opcua-sim-plant"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.stop()

    async def start(self, server: Server | None = None) -> None:
        """Build the address space and listen (on the same port as before, after a stop)."""
        async with self._lock:
            if self._server is not None:
                return
            server = server or await self._build()
            await server.start()
            assert server.bserver is not None
            self.port = server.bserver.port
            self._server = server
            await self._write_all(server)
            for machine in self.plant.machines:  # a restart keeps the setpoints in force
                await self._write_setpoint(machine)
        log.info("OPC UA simulator listening at %s", self.endpoint)

    async def stop(self) -> None:
        """Close every session and stop listening (a crashed or switched-off server)."""
        async with self._lock:
            server, self._server = self._server, None
            if server is None:
                return
            try:
                await asyncio.wait_for(server.stop(), STOP_TIMEOUT_S)
            except TimeoutError:
                # asyncua's stop waits for each connection's task to close; one stuck there
                # once held a chaos run's restart for minutes. A switched-off server does not
                # wait: cut every connection and stop listening.
                log.warning("OPC UA simulator: stop took over %g s; cutting its connections",
                            STOP_TIMEOUT_S)
                _cut(server)

    async def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down for `down_s`, start again on the same port with a fresh server.

        The new server is built before the old one stops (building takes about a
        second), so the outage lasts `down_s` plus the time to close and listen.
        """
        fresh = await self._build()
        await self.stop()
        if down_s > 0:
            await asyncio.sleep(down_s)  # the length of the outage, not a synchronisation
        await self.start(fresh)

    # -- fault switches and introspection ------------------------------------------------

    def set_status(self, machine: str, variable: str, status: str | None) -> None:
        """Serve `status` (a StatusCodes name: "BadSensorFailure") on one variable; None clears."""
        if machine not in self.plant.machines or variable not in VARIABLE_NAMES:
            raise KeyError(f"no variable {variable!r} on machine {machine!r}")
        if status is None:
            self._statuses.pop((machine, variable), None)
        else:
            self._statuses[(machine, variable)] = ua.StatusCode(getattr(ua.StatusCodes, status))
        self._dirty.set()

    def node_id(self, machine: str, variable: str) -> str:
        return node_id(machine, variable, self.namespace_index)

    def browse_path(self, machine: str, variable: str) -> str:
        return browse_path(machine, variable, self.namespace_index)

    def subscription_count(self) -> int:
        """Subscriptions the server holds now (to prove reconnects do not pile them up)."""
        if self._server is None:
            return 0
        return len(self._server.iserver.subscription_service.subscriptions)

    def connection_count(self) -> int:
        """Open client connections."""
        return 0 if self._server is None else len(self._server.iserver.asyncio_transports)

    async def write_load(self, value: float) -> None:
        """Write `value + i` to every load variable i (each write is a data change)."""
        server = self._server
        if server is None:
            return
        now = datetime.now(UTC)
        for index, nodeid in enumerate(self._load_ids):
            await server.write_attribute_value(
                nodeid, ua.DataValue(ua.Variant(value + index, ua.VariantType.Double),
                                     SourceTimestamp=now, ServerTimestamp=now))

    # -- internals ---------------------------------------------------------------------

    def _on_tick(self, plant: Plant) -> None:
        self._dirty.set()

    async def _writer(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            async with self._lock:
                if self._server is not None:
                    await self._write_all(self._server)

    async def _write_all(self, server: Server) -> None:
        stamp = time.time()
        now = datetime.fromtimestamp(stamp, UTC)
        ns = self.namespace_index
        for machine, sample in ((name, m.sample) for name, m in self.plant.machines.items()):
            failures = self.plant.failures[machine]
            prefix = object_name(machine)
            for var in VARIABLES:
                status = self._statuses.get((machine, var.name), _GOOD)
                value = ua.Variant(var.value(sample, failures), var.variant)
                if self.served is not None:
                    self.served.append((machine, var.name, stamp, value.Value))
                dv = ua.DataValue(value, StatusCode=status, SourceTimestamp=now,
                                  ServerTimestamp=now)
                await server.write_attribute_value(ua.NodeId(f"{prefix}.{var.name}", ns), dv)

    async def _build(self) -> Server:
        server = Server(user_manager=_Users(self.users) if self.users is not None else None)
        await server.init()
        server.set_server_name("Millwright OPC UA simulator")
        server.set_endpoint(f"opc.tcp://{self.host}:{self.port}{ENDPOINT_PATH}")
        tokens: list[type] = [ua.UserNameIdentityToken] if self.users is not None else [
            ua.AnonymousIdentityToken]
        server.set_identity_tokens(tokens)
        if self.security is None:
            server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
            await server.set_application_uri(APPLICATION_URI)
        else:
            await self._secure(server, self.security)
        self.namespace_index = await server.register_namespace(NAMESPACE_URI)
        await self._populate(server)
        server.subscribe_server_callback(CallbackType.PostWrite, self._on_write)
        return server

    async def _on_write(self, event: Any, dispatcher: Any) -> None:
        """A client wrote: a machine whose setpoint was written follows it."""
        setpoints = {ua.NodeId(f"{object_name(m)}.{SETPOINT.name}", self.namespace_index): m
                     for m in self.plant.machines}
        for item, status in zip(event.request_params.NodesToWrite, event.response_params,
                                strict=False):
            machine = setpoints.get(item.NodeId)
            if machine is None or not status.is_good():
                continue
            value = item.Value.Value.Value if item.Value.Value is not None else None
            try:
                self.plant.machines[machine].speed_setpoint_rpm = float(value)
            except (TypeError, ValueError):
                await self._write_setpoint(machine)  # ignored: show the setpoint in force

    async def _write_setpoint(self, machine: str) -> None:
        server = self._server
        if server is None:
            return
        rpm = self.plant.machines[machine].speed_setpoint_rpm
        await server.write_attribute_value(
            ua.NodeId(f"{object_name(machine)}.{SETPOINT.name}", self.namespace_index),
            ua.DataValue(ua.Variant(rpm, SETPOINT.variant)))

    async def _secure(self, server: Server, security: SimSecurity) -> None:
        await server.set_application_uri(security.application_uri)
        await server.load_certificate(str(security.certificate))
        await server.load_private_key(str(security.private_key))
        server.set_security_policy([getattr(ua.SecurityPolicyType, p) for p in security.policies])
        if security.trusted_clients_dir is not None:
            store = TrustStore([security.trusted_clients_dir], [])
            await store.load()
            server.set_certificate_validator(CertificateValidator(
                CertificateValidatorOptions.TRUSTED_VALIDATION
                | CertificateValidatorOptions.PEER_CLIENT, store))

    async def _populate(self, server: Server) -> None:
        self._load_ids = await populate(server, self.namespace_index, list(self.plant.machines),
                                        self.load_variables)


def _cut(server: Server) -> None:
    """Abort every connection of `server` and close its listening socket, without waiting."""
    for transport in list(server.iserver.asyncio_transports):
        transport.abort()
    listener = getattr(server.bserver, "_server", None)  # asyncua keeps no public handle
    if listener is not None:
        listener.close()

"""Opening an OPC UA session the way the config says: endpoint choice, security, identity, nodes.

Everything here runs inside `OpcUaDriver.connect()`; it is separate so the driver
file stays about reading. Library exceptions are translated into `NotConnected`
(retry soon) or `OpcUaRejected` (a setting must change) in `translate()`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from asyncua import Client, ua
from asyncua.crypto import security_policies, uacrypto
from cryptography.hazmat.primitives.serialization import Encoding

from drivers.opcua.codec import status_text, unit_of
from drivers.opcua.config import OpcUaDeviceConfig, OpcUaPoint, parse_browse_path, parse_node_id
from drivers.opcua.security import (
    OpcUaRejected,
    ServerUntrusted,
    TrustList,
    application_uri_of,
    describe,
    load_certificate,
)
from gateway import secrets
from gateway.errors import DriverError, NotConnected

log = logging.getLogger(__name__)


class _AlreadyReported(logging.Filter):
    """Drops asyncua's own lines about failures the driver raises as errors.

    The runtime logs a device going offline, or refusing us, once; asyncua would
    add a traceback from its publish loop, a warning per teardown step, and a
    ServiceFault warning on every reconnect attempt.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if "was called but connection is closed" in message or message.startswith("ServiceFault"):
            return False
        if message.startswith("Publish iteration crashed") and record.exc_info:
            return not isinstance(record.exc_info[1], ConnectionError | OSError)
        return True


# asyncua logs every request at INFO; keep it to warnings unless someone asked otherwise.
if logging.getLogger("asyncua").level == logging.NOTSET:
    logging.getLogger("asyncua").setLevel(logging.WARNING)
for _name in ("asyncua.client.ua_session.UaSession", "asyncua.client.ua_client.UaClient",
              "asyncua.client.ua_client.UASocketProtocol"):
    logging.getLogger(_name).addFilter(_AlreadyReported())


POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "None": security_policies.SecurityPolicyNone,
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
    "Aes256_Sha256_RsaPss": security_policies.SecurityPolicyAes256Sha256RsaPss,
}
MODES = {
    "None": ua.MessageSecurityMode.None_,
    "Sign": ua.MessageSecurityMode.Sign,
    "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}
# Status codes that mean "change a setting", each with the fix.
_IDENTITY = {"BadUserAccessDenied", "BadIdentityTokenRejected", "BadIdentityTokenInvalid",
             "BadUserSignatureInvalid"}
_OUR_CERTIFICATE = {"BadCertificateUntrusted", "BadCertificateInvalid", "BadCertificateRevoked",
                    "BadCertificateUriInvalid", "BadCertificateUseNotAllowed",
                    "BadCertificateTimeInvalid", "BadCertificateIssuerRevoked",
                    "BadCertificateChainIncomplete", "BadSecurityChecksFailed",
                    "BadCertificateHostNameInvalid"}
_SECURITY_SETTINGS = {"BadSecurityPolicyRejected", "BadSecurityModeRejected",
                      "BadNoValidCertificates"}
MAX_PER_REQUEST = 500  # items per service call: within every server's operation limits


@dataclass(slots=True)
class ResolvedPoint:
    """A configured point with its node, or why it has none."""

    index: int
    point: OpcUaPoint
    node: ua.NodeId | None = None
    unit: str | None = None
    problem: str | None = None


def translate(exc: BaseException, cfg: OpcUaDeviceConfig) -> DriverError:
    """The gateway error for a library exception raised while talking to `cfg.endpoint`."""
    if isinstance(exc, DriverError):
        return exc
    where = cfg.endpoint
    if isinstance(exc, ua.UaStatusCodeError):
        name = status_text(exc.code)
        if name in _IDENTITY:
            who = f"user '{cfg.username}'" if cfg.username else "anonymous sessions"
            fix = ("check username and password_file" if cfg.username else
                   "set username and password_file")
            return OpcUaRejected(f"{where} refused {who} ({name}); {fix}")
        if name in _OUR_CERTIFICATE:
            return OpcUaRejected(
                f"{where} rejected this gateway's certificate ({name}); add "
                f"{cfg.certificate_file or 'the gateway certificate'} to the server's trusted "
                "certificates, and check that it is valid and its URI is the application_uri")
        if name in _SECURITY_SETTINGS:
            return OpcUaRejected(f"{where} rejected security_policy \"{cfg.security_policy}\" "
                                 f"with security_mode \"{cfg.message_security_mode}\" ({name}); "
                                 "use a policy and mode the server offers")
        if name == "BadServiceUnsupported":
            return OpcUaRejected(f"{where} does not support a service this device needs "
                                 f"({name}); set mode = \"poll\" if it cannot subscribe, and "
                                 "use node_id where browse_path fails")
        return NotConnected(f"{where}: {name}")
    if isinstance(exc, OSError | TimeoutError | asyncio.TimeoutError | ConnectionError):
        return NotConnected(f"{where} unreachable: {str(exc) or type(exc).__name__}")
    if isinstance(exc, ua.UaError) and "certificate mismatch" in str(exc).lower():
        return ServerUntrusted(f"{where} presented a certificate other than "
                               f"server_certificate_file {cfg.server_certificate_file}")
    return NotConnected(f"{where}: {type(exc).__name__}: {exc}")


async def new_client(cfg: OpcUaDeviceConfig) -> Client:
    """A configured, not yet connected client (reads the secret files off the loop)."""
    # The runtime owns reconnection: a lost session surfaces as NotConnected, and the
    # next connect() builds a fresh client, session and subscription.
    client = Client(cfg.endpoint, timeout=cfg.request_timeout_s, auto_reconnect=False)
    client.session_timeout = int(cfg.session_timeout_s * 1000)
    client.name = client.description = f"Millwright gateway ({cfg.name})"
    client.application_uri = cfg.application_uri or f"urn:millwright:gateway:{cfg.name}"
    client.product_uri = "urn:millwright"
    if cfg.username is not None and cfg.password_file is not None:
        client.set_user(cfg.username)
        client.set_password(await asyncio.to_thread(
            secrets.read_secret, cfg.password_file, f"password_file of device '{cfg.name}'"))
    return client


async def secure(client: Client, cfg: OpcUaDeviceConfig) -> None:
    """Pick the endpoint with the configured policy and mode, check its certificate, arm it."""
    if cfg.security_policy == "None":
        return
    assert cfg.certificate_file is not None and cfg.private_key_file is not None
    try:
        own = await asyncio.to_thread(load_certificate, cfg.certificate_file)
    except ValueError as exc:
        raise OpcUaRejected(f"certificate_file: {exc}; use this gateway's application "
                            "certificate") from exc
    if cfg.application_uri is None:
        uri = application_uri_of(own)
        if uri is None:
            raise OpcUaRejected(f"certificate_file {cfg.certificate_file} has no URI in its "
                                "SubjectAltName; set application_uri or use an OPC UA "
                                "application certificate")
        client.application_uri = uri
    policy = POLICIES[cfg.security_policy]
    mode = MODES[cfg.message_security_mode]
    endpoints = await client.connect_and_get_server_endpoints()
    chosen = next((ep for ep in endpoints if ep.SecurityPolicyUri == policy.URI
                   and ep.SecurityMode == mode), None)
    if chosen is None:
        offered = ", ".join(sorted({
            f"{ep.SecurityPolicyUri.rsplit('#', 1)[-1]}/{ep.SecurityMode.name.rstrip('_')}"
            for ep in endpoints})) or "nothing"
        raise OpcUaRejected(f"{cfg.endpoint} offers no {cfg.security_policy}/"
                            f"{cfg.message_security_mode} endpoint (it offers {offered}); "
                            "change security_policy or security_mode")
    server_cert = uacrypto.x509_from_der(chosen.ServerCertificate)
    if server_cert is None:
        raise OpcUaRejected(f"{cfg.endpoint} sent no certificate with its secured endpoint")
    if not cfg.trust_any_server_certificate:
        try:
            trust = await asyncio.to_thread(TrustList.load, cfg.trust_dir,
                                            cfg.server_certificate_file)
        except ValueError as exc:
            raise OpcUaRejected(f"trust list: {exc}; keep only certificates there") from exc
        problem = trust.problem(server_cert)
        if problem is not None:
            raise ServerUntrusted(f"{cfg.endpoint} server certificate not trusted "
                                  f"({describe(server_cert)}): {problem}; add it there after "
                                  "checking it, or pin it with server_certificate_file")
    key_password = None
    if cfg.private_key_password_file is not None:
        key_password = await asyncio.to_thread(
            secrets.read_secret, cfg.private_key_password_file,
            f"private_key_password_file of device '{cfg.name}'")
    try:
        await client.set_security(
            policy, str(cfg.certificate_file), str(cfg.private_key_file), key_password,
            server_certificate=server_cert.public_bytes(Encoding.DER), mode=mode,
        )
    except (ValueError, TypeError) as exc:  # unreadable key or certificate, wrong key password
        raise OpcUaRejected(f"cannot use certificate_file {cfg.certificate_file} with "
                            f"private_key_file {cfg.private_key_file}: {exc}; check the files "
                            "and private_key_password_file") from exc


async def resolve(client: Client, cfg: OpcUaDeviceConfig) -> list[ResolvedPoint]:
    """Each point's NodeId (namespace URIs looked up, browse paths translated) and unit."""
    points = [ResolvedPoint(i, p) for i, p in enumerate(cfg.points)]
    namespaces: list[str] | None = None
    by_path: list[ResolvedPoint] = []
    for rp in points:
        if rp.point.browse_path is not None:
            by_path.append(rp)
            continue
        assert rp.point.node_id is not None
        node = parse_node_id(rp.point.node_id)
        uri = getattr(node, "NamespaceUri", None)
        if uri:
            if namespaces is None:
                namespaces = await client.get_namespace_array()
            if uri not in namespaces:
                rp.problem = f"namespace {uri} is not on the server"
                continue
            node = ua.NodeId(node.Identifier, ua.Int16(namespaces.index(uri)), node.NodeIdType)
        rp.node = node
    for chunk in _chunks(by_path):
        paths = [ua.BrowsePath(StartingNode=ua.NodeId(ua.Int32(ua.ObjectIds.ObjectsFolder)),
                               RelativePath=parse_browse_path(rp.point.browse_path or ""))
                 for rp in chunk]
        results = await client.uaclient.translate_browsepaths_to_nodeids(paths)
        for rp, result in zip(chunk, results, strict=True):
            if result.StatusCode.is_good() and result.Targets:
                target = result.Targets[0].TargetId
                rp.node = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
            else:
                rp.problem = (f"browse path {rp.point.browse_path} not found "
                              f"({status_text(result.StatusCode)})")
    await _units(client, [rp for rp in points if rp.node is not None])
    return points


async def _units(client: Client, points: list[ResolvedPoint]) -> None:
    """Fill `unit` from the config, else from the server's EngineeringUnits property."""
    wanted = []
    for rp in points:
        rp.unit = rp.point.unit
        if rp.unit is None:
            wanted.append(rp)
    for chunk in _chunks(wanted):
        paths = [ua.BrowsePath(StartingNode=rp.node,
                               RelativePath=ua.RelativePath.from_string("/0:EngineeringUnits"))
                 for rp in chunk]
        results = await client.uaclient.translate_browsepaths_to_nodeids(paths)
        found = [(rp, r.Targets[0].TargetId) for rp, r in zip(chunk, results, strict=True)
                 if r.StatusCode.is_good() and r.Targets]
        if not found:
            continue
        values = await client.uaclient.read_attributes(
            [ua.NodeId(t.Identifier, t.NamespaceIndex, t.NodeIdType) for _, t in found],
            ua.AttributeIds.Value)
        for (rp, _), dv in zip(found, values, strict=True):
            if dv.StatusCode is None or dv.StatusCode.is_good():
                rp.unit = unit_of(dv.Value.Value if dv.Value is not None else None)


def _chunks(items: list[ResolvedPoint]) -> list[list[ResolvedPoint]]:
    return [items[i:i + MAX_PER_REQUEST] for i in range(0, len(items), MAX_PER_REQUEST)]


def monitor_problem(point: OpcUaPoint, status: ua.StatusCode) -> str:
    """Why the server would not create a monitored item for `point`, and the fix."""
    name = status_text(status)
    where = point.node_id or point.browse_path
    if name in ("BadNodeIdUnknown", "BadNodeIdInvalid"):
        return f"node {where} does not exist on the server ({name})"
    if name in ("BadFilterNotAllowed", "BadDeadbandFilterInvalid",
                "BadMonitoredItemFilterInvalid"):
        return f"the server refuses a deadband on {where} ({name}); remove deadband"
    return f"cannot monitor {where} ({name})"

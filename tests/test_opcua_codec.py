"""OPC UA values to readings, errors to retry-or-fix, the trust list: pure, data-driven cases."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from drivers.opcua.codec import PointPlan, quality_of, sample, type_name
from drivers.opcua.config import OpcUaDeviceConfig
from drivers.opcua.security import OpcUaRejected, TrustList
from drivers.opcua.session import translate
from gateway.errors import NotConnected
from gateway.frames import frames_by_time

PLAN = PointPlan("mill-2", "p", "degC")
T0 = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)

VALUES = [
    # (variant, expected value, expected quality)
    (ua.Variant(True, ua.VariantType.Boolean), True, "good"),
    (ua.Variant(7, ua.VariantType.UInt32), 7, "good"),
    (ua.Variant(-3, ua.VariantType.Int16), -3, "good"),
    (ua.Variant(2**63 - 1, ua.VariantType.Int64), 2**63 - 1, "good"),
    (ua.Variant(1480.12, ua.VariantType.Float), 1480.12, "good"),
    (ua.Variant(0.1, ua.VariantType.Double), 0.1, "good"),
    (ua.Variant("running", ua.VariantType.String), "running", "good"),
    (ua.Variant(ua.LocalizedText("auf"), ua.VariantType.LocalizedText), "auf", "good"),
    (ua.Variant(T0, ua.VariantType.DateTime), "2026-03-01T12:00:00.250000Z", "good"),
    (ua.Variant(None, ua.VariantType.Null), None, "good"),
    (ua.Variant([1.0, 2.0], ua.VariantType.Double), None, "bad"),
    (ua.Variant(b"\x01", ua.VariantType.ByteString), None, "bad"),
]


@pytest.mark.parametrize("variant,value,quality", VALUES,
                         ids=[f"{v.VariantType.name}-{i}" for i, (v, _, _) in enumerate(VALUES)])
def test_variants_become_json_values(variant: ua.Variant, value: object, quality: str) -> None:
    problems: dict[str, str] = {}
    result = sample(PLAN, ua.DataValue(variant, SourceTimestamp=T0), problems)
    assert result.value == value and type(result.value) is type(value)
    assert result.quality == quality
    assert ("p" in problems) == (quality == "bad")


@pytest.mark.parametrize("status,quality", [
    (ua.StatusCodes.Good, "good"),
    (ua.StatusCodes.GoodClamped, "good"),
    (ua.StatusCodes.UncertainLastUsableValue, "uncertain"),
    (ua.StatusCodes.UncertainSensorNotAccurate, "uncertain"),
    (ua.StatusCodes.BadSensorFailure, "bad"),
    (ua.StatusCodes.BadNodeIdUnknown, "bad"),
])
def test_status_severity_is_quality(status: int, quality: str) -> None:
    assert quality_of(ua.StatusCode(status)) == quality
    dv = ua.DataValue(ua.Variant(1.5, ua.VariantType.Double), StatusCode=ua.StatusCode(status))
    result = sample(PLAN, dv)
    assert result.quality == quality
    # A bad value must not be used; an uncertain one is the server's best guess.
    assert result.value == (None if quality == "bad" else 1.5)


def test_source_timestamp_then_server_timestamp_then_none() -> None:
    value = ua.Variant(1.0, ua.VariantType.Double)
    later = T0 + timedelta(seconds=2)
    both = sample(PLAN, ua.DataValue(value, SourceTimestamp=T0, ServerTimestamp=later))
    assert both.time == T0.timestamp() and both.point == "p" and both.value == 1.0
    server_only = sample(PLAN, ua.DataValue(value, ServerTimestamp=later))
    assert server_only.time == later.timestamp()
    naive = sample(PLAN, ua.DataValue(value, SourceTimestamp=T0.replace(tzinfo=None)))
    assert naive.time == T0.timestamp()  # OPC UA times are UTC
    untimed = sample(PLAN, ua.DataValue(value))
    assert untimed.time is None  # the frame then uses receive time
    # The frame (as a subscription builds it) names the device and keeps the receive time.
    received = T0.timestamp() + 5
    timed_frame, untimed_frame = frames_by_time(PLAN.device, [both, untimed], received)
    assert (timed_frame.device, timed_frame.time) == ("mill-2", T0.timestamp())
    assert (timed_frame.received, timed_frame.values) == (received, {"p": 1.0})
    assert (untimed_frame.time, untimed_frame.values) == (received, {"p": 1.0})


def test_the_type_of_a_value_is_its_variant_type() -> None:
    assert type_name(ua.DataValue(ua.Variant(1.5, ua.VariantType.Float))) == "Float"
    assert type_name(ua.DataValue(ua.Variant(True, ua.VariantType.Boolean))) == "Boolean"
    assert type_name(ua.DataValue(ua.Variant(None, ua.VariantType.Null))) is None


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_number_is_a_bad_null(value: float) -> None:
    result = sample(PLAN, ua.DataValue(ua.Variant(value, ua.VariantType.Double)))
    assert (result.value, result.quality) == (None, "bad")


def _app_cert(name: str, key: object, issuer: tuple[x509.Certificate, object] | None = None
              ) -> x509.Certificate:
    uri = [x509.UniformResourceIdentifier(f"urn:{name}")]
    usage = [ExtendedKeyUsageOID.SERVER_AUTH]
    if issuer is None:
        return cert_gen.generate_self_signed_app_certificate(key, name, {}, uri, extended=usage)
    request = cert_gen.generate_app_certificate_signing_request(key, name, {}, uri,
                                                                 extended=usage)
    return cert_gen.sign_certificate_request(request, issuer[0], issuer[1])


def test_trust_by_certificate_by_issuer_and_within_validity_dates(tmp_path: Path) -> None:
    ca_key = cert_gen.generate_private_key()
    ca = cert_gen.generate_self_signed_app_certificate(
        ca_key, "Site CA", {}, [x509.UniformResourceIdentifier("urn:site-ca")], extended=[])
    issued = _app_cert("plc-7", cert_gen.generate_private_key(), (ca, ca_key))
    stranger = _app_cert("plc-8", cert_gen.generate_private_key())
    trust = TrustList((ca,), "trust_dir /pki")
    assert trust.problem(issued) is None
    assert trust.problem(stranger) == "neither it nor its issuer is in trust_dir /pki"
    assert TrustList((stranger,), "x").problem(stranger) is None
    later = datetime.now(UTC) + timedelta(days=400)
    assert (trust.problem(issued, now=later) or "").startswith("it expired on ")
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(Encoding.PEM))
    (tmp_path / "plc-8.der").write_bytes(stranger.public_bytes(Encoding.DER))
    (tmp_path / "notes.txt").write_text("not a certificate")
    loaded = TrustList.load(tmp_path, None)
    assert len(loaded.certificates) == 2
    assert loaded.problem(issued) is None and loaded.problem(stranger) is None


@pytest.mark.parametrize("exc,kind,fragment", [
    (ua.UaStatusCodeError(ua.StatusCodes.BadUserAccessDenied), OpcUaRejected,
     "refused user 'operator' (BadUserAccessDenied); check username and password_file"),
    (ua.UaStatusCodeError(ua.StatusCodes.BadSecurityChecksFailed), OpcUaRejected,
     "rejected this gateway's certificate (BadSecurityChecksFailed)"),
    (ua.UaStatusCodeError(ua.StatusCodes.BadSecurityPolicyRejected), OpcUaRejected,
     "use a policy and mode the server offers"),
    (ua.UaStatusCodeError(ua.StatusCodes.BadServiceUnsupported), OpcUaRejected,
     'set mode = "poll"'),
    (ua.UaStatusCodeError(ua.StatusCodes.BadTooManySessions), NotConnected,
     "opc.tcp://plc:4840/: BadTooManySessions"),
    (ConnectionRefusedError(111, "Connect call failed"), NotConnected,
     "opc.tcp://plc:4840/ unreachable: [Errno 111] Connect call failed"),
    (TimeoutError(), NotConnected, "opc.tcp://plc:4840/ unreachable: TimeoutError"),
])
def test_library_errors_become_retry_or_fix_this(exc: Exception, kind: type, fragment: str
                                                 ) -> None:
    cfg = OpcUaDeviceConfig.model_validate({
        "name": "plc", "protocol": "opcua", "endpoint": "opc.tcp://plc:4840/",
        "username": "operator", "password_file": __file__,
        "points": [{"name": "p", "node_id": "i=2258"}]})
    error = translate(exc, cfg)
    assert type(error) is kind and fragment in str(error)
    assert isinstance(error, NotConnected) == (kind is NotConnected)

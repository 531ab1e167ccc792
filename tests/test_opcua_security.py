"""OPC UA security against the real simulator: certificates, trust lists, users, clear refusals."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from drivers.opcua.config import OpcUaDeviceConfig
from drivers.opcua.driver import OpcUaDriver
from drivers.opcua.security import OpcUaRejected, ServerUntrusted
from gateway.errors import NotConnected
from gateway.runtime import Gateway
from simulators.cloud_listener import CloudListener
from simulators.mosquitto import Mosquitto
from simulators.opcua_certs import CertificateSet, generate_certificates
from simulators.opcua_server import OpcUaSimulator, SimSecurity
from simulators.wait import until
from tests.support import configs

pytestmark = pytest.mark.asyncio(loop_scope="module")

PASSWORD = "correct horse battery staple"
POLICIES = ("Basic256Sha256_SignAndEncrypt", "Basic256Sha256_Sign",
            "Aes128Sha256RsaOaep_SignAndEncrypt", "Aes256Sha256RsaPss_SignAndEncrypt")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    root = tmp_path_factory.mktemp("pki")
    made = generate_certificates(root)
    (root / "password").write_text(PASSWORD + "\n")
    (root / "wrong").write_text("Tr0ub4dor&3\n")
    return made


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim(certs: CertificateSet) -> AsyncIterator[OpcUaSimulator]:
    security = SimSecurity(certs.server.certificate, certs.server.private_key,
                           policies=POLICIES, trusted_clients_dir=certs.trusted_clients_dir)
    async with OpcUaSimulator(security=security, users={"operator": PASSWORD}) as simulator:
        yield simulator


def secured(sim: OpcUaSimulator, certs: CertificateSet, **overrides: Any) -> OpcUaDeviceConfig:
    root = certs.client.certificate.parent
    raw: dict[str, Any] = {
        "name": "mill-2", "protocol": "opcua", "endpoint": sim.endpoint,
        "publishing_interval_ms": 50,
        "security_policy": "Basic256Sha256", "security_mode": "SignAndEncrypt",
        "certificate_file": str(certs.client.certificate),
        "private_key_file": str(certs.client.private_key),
        "trust_dir": str(certs.trusted_servers_dir),
        "username": "operator", "password_file": str(root / "password"),
        "points": [{"name": "temperature", "node_id": sim.node_id("mill-2", "Temperature")}],
    }
    raw.update(overrides)
    return OpcUaDeviceConfig.model_validate({k: v for k, v in raw.items() if v is not None})


async def first_reading_quality(config: OpcUaDeviceConfig) -> str:
    driver = OpcUaDriver(config)
    await driver.connect()
    try:
        batch = await driver.read()
        frame = batch.frames[0]
        return frame.quality_of(next(iter(frame.values)))
    finally:
        await driver.close()


async def refusal(config: OpcUaDeviceConfig) -> OpcUaRejected:
    driver = OpcUaDriver(config)
    try:
        with pytest.raises(OpcUaRejected) as caught:
            await driver.connect()
    finally:
        await driver.close()
    assert not isinstance(caught.value, NotConnected)
    assert "\n" not in str(caught.value)
    return caught.value


@pytest.mark.parametrize("policy,mode", [
    ("Basic256Sha256", "SignAndEncrypt"), ("Basic256Sha256", "Sign"),
    ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"), ("Aes256_Sha256_RsaPss", "SignAndEncrypt"),
])
async def test_secured_endpoints_with_certificates_and_a_user(
        sim: OpcUaSimulator, certs: CertificateSet, policy: str, mode: str) -> None:
    config = secured(sim, certs, security_policy=policy, security_mode=mode)
    assert await first_reading_quality(config) == "good"


async def test_a_pinned_server_certificate_is_enough(sim: OpcUaSimulator,
                                                     certs: CertificateSet) -> None:
    config = secured(sim, certs, trust_dir=None,
                     server_certificate_file=str(certs.server.certificate))
    assert await first_reading_quality(config) == "good"


async def test_a_wrong_password_is_one_permanent_error(
        sim: OpcUaSimulator, certs: CertificateSet, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncua.client")
    wrong = certs.client.certificate.parent / "wrong"
    error = await refusal(secured(sim, certs, password_file=str(wrong)))
    assert str(error) == (f"{sim.endpoint} refused user 'operator' (BadUserAccessDenied); "
                          "check username and password_file")
    # asyncua's own ServiceFault warning is not repeated beside ours.
    client_noise = [r for r in caplog.records
                    if r.name.startswith("asyncua.client") and r.levelno >= logging.WARNING]
    assert client_noise == []


async def test_no_user_where_one_is_required(sim: OpcUaSimulator, certs: CertificateSet) -> None:
    error = await refusal(secured(sim, certs, username=None, password_file=None))
    assert "refused anonymous sessions (BadIdentityTokenRejected)" in str(error)


async def test_an_untrusted_server_certificate_is_refused_before_any_session(
        sim: OpcUaSimulator, certs: CertificateSet) -> None:
    # A trust list that holds only some other certificate.
    error = await refusal(secured(sim, certs, trust_dir=str(certs.trusted_clients_dir)))
    assert isinstance(error, ServerUntrusted)
    assert "server certificate not trusted (CN=urn:millwright:simulator, SHA-1 " in str(error)
    assert f"trust_dir {certs.trusted_clients_dir}" in str(error)
    error = await refusal(secured(sim, certs, trust_dir=None,
                                  server_certificate_file=str(certs.stranger.certificate)))
    assert isinstance(error, ServerUntrusted)


async def test_a_client_certificate_the_server_does_not_trust(
        sim: OpcUaSimulator, certs: CertificateSet) -> None:
    error = await refusal(secured(sim, certs,
                                  certificate_file=str(certs.stranger.certificate),
                                  private_key_file=str(certs.stranger.private_key)))
    assert "rejected this gateway's certificate (BadCertificateUntrusted)" in str(error)
    assert str(certs.stranger.certificate) in str(error)


async def test_unusable_certificate_files_are_a_permanent_error(
        sim: OpcUaSimulator, certs: CertificateSet) -> None:
    not_a_cert = certs.client.certificate.parent / "password"
    error = await refusal(secured(sim, certs, certificate_file=str(not_a_cert)))
    assert "certificate_file: " in str(error) and "is not a DER or PEM certificate" in str(error)
    error = await refusal(secured(sim, certs, private_key_file=str(not_a_cert)))
    assert f"private_key_file {not_a_cert}" in str(error)


async def test_a_policy_the_server_does_not_offer(sim: OpcUaSimulator,
                                                  certs: CertificateSet) -> None:
    error = await refusal(secured(sim, certs, security_policy="Aes128_Sha256_RsaOaep",
                                  security_mode="Sign"))
    assert "offers no Aes128_Sha256_RsaOaep/Sign endpoint (it offers " in str(error)
    assert "Basic256Sha256/SignAndEncrypt" in str(error)


async def test_through_the_gateway_sign_and_encrypt_values_reach_the_cloud(
        sim: OpcUaSimulator, certs: CertificateSet, tmp_path: Path, mosquitto: Mosquitto,
        cloud: CloudListener) -> None:
    device = secured(sim, certs).model_dump(mode="json", exclude_none=True)
    async with Gateway(configs.validate(configs.base(tmp_path, mosquitto.url, [device]))):
        await cloud.until(lambda c: len(c.of_type("telemetry")) >= 3, timeout_s=20,
                          what="secured telemetry")
    data = cloud.of_type("telemetry")[0]["data"]
    assert data["device"] == "mill-2" and "quality" not in data  # good
    assert isinstance(data["values"]["temperature"], float)
    [birth] = cloud.of_type("device_birth")  # the unit, from the server, over the secure channel
    assert {p["name"]: p["unit"] for p in birth["data"]["points"]} == {"temperature": "degC"}


def device_errors(device: str) -> float:
    return REGISTRY.get_sample_value("millwright_device_errors_total", {"device": device}) or 0.0


async def test_through_the_gateway_a_wrong_password_is_one_line_not_a_retry_storm(
        sim: OpcUaSimulator, certs: CertificateSet, tmp_path: Path, mosquitto: Mosquitto,
        cloud: CloudListener, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    wrong = certs.client.certificate.parent / "wrong"
    device = secured(sim, certs, password_file=str(wrong)).model_dump(
        mode="json", exclude_none=True)
    # Quick retries, as a NotConnected would get: a permanent error must not use them.
    device.update(reconnect_min_s=0.05, reconnect_max_s=5.0)
    before = device_errors("mill-2")
    async with Gateway(configs.validate(configs.base(tmp_path, mosquitto.url, [device]))) as gw:
        await until(lambda: "mill-2" in gw.retry_delay_s, 10, "the first attempt refused")
        attempts = device_errors("mill-2") - before
        # Not retried soon: the longest backoff (half the maximum to the maximum), where a
        # NotConnected would retry within 0.05-0.1 s.
        assert gw.retry_delay_s["mill-2"] >= 2.5
    assert attempts == 1
    lines = [r.getMessage() for r in caplog.records
             if r.levelno >= logging.WARNING and "mill-2" in r.getMessage()]
    assert lines == [f"device mill-2 unreachable: OpcUaRejected: {sim.endpoint} refused user "
                     "'operator' (BadUserAccessDenied); check username and password_file"]
    assert cloud.of_type("telemetry") == []

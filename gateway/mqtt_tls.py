"""TLS and credentials for a paho MQTT client, shared by the cloud uplink and the MQTT driver.

Verification is on by default; turning it off takes `tls_insecure = true` and is
logged as a warning. A refused certificate is explained by its real cause (a host
name it is not for, expired or not yet valid, an unknown CA: `explain_refusal`).
Passwords only come from files, are never logged, and a password file others can
read draws a warning.
"""

from __future__ import annotations

import datetime
import logging
import ssl
from typing import Any

import paho.mqtt.client as mqtt

from gateway import secrets
from gateway.config_base import TlsClient

log = logging.getLogger(__name__)
# OpenSSL's verification results (X509_V_ERR_*) that have a cause of their own.
_NOT_YET_VALID, _EXPIRED, _HOST_MISMATCH, _IP_MISMATCH = 9, 10, 62, 64
PEER_CERT_TIMEOUT_S = 5.0


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the TLS handshake fails.

    paho 2.2 (`Client._ssl_wrap_socket`) leaves the socket open when the handshake
    raises (an untrusted certificate, say), so it would linger until garbage collection.
    """

    def do_handshake(self, block: bool = False) -> None:
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


def tls_context(tls: TlsClient) -> ssl.SSLContext:
    """A client TLS context: system or given CA, optional client certificate (mTLS)."""
    context = ssl.create_default_context(
        cafile=str(tls.ca_file) if tls.ca_file is not None else None
    )
    context.sslsocket_class = _ClosingSSLSocket
    if tls.cert_file is not None and tls.key_file is not None:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.tls_insecure:
        log.warning("TLS certificate verification is OFF (tls_insecure = true): "
                    "anyone on the path can impersonate the broker")
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def configure(client: mqtt.Client, tls: TlsClient, *, use_tls: bool) -> None:
    """Apply TLS (for mqtts:// URLs) and username/password-file credentials to `client`."""
    if use_tls:
        client.tls_set_context(tls_context(tls))
    if tls.username is not None:
        password = None
        if tls.password_file is not None:
            name = getattr(tls, "name", None)  # a device's table; the cloud section has none
            where = f"password_file of device '{name}'" if name else "cloud.password_file"
            password = secrets.read_secret(tls.password_file, where)
        client.username_pw_set(tls.username, password)


def explain_refusal(exc: ssl.SSLCertVerificationError, host: str, port: int, who: str,
                    keys: str) -> str:
    """One line naming why the certificate of `who` at host:port was refused, and the fix.

    A host name mismatch says which names the certificate is for; an expired (or not
    yet valid) certificate gives its dates and this device's time; anything else is
    an unknown CA, fixed with `{keys}ca_file`. Blocking (it may fetch the certificate
    again, unverified, to read it): call it off the event loop.
    """
    where = f"{host}:{port}"
    code = exc.verify_code
    if code in (_HOST_MISMATCH, _IP_MISMATCH, _EXPIRED, _NOT_YET_VALID):
        cert = _peer_certificate(host, port)
        if code in (_HOST_MISMATCH, _IP_MISMATCH):
            names = ", ".join(cert["names"]) if cert and cert["names"] else "other names"
            return (f"the TLS certificate of {who} at {where} is for {names}, not for {host}; "
                    f"check the host name in {keys}url (it must be a name the certificate "
                    f"is for), or have the broker's certificate issued for {host}")
        now = datetime.datetime.now(datetime.UTC)
        clock = f"this device's clock reads {_date(now)}"
        if cert is None:
            return (f"the TLS certificate of {who} at {where} is out of its validity period "
                    f"({exc.verify_message}); renew it, or check the clock ({clock})")
        valid = f"valid from {_date(cert['not_before'])} to {_date(cert['not_after'])}"
        if code == _EXPIRED:
            return (f"the TLS certificate of {who} at {where} expired on "
                    f"{_date(cert['not_after'])} ({valid}; {clock}); renew the broker's "
                    "certificate, or set this device's clock if it is wrong")
        return (f"the TLS certificate of {who} at {where} is not valid yet ({valid}; "
                f"{clock}); set this device's clock (NTP) or check the broker's certificate")
    return (f"the TLS certificate of {who} at {where} is not trusted ({exc.verify_message}); "
            f"set {keys}ca_file to the CA that signed it")


def _date(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _peer_certificate(host: str, port: int) -> dict[str, Any] | None:
    """The names and dates of the certificate the server presents (unverified: only to
    explain a refusal), or None when it cannot be fetched or read."""
    try:
        from cryptography import x509  # asyncua's dependency; optional here
        from cryptography.x509.oid import NameOID

        pem = ssl.get_server_certificate((host, port), timeout=PEER_CERT_TIMEOUT_S)
        cert = x509.load_pem_x509_certificate(pem.encode())
    except (ImportError, OSError, ValueError):
        return None
    names: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        names += [str(n) for n in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        pass
    if not names:  # no subjectAltName: the common name is all it says
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return {"names": names, "not_before": cert.not_valid_before_utc,
            "not_after": cert.not_valid_after_utc}

"""Client-side security for OPC UA: the server-certificate trust list and the permanent errors.

asyncua checks nothing about the server's certificate by itself. `TrustList` holds
the certificates from `trust_dir` and `server_certificate_file`: a server is trusted
when it presents one of them exactly, or a certificate directly issued by one of
them (a site CA). Expired or not-yet-valid certificates are refused either way.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.errors import DriverError

CERT_SUFFIXES = (".der", ".pem", ".crt", ".cer")


class OpcUaRejected(DriverError):
    """The server refused us, or we refused it, for a reason retrying will not fix.

    Not a `NotConnected`: the runtime backs off to its maximum delay instead of
    retrying quickly, and the message (one line) says what to change.
    """


class ServerUntrusted(OpcUaRejected):
    """The server's certificate is not in the trust list."""


def load_certificate(path: Path) -> x509.Certificate:
    """A DER or PEM certificate file; ValueError names the file."""
    data = path.read_bytes()
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ValueError(f"{path} is not a DER or PEM certificate") from exc


def application_uri_of(certificate: x509.Certificate) -> str | None:
    """The SubjectAltName URI of an application certificate (OPC UA's application URI)."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def describe(certificate: x509.Certificate) -> str:
    """`CN=..., SHA-1 ab:cd:...` — how OPC UA tools show a certificate."""
    names = certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    common_name = names[0].value if names else certificate.subject.rfc4514_string()
    digest = hashlib.sha1(certificate.public_bytes(Encoding.DER)).hexdigest()  # noqa: S324
    return f"CN={common_name!s}, SHA-1 {digest}"


@dataclass(frozen=True, slots=True)
class TrustList:
    """The server certificates (or issuers) this gateway trusts."""

    certificates: tuple[x509.Certificate, ...]
    where: str  # for messages: "trust_dir /etc/..., server_certificate_file ..."

    @classmethod
    def load(cls, trust_dir: Path | None, pinned: Path | None) -> TrustList:
        """Read the trust list (blocking file reads: call it off the event loop)."""
        certs: list[x509.Certificate] = []
        where = []
        if trust_dir is not None:
            where.append(f"trust_dir {trust_dir}")
            for path in sorted(trust_dir.iterdir()):
                if path.is_file() and path.suffix.lower() in CERT_SUFFIXES:
                    certs.append(load_certificate(path))
        if pinned is not None:
            where.append(f"server_certificate_file {pinned}")
            certs.append(load_certificate(pinned))
        return cls(tuple(certs), " and ".join(where))

    def problem(self, certificate: x509.Certificate, now: datetime | None = None) -> str | None:
        """None when `certificate` is trusted, otherwise why not."""
        now = now or datetime.now(UTC)
        if certificate.not_valid_after_utc < now:
            return f"it expired on {certificate.not_valid_after_utc:%Y-%m-%d}"
        if certificate.not_valid_before_utc > now:
            return f"it is not valid before {certificate.not_valid_before_utc:%Y-%m-%d}"
        if any(certificate == trusted for trusted in self.certificates):
            return None
        for issuer in self.certificates:
            if issuer.subject != certificate.issuer or issuer == certificate:
                continue
            try:
                certificate.verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return None
        return f"neither it nor its issuer is in {self.where or 'the trust list'}"

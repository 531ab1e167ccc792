"""Self-signed OPC UA application certificates for the simulator, the tests and the demo.

`generate_certificates(directory)` writes a server pair, a client pair and a second
("stranger") client pair that no trust list names, so tests can show both a trusted
and an untrusted client. Certificates follow OPC UA Part 6: the application URI is a
SubjectAltName URI, with localhost, 127.0.0.1 and this host's name as DNS/IP names.
Made with asyncua's cert_gen on the `cryptography` package; nothing is fetched.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from asyncua.crypto import cert_gen
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

SERVER_URI = "urn:millwright:simulator"
CLIENT_URI = "urn:millwright:gateway"
STRANGER_URI = "urn:millwright:stranger"


@dataclass(frozen=True, slots=True)
class CertPair:
    """A certificate (DER) and its private key (PEM), and the application URI inside."""

    certificate: Path
    private_key: Path
    application_uri: str


@dataclass(frozen=True, slots=True)
class CertificateSet:
    """Everything a secured test needs, in one directory."""

    server: CertPair
    client: CertPair
    stranger: CertPair
    #: Holds the client's certificate: the simulator's list of trusted clients.
    trusted_clients_dir: Path
    #: Holds the server's certificate: the gateway's list of trusted servers.
    trusted_servers_dir: Path


def make_pair(directory: Path, stem: str, application_uri: str, *, server: bool,
              days: int = 365) -> CertPair:
    """Write `<stem>_cert.der` and `<stem>_key.pem` for one application; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    key = cert_gen.generate_private_key()
    hostname = socket.gethostname()
    alt_names: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(application_uri),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    if hostname and hostname != "localhost":
        alt_names.append(x509.DNSName(hostname))
    usage = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = cert_gen.generate_self_signed_app_certificate(
        key, application_uri, {"organizationName": "Millwright test"}, alt_names,
        extended=usage, days=days,
    )
    cert_path = directory / f"{stem}_cert.der"
    key_path = directory / f"{stem}_key.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    key_path.chmod(0o600)
    return CertPair(cert_path, key_path, application_uri)


def generate_certificates(directory: str | Path) -> CertificateSet:
    """Server, client and stranger pairs plus the two trust directories, under `directory`."""
    root = Path(directory)
    server = make_pair(root, "server", SERVER_URI, server=True)
    client = make_pair(root, "client", CLIENT_URI, server=False)
    stranger = make_pair(root, "stranger", STRANGER_URI, server=False)
    trusted_clients = root / "trusted-clients"
    trusted_servers = root / "trusted-servers"
    for folder, pair in ((trusted_clients, client), (trusted_servers, server)):
        folder.mkdir(exist_ok=True)
        (folder / pair.certificate.name).write_bytes(pair.certificate.read_bytes())
    return CertificateSet(server, client, stranger, trusted_clients, trusted_servers)


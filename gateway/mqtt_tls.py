"""TLS and credentials for a paho MQTT client, shared by the cloud uplink and the MQTT driver.

Verification is on by default; turning it off takes `tls_insecure = true` and is
logged as a warning. Passwords only come from files, are never logged, and a
password file others can read draws a warning.
"""

from __future__ import annotations

import logging
import ssl

import paho.mqtt.client as mqtt

from gateway import secrets
from gateway.config_base import TlsClient

log = logging.getLogger(__name__)


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

"""Who may see the page: loopback by default; elsewhere a login (HTTP Basic), and TLS.

`[health] listen` (or `host`) on a loopback address: the page is open to the
machine's own users, like /metrics. On any other address the page and its API
need the login of `username` + `password_file` (compared in constant time); with
no login configured they answer 403 saying how to set one. `cert_file` +
`key_file` serve everything over TLS, so the login never crosses the network in
clear. /healthz, /readyz and /metrics stay open to probes and scrapers: they carry
names and counts, never a value or a secret. `exposure_warnings` is what
`millwright check` says about an exposed endpoint.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from gateway.config import HealthSection

REALM = "millwright"


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or name the endpoint binds to) is reachable only locally."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def _local_name(host: str) -> bool:
    """Whether a Host header names this machine by loopback address or `localhost`."""
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    return is_loopback(name)


@dataclass(frozen=True, slots=True)
class Access:
    """The page's gate: `check(request)` raises 401/403 unless the request may see it."""

    required: bool  # the endpoint is reachable from other machines
    username: str | None = None
    password: str | None = None  # read from password_file at start, never shown

    def check(self, request: web.Request) -> None:
        if not self.required and not _local_name(request.host):
            # DNS rebinding: a web site whose name now resolves to 127.0.0.1 must not read
            # the page from the browser of someone on this machine.
            raise web.HTTPForbidden(text=f"open the page as http://127.0.0.1:PORT/ or "
                                         f"http://localhost:PORT/, not via '{request.host}'")
        if self.username is None or self.password is None:
            if self.required:
                raise web.HTTPForbidden(text=(
                    "the page is off on a non-loopback address until [health] username and "
                    "password_file are set (and cert_file + key_file for TLS)"))
            return
        if not self._matches(request.headers.get("Authorization", "")):
            raise web.HTTPUnauthorized(
                text="log in with [health] username and the password in password_file",
                headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'})

    def _matches(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        assert self.username is not None and self.password is not None
        # Both compared, always: the time taken says nothing about which one was wrong.
        good_user = hmac.compare_digest(user.encode(), self.username.encode())
        good_password = hmac.compare_digest(password.encode(), self.password.encode())
        return bool(sep) and good_user and good_password


def tls_context(health: HealthSection) -> ssl.SSLContext | None:
    """The server's TLS context from cert_file + key_file, or None (plain HTTP)."""
    if health.cert_file is None or health.key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(health.cert_file, health.key_file)
    return context


def exposure_warnings(health: HealthSection) -> list[str]:
    """What `check` warns about an endpoint other machines can reach: no login, no TLS."""
    if not health.enabled or is_loopback(health.host):
        return []
    where = f"health.listen ({health.host}:{health.port}) is not a loopback address"
    warnings = []
    if health.username is None or health.password_file is None:
        warnings.append(f"warning: {where} and no login is set: the page answers 403 until "
                        "you set [health] username and password_file")
    if health.cert_file is None:
        warnings.append(f"warning: {where} and there is no TLS: the login and the page "
                        "cross the network in clear; set [health] cert_file and key_file")
    return warnings

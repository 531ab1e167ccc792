"""Decentralised NATS auth for tests: an operator, a system account, an account with JetStream,
and a user's creds file, made and signed here (ed25519 nkeys), as `nsc` would make them."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import nkeys

UNLIMITED = -1
_ACCOUNT_LIMITS = {"subs": UNLIMITED, "data": UNLIMITED, "payload": UNLIMITED,
                   "imports": UNLIMITED, "exports": UNLIMITED, "wildcards": True,
                   "conn": UNLIMITED, "leaf": UNLIMITED}
_JETSTREAM = {"mem_storage": UNLIMITED, "disk_storage": UNLIMITED, "streams": UNLIMITED,
              "consumer": UNLIMITED}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _keys(prefix: int) -> tuple[bytes, Any, str]:
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    pair = nkeys.from_seed(seed)
    return seed, pair, pair.public_key.decode()


def _jwt(issuer: Any, subject: str, name: str, claims: dict[str, Any]) -> str:
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public_key.decode(),
                            "name": name, "sub": subject, "nats": {**claims, "version": 2}}
    body["jti"] = base64.b32encode(hashlib.sha256(
        json.dumps(body, sort_keys=True).encode()).digest()).decode().rstrip("=")
    payload = _b64(json.dumps(body).encode())
    return f"{header}.{payload}.{_b64(issuer.sign(f'{header}.{payload}'.encode()))}"


def operator_mode(directory: Path) -> tuple[str, Path, str]:
    """(the server's config lines, a user's creds file in `directory`, that user's seed)."""
    _, operator, operator_pub = _keys(nkeys.PREFIX_BYTE_OPERATOR)
    _, _, system_pub = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
    _, account, account_pub = _keys(nkeys.PREFIX_BYTE_ACCOUNT)
    user_seed, _, user_pub = _keys(nkeys.PREFIX_BYTE_USER)
    operator_jwt = _jwt(operator, operator_pub, "operator", {"type": "operator"})
    system_jwt = _jwt(operator, system_pub, "SYS", {"type": "account",
                                                     "limits": _ACCOUNT_LIMITS})
    account_jwt = _jwt(operator, account_pub, "fleet", {
        "type": "account", "limits": {**_ACCOUNT_LIMITS, **_JETSTREAM}})
    user_jwt = _jwt(account, user_pub, "gw", {
        "type": "user", "pub": {}, "sub": {}, "subs": UNLIMITED, "data": UNLIMITED,
        "payload": UNLIMITED})
    creds = directory / "gw.creds"
    creds.write_text(f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------"
                     f"\n\n-----BEGIN USER NKEY SEED-----\n{user_seed.decode()}\n"
                     "------END USER NKEY SEED------\n")
    creds.chmod(0o600)
    conf = (f"operator: {operator_jwt}\nsystem_account: {system_pub}\nresolver: MEMORY\n"
            f"resolver_preload: {{ {account_pub}: {account_jwt}, {system_pub}: {system_jwt} }}\n")
    return conf, creds, user_seed.decode()

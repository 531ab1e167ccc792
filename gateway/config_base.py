"""The config types drivers build on: strict tables, names, TLS credentials, the device base, URLs.

A leaf: it imports nothing of the project, so a driver's config model can build on
it without pulling in the envelope, the registry or the runtime (gateway/config.py
imports the registry, which names the drivers: that way round only).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

#: What a secret is shown as, in config errors and in logs.
MASK = "***"

CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class Strict(BaseModel):
    """Unknown keys are errors: a typo must never be silently ignored; inf and nan are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _name(value: str) -> str:
    if not value or len(value) > 128 or CONTROL_CHARS.search(value):
        raise ValueError("must be 1-128 characters with no control characters")
    return value


Name = Annotated[str, AfterValidator(_name)]


def _existing_file(value: Path) -> Path:
    if not value.is_file():
        raise ValueError(f"file not found: {value}; fix the path or create the file")
    return value


ExistingFile = Annotated[Path, AfterValidator(_existing_file)]


def mask_url_password(url: str) -> str:
    """`url` with the password in its user info replaced by ***: `mqtts://user:***@host`.

    Everything up to the last '@' counts as user info, so a password holding an
    unescaped '/', '?', '#' or '@' is masked whole.
    """
    scheme, sep, rest = url.partition("://")
    head = scheme + sep if sep else ""
    rest = rest if sep else url
    userinfo, at, host = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not (at and colon):
        return url
    return f"{head}{user}:{MASK}@{host}"


def parse_mqtt_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an mqtt:// or mqtts:// URL; ValueError names the fix.

    The messages echo the URL with any password in it masked.
    """
    return split_url(url, {"mqtt": 1883, "mqtts": 8883},
                     not_this="is not an MQTT URL; use mqtt://HOST:PORT or mqtts://HOST:PORT "
                              "for TLS",
                     credentials="username and password_file", example="mqtt://HOST:PORT")


def split_url(url: str, schemes: dict[str, int], *, not_this: str, credentials: str,
              example: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a URL of one of `schemes` (scheme -> default port), with no
    user info, path or query; ValueError names the fix (`not_this` for another scheme,
    `credentials` the keys for a user and password, `example` the right form)."""
    shown = mask_url_password(url)
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(f"'{shown}' {not_this}")
    if "@" in url:  # before the port: a password can hold a ':' that looks like one
        raise ValueError(
            f"'{shown}' carries credentials (user@ or user:password@); put them in "
            f"{credentials}"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"'{shown}' has an invalid port; use a number 1-65535") from exc
    if not parts.hostname:
        raise ValueError(f"'{shown}' has no host; use {example}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"'{shown}' carries a path, query or fragment; use {example}")
    return parts.scheme, parts.hostname, port or schemes[parts.scheme]


def _mqtt_url(value: str) -> str:
    parse_mqtt_url(value)
    return value


MqttUrl = Annotated[str, AfterValidator(_mqtt_url)]


class TlsClient(Strict):
    """TLS and credentials for an MQTT connection (cloud side, or a plant broker)."""

    ca_file: ExistingFile | None = None
    cert_file: ExistingFile | None = None
    key_file: ExistingFile | None = None
    tls_insecure: bool = False
    username: str | None = None
    password_file: ExistingFile | None = None

    @model_validator(mode="after")
    def _pairs(self) -> TlsClient:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together for mTLS; set both or neither")
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs username")
        return self


Report = Literal["always", "on_change"]

_ON_CHANGE_ONLY = ("deadband and heartbeat_s apply only with report = \"on_change\"; "
                   "set report = \"on_change\" or remove them")


class PointReporting(Strict):
    """A point's own report-by-exception settings; unset ones follow its device's."""

    report: Report | None = None
    deadband: float | None = Field(None, ge=0)  # absolute, in the point's own units
    heartbeat_s: float | None = Field(None, gt=0)


class PointWriting(Strict):
    """Whether the cloud may write a point (commands), and within which limits.

    Nothing is writable unless the config says so; `min`/`max` bound numbers and
    `allowed` lists the only values accepted. Each driver refuses, at `check`, a
    writable point its protocol cannot write.
    """

    writable: bool = False
    min: float | None = None
    max: float | None = None
    allowed: list[bool | int | float | str] | None = None

    @model_validator(mode="after")
    def _limits(self) -> PointWriting:
        limits = [key for key in ("min", "max", "allowed") if getattr(self, key) is not None]
        if limits and not self.writable:
            raise ValueError(f"{', '.join(limits)} only apply to a writable point: add "
                             "writable = true, or remove them")
        for key in ("min", "max"):
            value = getattr(self, key)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{key} must be a finite number")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is above max ({self.max:g}); swap them")
        if self.allowed is not None and not self.allowed:
            raise ValueError("allowed is empty, so no value could be written: list the "
                             "values, or remove it")
        return self


class DeviceConfig(Strict):
    """What every device has; each driver's own model extends it.

    Report by exception: with `report = "on_change"` a point is sent when its value (by
    more than `deadband`, for numbers) or its quality changed, and at least every
    `heartbeat_s` when one is set, so a quiet point can be told from a dead device.
    """

    name: Name
    protocol: str
    enabled: bool = True
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    report: Report = "always"
    deadband: float | None = Field(None, ge=0)
    heartbeat_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _reporting(self) -> DeviceConfig:
        on_change = self.report == "on_change" or any(
            getattr(p, "report", None) == "on_change" for p in getattr(self, "points", ()))
        if not on_change and (self.deadband is not None or self.heartbeat_s is not None):
            raise ValueError(_ON_CHANGE_ONLY)
        for point in getattr(self, "points", ()):
            if (getattr(point, "report", None) or self.report) == "on_change":
                continue
            # An OPC UA point's deadband (with its deadband_type) is the server's filter.
            own_deadband = "deadband_type" not in type(point).model_fields and \
                getattr(point, "deadband", None) is not None
            if own_deadband or getattr(point, "heartbeat_s", None) is not None:
                raise ValueError(f"point '{point.name}': {_ON_CHANGE_ONLY}")
        return self

    def produces(self, device: str, point: str) -> bool:
        """Whether readings of `device`/`point` can come from this table (asset checks)."""
        return device == self.name and any(p.name == point for p in getattr(self, "points", ()))

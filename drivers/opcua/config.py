"""The `[[devices]]` table of an OPC UA server: endpoint, mode, security, points.

Validated by `millwright check` without touching the network: node ids and browse
paths are parsed, certificate and password files must exist, and security settings
must be complete (a secured endpoint needs our certificate and key, and a way to
trust the server's certificate, or an explicit opt-out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from asyncua import ua
from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.config_base import DeviceConfig, ExistingFile, Name, PointWriting, Report

SecurityPolicy = Literal["None", "Basic256Sha256", "Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"]
SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]

NODE_ID_HINT = (
    "use ns=<index>;s=<name> (or i=<number>, g=<guid>, b=<base64>), "
    "or nsu=<namespace URI>;s=<name>"
)


def _existing_dir(value: Path) -> Path:
    if not value.is_dir():
        raise ValueError(f"directory not found: {value}; fix the path or create the directory")
    return value


ExistingDir = Annotated[Path, AfterValidator(_existing_dir)]


def parse_node_id(text: str) -> ua.NodeId:
    """The asyncua NodeId for a node id string; ValueError says what a valid one looks like."""
    try:
        return ua.NodeId.from_string(text.strip())
    except (ua.UaStringParsingError, ValueError, TypeError) as exc:
        raise ValueError(f"not a valid OPC UA node id; {NODE_ID_HINT}") from exc


def parse_browse_path(text: str) -> ua.RelativePath:
    """The RelativePath (OPC UA Part 4 A.2 text form) from the Objects folder."""
    hint = ("use the OPC UA relative path form from the Objects folder, "
            "e.g. \"/2:Mill2/2:VibrationRms\"")
    try:
        path = ua.RelativePath.from_string(text.strip())
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a valid browse path; {hint}") from exc
    if not path.Elements or any(e.TargetName is None or not e.TargetName.Name
                                for e in path.Elements):
        raise ValueError(f"browse path has an empty element; {hint}")
    return path


class OpcUaPoint(PointWriting):
    """One variable on the server, named by `node_id` or by `browse_path`.

    Any variable may be made `writable`: the server decides, at write time, whether it
    accepts the write (its AccessLevel, the session's user), and a refusal is the
    command's failure.
    """

    name: Name
    node_id: str | None = None
    browse_path: str | None = None
    # None: the server's EngineeringUnits display name, if it has one.
    unit: str | None = None
    # None: the device's defaults.
    sampling_interval_ms: float | None = Field(None, ge=0)
    queue_size: int | None = Field(None, ge=1, le=100_000)
    # Report a change only when the value moves by more than this (DataChangeFilter).
    deadband: float | None = Field(None, gt=0)
    deadband_type: Literal["absolute", "percent"] = "absolute"
    # Report by exception at the gateway (an absolute deadband above applies there too).
    report: Report | None = None
    heartbeat_s: float | None = Field(None, gt=0)

    @field_validator("node_id")
    @classmethod
    def _node_id(cls, value: str | None) -> str | None:
        if value is not None:
            parse_node_id(value)
        return value

    @field_validator("browse_path")
    @classmethod
    def _browse_path(cls, value: str | None) -> str | None:
        if value is not None:
            parse_browse_path(value)
        return value

    @model_validator(mode="after")
    def _one_address(self) -> OpcUaPoint:
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError("set exactly one of node_id or browse_path")
        if self.deadband_type == "percent" and self.deadband is not None and self.deadband > 100:
            raise ValueError("a percent deadband must be 0-100")
        return self


class OpcUaDeviceConfig(DeviceConfig):
    """An OPC UA server and the variables to read from it."""

    protocol: Literal["opcua"]
    endpoint: str
    mode: Literal["subscribe", "poll"] = "subscribe"
    # Subscription mode.
    publishing_interval_ms: float = Field(500.0, ge=1, le=3_600_000)
    sampling_interval_ms: float | None = Field(None, ge=0)  # None: the publishing interval
    queue_size: int = Field(1, ge=1, le=100_000)
    # Poll mode.
    poll_interval_s: float = Field(1.0, ge=0.01, le=86_400)
    # Security.
    security_policy: SecurityPolicy = "None"
    security_mode: SecurityMode | None = None  # None: SignAndEncrypt when a policy is set
    certificate_file: ExistingFile | None = None
    private_key_file: ExistingFile | None = None
    private_key_password_file: ExistingFile | None = None
    server_certificate_file: ExistingFile | None = None  # pin this exact certificate
    trust_dir: ExistingDir | None = None  # trusted server or CA certificates (DER or PEM)
    trust_any_server_certificate: bool = False
    application_uri: str | None = None  # None: the URI in certificate_file
    username: str | None = None
    password_file: ExistingFile | None = None
    # Timing.
    request_timeout_s: float = Field(4.0, gt=0, le=300)
    session_timeout_s: float = Field(60.0, ge=5, le=3600)
    points: list[OpcUaPoint] = Field(min_length=1)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        parts = urlsplit(value)
        hint = "use opc.tcp://HOST:PORT/PATH, e.g. opc.tcp://127.0.0.1:4840/"
        if parts.scheme != "opc.tcp":
            raise ValueError(f"not an OPC UA endpoint; {hint}")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"invalid port; {hint}") from exc
        if not parts.hostname or port is None:
            raise ValueError(f"needs a host and a port; {hint}")
        if parts.username or parts.password:
            raise ValueError("credentials do not belong in the endpoint; use username and "
                             "password_file")
        return value

    @field_validator("points")
    @classmethod
    def _distinct(cls, points: list[OpcUaPoint]) -> list[OpcUaPoint]:
        errors: list[InitErrorDetails] = []
        seen: dict[str, int] = {}
        for index, point in enumerate(points):
            if point.name in seen:
                errors.append(InitErrorDetails(
                    type=PydanticCustomError("value_error", "{msg}", {
                        "msg": f"same name as points[{seen[point.name]}]; point names must "
                               "be unique per device"}),
                    loc=(index, "name"), input=point.name))
            seen.setdefault(point.name, index)
        if errors:
            raise ValidationError.from_exception_data("points", errors)
        return points

    @model_validator(mode="after")
    def _security(self) -> OpcUaDeviceConfig:
        secured = self.security_policy != "None"
        if not secured:
            if self.security_mode not in (None, "None"):
                raise ValueError(f"security_mode = \"{self.security_mode}\" needs a "
                                 "security_policy, e.g. \"Basic256Sha256\"")
            for key in ("certificate_file", "private_key_file", "server_certificate_file",
                        "trust_dir"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} is only used with a security_policy; set "
                                     "security_policy = \"Basic256Sha256\" or remove it")
        else:
            if self.security_mode == "None":
                raise ValueError("security_mode = \"None\" contradicts security_policy "
                                 f"\"{self.security_policy}\"; use \"Sign\" or "
                                 "\"SignAndEncrypt\"")
            if self.certificate_file is None or self.private_key_file is None:
                raise ValueError(f"security_policy \"{self.security_policy}\" needs "
                                 "certificate_file and private_key_file (this gateway's "
                                 "application certificate)")
            if (self.trust_dir is None and self.server_certificate_file is None
                    and not self.trust_any_server_certificate):
                raise ValueError("set trust_dir (trusted server certificates) or "
                                 "server_certificate_file, or trust_any_server_certificate "
                                 "= true to accept any server (not recommended)")
        if self.private_key_password_file is not None and self.private_key_file is None:
            raise ValueError("private_key_password_file needs private_key_file")
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs username")
        if self.username is not None and self.password_file is None:
            raise ValueError("username needs password_file (a file holding the password)")
        return self

    @property
    def message_security_mode(self) -> SecurityMode:
        if self.security_policy == "None":
            return "None"
        return self.security_mode or "SignAndEncrypt"

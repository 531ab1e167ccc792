"""`[cloud.nats]` and NATS URLs in `cloud.url`: the JetStream bus's settings, checked at `check`.

```toml
[cloud]
url = "nats://10.0.0.1:4222,nats://10.0.0.2:4222,nats://10.0.0.3:4222"  # or tls://
[cloud.nats]
stream = "MILLWRIGHT"                   # required: the JetStream stream events go into
subject = "{prefix}.{kind}.{device}"    # the default
duplicate_window_s = 120                # the stream's must be at least this long
create_stream = false                   # true (demos, tests): create it when missing
replicas = 1                            # of a stream the gateway creates
heartbeat_s = 30                        # "online" on {prefix}.status this often
# credentials, at most one way: creds_file, nkey_seed_file, or user + password_file
```
Several servers (a cluster) are one string, comma-separated, as NATS tools take them;
all `nats://` or all `tls://`. TLS uses the cloud section's `ca_file`, `cert_file` and
`key_file` (mTLS) and `tls_insecure`, verification on by default. It imports only
config_base, events and subjects: no NATS library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from gateway.config_base import (
    ExistingFile,
    Strict,
    mask_url_password,
    parse_mqtt_url,
    split_url,
)
from gateway.events import KINDS
from gateway.subjects import (
    DEFAULT_TEMPLATE,
    kind_token,
    prefix_tokens,
    template_problem,
)

NATS_SCHEMES = ("nats", "tls")
DEFAULT_PORT = 4222
_LIST = 'list servers as "nats://HOST:4222,nats://HOST2:4222"'
# Settings of the MQTT uplink that mean nothing on NATS: set with a NATS URL, they are errors
# (a setting must never be silently ignored).
MQTT_ONLY = ("mqtt_version", "compression", "batch_max_events", "batch_max_bytes", "linger_s",
             "max_packet_bytes", "username", "password_file")


@dataclass(frozen=True, slots=True)
class NatsServer:
    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def is_nats_url(url: str) -> bool:
    return url.strip().lower().partition("://")[0] in NATS_SCHEMES


def parse_nats_urls(url: str) -> list[NatsServer]:
    """The servers of a comma-separated list of nats:// (or tls://) URLs; ValueError names
    the fix. Messages echo URLs with any password in them masked."""
    servers = []
    for one in url.split(","):
        one = one.strip()
        if not one:
            raise ValueError(f"has an empty entry (a stray comma); {_LIST}")
        servers.append(NatsServer(*split_url(
            one, {"nats": DEFAULT_PORT, "tls": DEFAULT_PORT},
            not_this=f"is not a NATS URL; {_LIST} (tls:// for TLS)",
            credentials="[cloud.nats] user and password_file", example="nats://HOST:PORT")))
    if len({s.scheme for s in servers}) > 1:
        raise ValueError("mixes nats:// and tls:// servers; use tls:// for every server of "
                         "the cluster, or nats:// for every one")
    if len(set(servers)) < len(servers):
        raise ValueError("names a server twice; list each server of the cluster once")
    return servers


def _one_string(value: Any) -> Any:
    if isinstance(value, list):
        raise ValueError("takes one string; for several NATS servers separate them with "
                         "commas: \"nats://HOST1:4222,nats://HOST2:4222\"")
    return value


def _cloud_url(value: str) -> str:
    if is_nats_url(value) or "," in value:
        parse_nats_urls(value)
    else:
        try:
            parse_mqtt_url(value)
        except ValueError as exc:
            if "is not an MQTT URL" not in str(exc):
                raise
            raise ValueError(f"'{mask_url_password(value)}' is not a cloud bus URL; use "
                             "mqtt://HOST:PORT (mqtts:// for TLS) for an MQTT broker, or "
                             "nats://HOST:4222 (tls:// for TLS, several comma-separated) "
                             "for NATS JetStream") from None
    return value


#: `cloud.url`: one MQTT URL, or NATS URLs comma-separated.
CloudUrl = Annotated[str, BeforeValidator(_one_string), AfterValidator(_cloud_url)]


class NatsSection(Strict):
    stream: str
    subject: str = DEFAULT_TEMPLATE
    # Resends of one event id within this long are dropped by the stream; the stream's own
    # duplicate_window must be at least this long (checked when the uplink connects).
    duplicate_window_s: float = Field(120.0, gt=0, le=7 * 86_400)
    create_stream: bool = False
    replicas: int = Field(1, ge=1, le=5)
    heartbeat_s: float = Field(30.0, ge=1, le=3600)
    creds_file: ExistingFile | None = None
    nkey_seed_file: ExistingFile | None = None
    user: str | None = None
    password_file: ExistingFile | None = None

    @field_validator("stream")
    @classmethod
    def _stream_name(cls, value: str) -> str:
        bad = next((ch for ch in value if ch in ".*>/\\" or ch.isspace() or ord(ch) < 0x20
                    or ord(ch) == 0x7F), None)
        if not value or len(value) > 255 or bad is not None:
            raise ValueError("a stream name is 1-255 characters with no '.', '*', '>', '/', "
                             "'\\', whitespace or control characters; e.g. \"MILLWRIGHT\"")
        return value

    @model_validator(mode="after")
    def _credentials(self) -> NatsSection:
        ways = [name for name, used in (("creds_file", self.creds_file is not None),
                                        ("nkey_seed_file", self.nkey_seed_file is not None),
                                        ("user", self.user is not None)) if used]
        if len(ways) > 1:
            raise ValueError(f"{' and '.join(ways)} are two ways to authenticate; keep one "
                             "(creds_file, nkey_seed_file, or user with password_file)")
        if (self.user is None) != (self.password_file is None):
            raise ValueError("user and password_file go together; set both or neither")
        return self


def nats_problems(cloud: Any, prefix: str) -> list[str]:
    """What a NATS `cloud.url` needs of the rest of the cloud section (`prefix` is the
    formatted topic prefix), one line per problem; [cloud.nats] without one is a problem."""
    section: NatsSection | None = cloud.nats
    if not is_nats_url(cloud.url):
        if section is not None:
            return ["cloud.nats: the table is used only with a NATS cloud.url "
                    "(nats://HOST:4222 or tls://); set such a url or remove [cloud.nats]"]
        return []
    if section is None:
        return ["cloud.nats: a NATS cloud.url needs a [cloud.nats] table with at least "
                "stream (e.g. stream = \"MILLWRIGHT\")"]
    problems = []
    if cloud.format != "cloudevents":
        problems.append(f"cloud.format: \"{cloud.format}\" goes over MQTT only; with a NATS "
                        "cloud.url use format = \"cloudevents\"")
    for key in MQTT_ONLY:
        if key in cloud.model_fields_set:
            fix = ("use cloud.nats.user and cloud.nats.password_file" if key in
                   ("username", "password_file") else "remove it")
            problems.append(f"cloud.{key}: an MQTT setting, meaningless with a NATS "
                            f"cloud.url (each event is one JetStream message); {fix}")
    wrong = template_problem(section.subject, prefix_tokens(prefix),
                             [kind_token(k) for k in KINDS])
    if wrong is not None:
        problems.append(f"cloud.nats.subject: {wrong}")
    return problems

"""NATS subjects: device names as safe tokens, the subject template, and which stream covers what.

A NATS subject is tokens joined by `.`; `*` matches one token and `>` the rest, and
whitespace ends a subject on the wire. Device names therefore become one token each,
the way gateway/topics.py makes them one MQTT level: `%`, `.`, `*`, `>`, whitespace,
control characters, Unicode non-characters and surrogates are percent-encoded (as UTF-8
bytes), and so is a leading `$` (the `$JS`/`$SYS` namespaces); the empty name becomes a
lone `%`. Decoding gives the name back, so no name can add a token, be a wildcard, or
share a subject with another.

The subject template (`[cloud.nats] subject`, default `{prefix}.{kind}.{device}`) places
`{kind}` and `{device}` as whole tokens; `{prefix}` is the cloud topic prefix with each of
its levels made a token the same way (`millwright/plant-a/line-1` becomes
`millwright.plant-a.line-1`). `covers` answers whether a stream's subject filter takes
every subject of a pattern, for the check the uplink makes at start.
"""

from __future__ import annotations

import string
from collections.abc import Iterable, Sequence

from gateway.topics import percent_decode, percent_encode, unsafe_character

DEFAULT_TEMPLATE = "{prefix}.{kind}.{device}"
PLACEHOLDERS = ("prefix", "kind", "device")
# The {kind} token of each kind of event, where it is not the kind itself (as MQTT topics).
KIND_TOKENS = {"device_birth": "birth"}


def kind_token(kind: str) -> str:
    return KIND_TOKENS.get(kind, kind)


def _must_escape(ch: str) -> bool:
    return ch in "%.*>" or ch.isspace() or unsafe_character(ch)


def sanitise_token(name: str) -> str:
    """`name` as exactly one subject token that is neither a wildcard nor starts with `$`.

    Injective: `unsanitise_token` inverts it."""
    return percent_encode(name, _must_escape)


def unsanitise_token(token: str) -> str:
    """The name that `sanitise_token` turned into `token`."""
    return percent_decode(token)


def prefix_tokens(topic_prefix: str) -> str:
    """The cloud topic prefix (levels split by `/`) as subject tokens joined by `.`."""
    return ".".join(sanitise_token(level) for level in topic_prefix.strip("/").split("/"))


def check_subject(subject: str, *, wildcards: bool = False) -> str:
    """`subject` when NATS takes it (a filter with `wildcards=True`); ValueError says why."""
    if not subject:
        raise ValueError("is empty")
    tokens = subject.split(".")
    for index, token in enumerate(tokens):
        if not token:
            raise ValueError(f"has an empty token in {subject!r} (two dots, or a dot at "
                             "either end)")
        bad = next((ch for ch in token if ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F),
                   None)
        if bad is not None:
            raise ValueError(f"contains U+{ord(bad):04X} (whitespace or a control "
                             f"character) in {subject!r}")
        if "*" in token or ">" in token:
            if not wildcards:
                raise ValueError(f"contains a wildcard ('*' or '>') in {subject!r}; a "
                                 "published subject cannot")
            if token not in ("*", ">") or (token == ">" and index != len(tokens) - 1):
                raise ValueError(f"{subject!r}: '*' must be a whole token and '>' the "
                                 "whole last token")
    return subject


def covers(stream_filter: str, pattern: str) -> bool:
    """True when every subject `pattern` matches (its `*` tokens standing for any token)
    is taken by the stream subject `stream_filter`."""
    want = pattern.split(".")
    have = stream_filter.split(".")
    for index, token in enumerate(have):
        if token == ">":
            return len(want) > index
        if index >= len(want):
            return False
        if token != "*" and token != want[index]:
            return False
    return len(want) == len(have)


def covered(stream_subjects: Iterable[str], pattern: str) -> bool:
    return any(covers(subject, pattern) for subject in stream_subjects)


class SubjectTemplate:
    """`[cloud.nats] subject` with the prefix filled in; `subject(kind, device)` is fast."""

    def __init__(self, template: str, prefix: str) -> None:
        self.template = template
        self.prefix = prefix
        self._subjects: dict[tuple[str, str], str] = {}

    def subject(self, kind: str, device: str) -> str:
        subject = self._subjects.get((kind, device))
        if subject is None:
            if len(self._subjects) >= 10_000:  # bounded, though device names are few
                self._subjects.clear()
            subject = self._subjects[(kind, device)] = self.template.format(
                prefix=self.prefix, kind=kind, device=sanitise_token(device))
        return subject

    def pattern(self, kind: str = "*") -> str:
        """The subjects of `kind` (every kind by default) for any device, as a filter."""
        return self.template.format(prefix=self.prefix, kind=kind, device="*")

    def status_subject(self) -> str:
        return f"{self.prefix}.status"


def template_problem(template: str, prefix: str, kinds: Sequence[str]) -> str | None:
    """What is wrong with a subject template (with this prefix), or None."""
    try:
        names = {name for _, name, _, _ in _fields(template)}
    except ValueError as exc:
        return f"is not a valid template ({exc}); e.g. \"{DEFAULT_TEMPLATE}\""
    unknown = names - set(PLACEHOLDERS)
    if unknown:
        return (f"unknown placeholder {{{sorted(unknown)[0]}}}; only {{prefix}}, {{kind}} "
                "and {device} are allowed")
    tokens = template.split(".")
    for needed in ("kind", "device"):
        if tokens.count(f"{{{needed}}}") != 1 or template.count(f"{{{needed}}}") != 1:
            return (f"needs {{{needed}}} once, as a whole token (between dots), so every "
                    f"event's subject names its {needed}; e.g. \"{DEFAULT_TEMPLATE}\"")
    if "{prefix}" in template and "{prefix}" not in tokens:
        return "{prefix} must be whole tokens (between dots); e.g. \"{prefix}.{kind}.{device}\""
    subjects = SubjectTemplate(template, prefix)
    try:
        check_subject(subjects.pattern(), wildcards=True)
        for kind in kinds:
            check_subject(subjects.subject(kind, "d"))
    except ValueError as exc:
        return f"gives a subject NATS refuses: it {exc}"
    status = subjects.status_subject()
    if any(covers(subjects.pattern(kind), status) for kind in kinds):
        return (f"gives event subjects that include the status subject {status!r}; put "
                "{kind} and {device} after {prefix}")
    return None


def _fields(template: str) -> list[tuple[str, str, str | None, str | None]]:
    return [(text, name, spec, conv) for text, name, spec, conv in
            string.Formatter().parse(template) if name is not None]

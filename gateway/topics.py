"""MQTT topics: the one check every configured topic passes, and device names as safe levels.

`check_topic` holds a topic name (or, with `filter=True`, a subscription filter) to
the MQTT rules: 1 to 65535 bytes of UTF-8, no NUL, no control or non-characters
(brokers drop the connection over them), and `+`/`#` only as whole levels of a
filter (`#` last). Every topic the config produces is checked with it at `check`.

Device names become one level each: `+ # /` and `%`, control characters, Unicode
non-characters and surrogates are percent-encoded, and so is a leading `$`
(broker-reserved topics); the empty name becomes a lone `%`. Decoding gives the name
back, so two devices never share a topic.
"""

from __future__ import annotations

from collections.abc import Callable

MAX_TOPIC_BYTES = 65_535
_SHOWN = 60  # characters of a topic quoted in a message


def check_topic(topic: str, *, filter: bool = False,  # noqa: A002 - the MQTT term
                where: str | None = None, fix: str | None = None) -> str:
    """`topic` when it is a valid MQTT topic name (a filter with `filter=True`).

    Otherwise ValueError: `where` (e.g. "the will topic 'a/+/status'"), what is
    wrong, then `fix` (default: a fix for the topic itself).
    """
    found = _topic_problem(topic, filter=filter)
    if found is None:
        return topic
    problem, default_fix = found
    raise ValueError(f"{where + ' ' if where else ''}{problem}; {fix or default_fix}")


def check_level(value: str, *, where: str | None = None, fix: str | None = None) -> str:
    """`value` when it can be one level of a topic name (a gateway id, a site)."""
    if "/" in value:
        raise ValueError(f"{where + ' ' if where else ''}contains '/', which would split it "
                         f"into several topic levels; {fix or 'remove it'}")
    return check_topic(value, where=where, fix=fix)


def shown(topic: str) -> str:
    """`topic` quoted for a message, shortened when long."""
    return repr(topic if len(topic) <= _SHOWN else topic[:_SHOWN] + "...")


def _topic_problem(topic: str, *, filter: bool) -> tuple[str, str] | None:  # noqa: A002
    """(what is wrong, the fix) for an invalid topic name or filter; None when valid."""
    if not topic:
        return "is empty (an MQTT topic has at least one character)", "give it a value"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid UTF-8 (it holds a lone surrogate)", "remove that character"
    if size > MAX_TOPIC_BYTES:
        return f"is {size} bytes long (MQTT allows {MAX_TOPIC_BYTES})", "shorten it"
    if "\x00" in topic:
        return "contains a NUL character, which MQTT forbids", "remove it"
    bad = next((ch for ch in topic if unsafe_character(ch)), None)
    if bad is not None:
        return (f"contains U+{ord(bad):04X}, a control character or non-character that "
                "brokers refuse", "remove it")
    if not filter:
        wildcard = next((ch for ch in "+#" if ch in topic), None)
        if wildcard is not None:
            return (f"contains '{wildcard}', an MQTT wildcard that only subscriptions may use "
                    "(a broker refuses to publish to it)", "remove it")
        return None
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return "'#' must be the whole last level", "e.g. \"plant/#\""
        if "+" in level and level != "+":
            return "'+' must be a whole level", "e.g. \"plant/+/telemetry\""
    return None


def _must_escape(ch: str) -> bool:
    return ch in "%+#/" or unsafe_character(ch)


def unsafe_character(ch: str) -> bool:
    """A control character, a surrogate or a Unicode non-character: never left in a name."""
    code = ord(ch)
    return (code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF
            or 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE)


def sanitise_level(name: str) -> str:
    """`name` as exactly one topic level that can be neither a wildcard nor a `$` topic.

    '%', '+', '#', '/', control characters, non-characters and a leading '$' are
    percent-encoded (as UTF-8 bytes); the empty name becomes a lone '%', which no
    other name can give. Injective: `unsanitise_level` inverts it.
    """
    return percent_encode(name, _must_escape)


def unsanitise_level(level: str) -> str:
    """The device name that `sanitise_level` turned into `level`."""
    return percent_decode(level)


def percent_encode(name: str, must_escape: Callable[[str], bool]) -> str:
    """`name` with each character `must_escape` says, and a leading `$`, percent-encoded
    (as UTF-8 bytes, surrogates too); the empty name becomes a lone `%`, which no other
    name gives, since `%` itself must be escaped. `percent_decode` inverts it."""
    if not name:
        return "%"
    if name[0] != "$" and not any(map(must_escape, name)):
        return name
    return "".join(
        "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
        if must_escape(ch) or (index == 0 and ch == "$") else ch
        for index, ch in enumerate(name)
    )


def percent_decode(text: str) -> str:
    """The name that `percent_encode` turned into `text`."""
    if text == "%":
        return ""
    raw, index = bytearray(), 0
    while index < len(text):
        if text[index] == "%":
            raw.append(int(text[index + 1:index + 3], 16))
            index += 3
        else:
            raw.extend(text[index].encode("utf-8", "surrogatepass"))
            index += 1
    return raw.decode("utf-8", "surrogatepass")

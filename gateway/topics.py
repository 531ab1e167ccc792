"""Device names as MQTT topic levels: one level each, reversible, unable to forge a topic.

`+ # /` and `%`, control characters, Unicode non-characters and surrogates are
percent-encoded, and so is a leading `$` (broker-reserved topics); the empty name
becomes a lone `%`. Decoding gives the name back, so two devices never share a topic.
"""

from __future__ import annotations


def _must_escape(ch: str) -> bool:
    code = ord(ch)
    return (ch in "%+#/" or code < 0x20 or 0x7F <= code <= 0x9F or 0xD800 <= code <= 0xDFFF
            or 0xFDD0 <= code <= 0xFDEF or code & 0xFFFE == 0xFFFE)


def sanitise_level(name: str) -> str:
    """`name` as exactly one topic level that can be neither a wildcard nor a `$` topic.

    '%', '+', '#', '/', control characters, non-characters and a leading '$' are
    percent-encoded (as UTF-8 bytes); the empty name becomes a lone '%', which no
    other name can give. Injective: `unsanitise_level` inverts it.
    """
    if not name:
        return "%"
    if name[0] != "$" and not any(map(_must_escape, name)):
        return name
    return "".join(
        "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
        if _must_escape(ch) or (index == 0 and ch == "$") else ch
        for index, ch in enumerate(name)
    )


def unsanitise_level(level: str) -> str:
    """The device name that `sanitise_level` turned into `level`."""
    if level == "%":
        return ""
    raw, index = bytearray(), 0
    while index < len(level):
        if level[index] == "%":
            raw.append(int(level[index + 1:index + 3], 16))
            index += 3
        else:
            raw.extend(level[index].encode("utf-8", "surrogatepass"))
            index += 1
    return raw.decode("utf-8", "surrogatepass")

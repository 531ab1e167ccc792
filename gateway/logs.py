"""Logging for the gateway: plain lines or JSON lines on stderr, with secrets redacted.

`setup("json" | "plain", level)` installs one handler on the root logger and
a log-record factory, so every record is redacted as it is made: `password=...`-style pairs
(`b'...'` reprs too), credentials in URLs, and every value given to `register_secret()`
(passwords read from files, also as they appear in a repr or bytes repr) are replaced by
`***` in the message, the extra fields and the traceback. The protocol libraries' loggers
(pymodbus, asyncua, paho) are silent unless the level is debug: the gateway's own line says
what happened. Loggers that echo whole protocol requests (asyncua's) stay at INFO even at
debug. Under systemd (stderr is the journal) lines carry a `<N>` syslog-priority prefix, which
journald turns into the entry's priority, and plain lines drop the timestamp journald already
records.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

from gateway.config_base import MASK

__all__ = ["JsonFormatter", "PlainFormatter", "RedactingFilter", "escape_controls", "redact",
           "register_secret", "setup"]

# Keys whose values are secrets: `password=x`, `token: x`, `"api_key": "x"`. A quoted value
# may be a Python repr, `b'...'` (bytes) or `'it\'s'`: the prefix and escapes are part of it.
_SECRET_PAIR = re.compile(
    r"""(?ix)
    (?P<key>\b[\w.-]*?(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key
        |private[_-]?key)["']?\s*[:=]\s*)
    (?:(?P<prefix>[bBrRuU]{0,2})(?P<quote>["'])(?P<quoted>(?:\\.|(?!(?P=quote))[^\\])*)(?P=quote)
      | (?P<bare>[^\s"',;&}\]]+))
    """
)
# scheme://user:password@host
_URL_CREDENTIALS = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+(?=@)", re.I)

# Characters that move the cursor, start a new line or drive the terminal: C0 and C1 controls,
# DEL, the Unicode line and paragraph separators, and the bidi overrides and isolates (which
# can make a line read differently from what it holds).
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED_CONTROLS = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

_secrets: set[str] = set()
_secrets_pattern: re.Pattern[str] | None = None
_secrets_lock = threading.Lock()

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName"}

_LIBRARY_LOGGERS = ("asyncua", "pymodbus", "paho")
# Above CRITICAL: no record of a library logger passes (pymodbus logs CRITICAL unconditionally).
_SILENT = logging.CRITICAL + 1
# Loggers that echo whole requests or responses at DEBUG: asyncua's "Sending: <request>"
# carries the user identity token (the password), the others the session's traffic. They
# stay at INFO even when the gateway runs at debug (registered secrets are masked anyway).
_ECHOING_LOGGERS = ("asyncua.client.ua_client.UASocketProtocol",
                    "asyncua.client.ua_client.UaClient", "asyncua.client.ua_session.UaSession",
                    "asyncua.server.uaprocessor", "asyncua.uaprotocol")


def register_secret(value: str) -> None:
    """Never log `value` (e.g. a password read from a file): it becomes *** in every record.

    So do the forms it takes inside a repr, a bytes repr (`b'p\\xc3\\xa4ss'`) and JSON,
    which escape some characters: a library that logs a request object shows those.
    """
    value = value.strip()
    if not value:
        return
    global _secrets_pattern
    with _secrets_lock:
        forms = _forms(value) - _secrets
        if not forms:
            return
        _secrets.update(forms)
        # Longest first, so a secret containing another is masked whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _secrets_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def _forms(value: str) -> set[str]:
    """`value` as it appears in a log line: as is, in a str or bytes repr, JSON-escaped."""
    forms = {value, repr(value)[1:-1], json.dumps(value)[1:-1],
             json.dumps(value, ensure_ascii=False)[1:-1]}
    try:
        forms.add(repr(value.encode("utf-8"))[2:-1])
    except UnicodeEncodeError:  # a lone surrogate: no bytes form
        pass
    return {form for form in forms if form}


def redact(text: str) -> str:
    """`text` with registered secrets, secret-looking key/value pairs and URL passwords masked."""
    pattern = _secrets_pattern
    if pattern is not None:
        text = pattern.sub(MASK, text)
    text = _SECRET_PAIR.sub(_mask_pair, text)
    return _URL_CREDENTIALS.sub(lambda m: m.group("head") + MASK, text)


def escape_controls(text: str) -> str:
    """`text` with control characters written as escapes (\\n, \\x1b, \\u2028): one line, inert.

    For text from outside (device data, config keys) that is echoed to an operator: it
    cannot start a forged line or send escape sequences to the terminal.
    """
    return _CONTROLS.sub(_escape_control, text)


def _escape_control(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED_CONTROLS:
        return _NAMED_CONTROLS[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _mask_pair(match: re.Match[str]) -> str:
    quote = match.group("quote") or ""
    prefix = match.group("prefix") or ""
    return f"{match.group('key')}{prefix}{quote}{MASK}{quote}"


def _redact_message(record: logging.LogRecord) -> None:
    """Mask the message (formatted now, with its arguments), the traceback and the stack."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string must not leak its arguments
        message = f"{record.msg} (log arguments could not be formatted)"
    record.msg, record.args = redact(message), None
    if record.exc_info and not record.exc_text:
        record.exc_text = _TRACEBACK.formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)


_TRACEBACK = logging.Formatter()


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message, extra fields, traceback and stack, in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_message(record)
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD and isinstance(value, str):
                record.__dict__[key] = redact(value)
        return True


def _install_record_factory() -> None:
    """Redact each record as it is made, so every handler (not only ours) gets it clean.

    `extra=` fields are attached after the factory runs; our handler's
    RedactingFilter covers those.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_millwright", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _redact_message(record)
        return record

    # A mark on the function, so a second setup() sees its own factory installed.
    factory._millwright = True  # type: ignore[attr-defined]  # functions take attributes
    logging.setLogRecordFactory(factory)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD}


def _syslog_prefix(record: logging.LogRecord) -> str:
    # sd-daemon(3) priorities: 3 error, 4 warning, 6 info, 7 debug.
    if record.levelno >= logging.ERROR:
        return "<3>"
    if record.levelno >= logging.WARNING:
        return "<4>"
    return "<6>" if record.levelno >= logging.INFO else "<7>"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extra fields, exc."""

    def __init__(self, *, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            entry.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        line = json.dumps(entry, default=str, ensure_ascii=False)
        return _syslog_prefix(record) + line if self.journal else line


class PlainFormatter(logging.Formatter):
    """`time LEVEL logger: message key=value ...`; under journald without the time.

    Control characters in the message and the extra fields are escaped, so text from
    a device cannot start a forged line; a traceback keeps its lines.
    """

    def __init__(self, *, journal: bool = False) -> None:
        fmt = "%(name)s: %(message)s" if journal else \
            "%(asctime)s %(levelname)s %(name)s: %(message)s"
        super().__init__(fmt)
        self.journal = journal

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        # The first line; the traceback and stack that format() appends are left as they are.
        return escape_controls(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            first, newline, rest = line.partition("\n")
            pairs = escape_controls(" ".join(f"{k}={v}" for k, v in extras.items()))
            line = f"{first} {pairs}{newline}{rest}"
        return _syslog_prefix(record) + line if self.journal else line


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """True when `stream` (stderr) is connected to journald ($JOURNAL_STREAM names it)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = expected.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


def setup(format: str = "plain", level: str | int = "info", *,  # noqa: A002 - the config name
          stream: TextIO | None = None) -> logging.Handler:
    """Send every log record to `stream` (stderr) as plain or JSON lines, secrets redacted.

    Calling it again replaces the handler it installed before; other handlers
    on the root logger (e.g. pytest's) are left alone.
    """
    if format not in ("plain", "json"):
        raise ValueError(f"log format '{format}' is not one of: plain, json")
    numeric = level if isinstance(level, int) else logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"log level '{level}' is not one of: debug, info, warning, error")
    stream = stream or sys.stderr
    journal = stderr_is_journal(stream)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(journal=journal) if format == "json"
                         else PlainFormatter(journal=journal))
    handler.addFilter(RedactingFilter())
    # A mark on the handler, so a second setup() replaces it instead of adding another.
    handler._millwright = True  # type: ignore[attr-defined]  # not a declared attribute
    _install_record_factory()
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_millwright", False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    # The protocol libraries narrate every connection attempt, retry ("Failed to connect",
    # "Repeating....") and unparsable frame (hex dumps of a stray client's bytes), up to ERROR.
    # The gateway logs each state change once in its own words (a device offline, and why),
    # so the libraries speak only when debugging.
    library_level = numeric if numeric <= logging.DEBUG else _SILENT
    for name in _LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library_level)
    for name in _ECHOING_LOGGERS:
        logging.getLogger(name).setLevel(max(library_level, logging.INFO))
    return handler

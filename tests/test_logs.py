"""gateway.logs: JSON and plain lines, levels, journald priorities, and secrets never written."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway import logs
from simulators.wait import until


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo setup(): its handler and the levels it set are process-wide."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    root = logging.getLogger()
    saved = root.level, {n: logging.getLogger(n).level for n in ("asyncua", "pymodbus", "paho")}
    factory = logging.getLogRecordFactory()
    yield
    logging.setLogRecordFactory(factory)
    for handler in [h for h in root.handlers if getattr(h, "_millwright", False)]:
        root.removeHandler(handler)
    root.setLevel(saved[0])
    for name, level in saved[1].items():
        logging.getLogger(name).setLevel(level)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines(stream)]


def secret() -> str:
    return f"s3cr3t-{uuid.uuid4().hex[:8]}"


def test_json_lines_carry_time_level_logger_message_and_extras() -> None:
    stream = io.StringIO()
    logs.setup("json", "info", stream=stream)
    logging.getLogger("gateway.runtime").warning(
        "device %s offline", "press-1", extra={"device": "press-1", "attempt": 3})
    [entry] = json_lines(stream)
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "gateway.runtime"
    assert entry["message"] == "device press-1 offline"
    assert entry["device"] == "press-1" and entry["attempt"] == 3
    assert entry["time"].endswith("Z") and "T" in entry["time"]


def test_json_exception_is_one_line_with_the_traceback() -> None:
    stream = io.StringIO()
    logs.setup("json", "info", stream=stream)
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        logging.getLogger("gateway.store").exception("commit failed")
    [entry] = json_lines(stream)
    assert entry["message"] == "commit failed"
    assert "RuntimeError: disk on fire" in entry["exc"]


def test_plain_lines() -> None:
    stream = io.StringIO()
    logs.setup("plain", "info", stream=stream)
    logging.getLogger("gateway.uplink").info("connected to %s", "broker", extra={"rtt_ms": 4})
    [line] = lines(stream)
    assert line.endswith(" INFO gateway.uplink: connected to broker rtt_ms=4")


def test_levels_and_quiet_libraries() -> None:
    stream = io.StringIO()
    logs.setup("plain", "info", stream=stream)
    logging.getLogger("gateway.x").debug("hidden")
    logging.getLogger("gateway.x").info("kept")
    logging.getLogger("asyncua.client").info("every connection attempt")
    logging.getLogger("asyncua.client").warning("a library's warning")
    logging.getLogger("pymodbus.logging").critical("a library's critical")
    logging.getLogger("paho.client").error("a library's error")
    assert [line.rsplit(": ", 1)[1] for line in lines(stream)] == ["kept"]

    stream = io.StringIO()
    logs.setup("plain", "DEBUG", stream=stream)
    logging.getLogger("gateway.x").debug("shown")
    logging.getLogger("asyncua.client").info("shown too")
    assert len(lines(stream)) == 2


def test_setup_twice_replaces_its_own_handler_only() -> None:
    foreign = logging.NullHandler()
    root = logging.getLogger()
    root.addHandler(foreign)
    try:
        first, second = io.StringIO(), io.StringIO()
        logs.setup("plain", "info", stream=first)
        logs.setup("json", "info", stream=second)
        logging.getLogger("gateway").info("once")
        assert first.getvalue() == ""
        assert len(json_lines(second)) == 1
        assert foreign in root.handlers
    finally:
        root.removeHandler(foreign)


@pytest.mark.parametrize(("fmt", "level"), [("xml", "info"), ("json", "loud")])
def test_bad_format_or_level(fmt: str, level: str) -> None:
    with pytest.raises(ValueError, match="is not one of"):
        logs.setup(fmt, level)


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_secrets_are_redacted_everywhere(fmt: str) -> None:
    from_file = secret()
    logs.register_secret(from_file + "\n")  # as read from a password file
    stream = io.StringIO()
    # At debug, where the libraries speak too: their records, propagated, are redacted as well.
    logs.setup(fmt, "debug", stream=stream)
    log = logging.getLogger("paho.client")
    log.info("CONNECT with password=%s", "hunter2")
    log.info('config {"password": "two words", "token": "abc"}')
    log.info("broker mqtts://bob:%s@cloud:8883 refused", "pa55")
    log.info("login as bob with %s failed", from_file)
    log.info("tls", extra={"detail": f"key is {from_file}"})
    try:
        raise PermissionError(f"bad credentials {from_file}")
    except PermissionError:
        log.exception("auth")
    log.info("broken %d format", from_file)  # args that do not fit the format
    text = stream.getvalue()
    for leaked in ("hunter2", "two words", "abc", "pa55", from_file):
        assert leaked not in text, leaked
    assert "password=***" in text
    assert "mqtts://bob:***@cloud:8883" in text
    assert "login as bob with *** failed" in text
    assert "bad credentials ***" in text
    # What looks like a secret's name but is a path stays readable.
    logging.getLogger("gateway").info("password_file=/etc/millwright/cloud.password")
    assert "password_file=/etc/millwright/cloud.password" in stream.getvalue()


def test_other_handlers_see_the_redacted_record(caplog: pytest.LogCaptureFixture) -> None:
    value = secret()
    logs.register_secret(value)
    logs.setup("plain", "info", stream=io.StringIO())
    logging.getLogger("gateway").info("value %s", value)
    assert value not in caplog.text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password=hunter2 rest", "password=*** rest"),
        ("mqtt_password: 'a b' rest", "mqtt_password: '***' rest"),
        ("auth_token=qq&x=1", "auth_token=***&x=1"),
        ("API-Key = zz", "API-Key = ***"),
        ("mqtts://broker:8883/x", "mqtts://broker:8883/x"),
        ("no secrets here", "no secrets here"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert logs.redact(text) == expected


def test_under_journald_lines_carry_the_priority_and_no_timestamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "journal").open("w+", encoding="utf-8") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.stderr_is_journal(stream)
        logs.setup("plain", "info", stream=stream)
        logging.getLogger("gateway.runtime").warning("device press-1 offline")
        logging.getLogger("gateway.runtime").error("outbox not writable")
        logs.setup("json", "info", stream=stream)
        logging.getLogger("gateway.runtime").info("started")
        stream.seek(0)
        written = stream.read().splitlines()
    assert written[0] == "<4>gateway.runtime: device press-1 offline"
    assert written[1] == "<3>gateway.runtime: outbox not writable"
    assert written[2].startswith("<6>{")
    assert json.loads(written[2][3:])["message"] == "started"


def test_journal_stream_of_another_file_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")
    stream = io.StringIO()  # no file descriptor at all
    assert not logs.stderr_is_journal(stream)
    logs.setup("plain", "info", stream=stream)
    logging.getLogger("gateway").info("x")
    assert not stream.getvalue().startswith("<")


async def library_noise() -> None:
    """A refused connection, then a stray client's garbage on a Modbus port while the driver
    reads it: what makes pymodbus log `Failed to connect` and hex dumps of the bytes."""
    from drivers.modbus.config import ModbusDeviceConfig
    from drivers.modbus.driver import ModbusDriver
    from gateway.errors import NotConnected
    from simulators.modbus_server import ModbusSimulator
    from simulators.plant import Plant

    def driver(port: int) -> ModbusDriver:
        return ModbusDriver(ModbusDeviceConfig.model_validate({
            "name": "press-1", "protocol": "modbus", "host": "127.0.0.1", "port": port,
            "timeout_s": 0.5, "points": [{"name": "speed", "table": "input", "address": 0,
                                          "type": "float32"}]}))

    async with ModbusSimulator(Plant()) as sim:
        port = sim.port
    with pytest.raises(NotConnected):  # nothing listens there any more
        await driver(port).connect()
    async with ModbusSimulator(Plant()) as sim:
        _, stray = await asyncio.open_connection(sim.host, sim.port)
        stray.write(b"\x00\x01\x12\x34\x00\x06\x01\x03\x00\x00\x00\x01")  # protocol id 0x1234
        await stray.drain()
        reader = driver(sim.port)
        await reader.connect()
        try:
            assert (await reader.poll()).frames  # the server answers the driver meanwhile
        finally:
            await reader.close()
            stray.close()


async def test_library_noise_is_silent_by_default_and_shown_when_debugging() -> None:
    stream = io.StringIO()
    logs.setup("plain", "info", stream=stream)
    await library_noise()
    assert not [line for line in lines(stream) if "pymodbus" in line], stream.getvalue()

    stream = io.StringIO()  # the same, at debug: the libraries say it all
    logs.setup("plain", "debug", stream=stream)
    await library_noise()
    await until(lambda: "Invalid Modbus protocol id" in stream.getvalue(), 10,
                "pymodbus's complaint about the stray bytes")
    assert "Failed to connect" in stream.getvalue()

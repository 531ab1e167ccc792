"""Commands, pure: parsing and every refusal case gives its status (gateway/commands.py)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway import commands, config, events
from gateway.command_ledger import CommandLedger
from gateway.command_runner import CommandInbox, Incoming
from gateway.errors import ConfigError
from tests.support import counter_driver
from tests.support.configs import base

NOW = 1_780_000_000.0
POINTS = [
    counter_driver.CounterPoint(name="speed", type="float32", writable=True, min=0, max=100),
    counter_driver.CounterPoint(name="mode", type="string", writable=True,
                                allowed=["auto", "manual"]),
    counter_driver.CounterPoint(name="run", type="bool", writable=True),
    counter_driver.CounterPoint(name="count", type="uint16", writable=True),
    counter_driver.CounterPoint(name="temp", type="float32"),
]


def payload(values: Any = None, *, at: float = NOW, **overrides: Any) -> bytes:
    body: dict[str, Any] = {
        "specversion": "1.0", "id": "cmd-1", "source": "/operator", "type": commands.COMMAND_TYPE,
        "time": events.rfc3339(at), "data": {"values": {"speed": 40} if values is None
                                              else values}}
    for key, value in overrides.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return json.dumps(body).encode()


def verdict(raw: bytes, *, online: bool = True, now: float = NOW, device: str = "press-1",
            known: bool = True) -> tuple[str, str]:
    try:
        command = commands.parse(raw, device)
        commands.check(command, POINTS if known else None, online=online, now=now,
                       max_age_s=30)
    except commands.Refused as refused:
        return refused.status, refused.reason
    return "ok", ""


def test_a_good_command_parses_and_passes() -> None:
    command = commands.parse(payload({"speed": 40, "mode": "auto", "run": True}), "press-1")
    assert command.id == "cmd-1" and command.device == "press-1"
    assert command.values == {"speed": 40, "mode": "auto", "run": True}
    assert command.time == pytest.approx(NOW)
    assert verdict(payload({"speed": 40, "mode": "auto", "run": True, "count": 7})) == ("ok", "")


CASES = [
    ("not json", b"{oops", "rejected", "malformed"),
    ("a batch", b"[]", "rejected", "malformed"),
    ("wrong type", payload(type="io.millwright.telemetry"), "rejected", "malformed"),
    ("no time", payload(time=None), "rejected", "malformed: no time"),
    ("no values", payload({}), "rejected", "malformed"),
    ("values not an object", payload([1]), "rejected", "malformed"),
    ("a value that is an object", payload({"speed": {"x": 1}}), "rejected", "malformed"),
    ("subject names another device", payload(subject="mill-2"), "rejected", "must agree"),
    ("unknown point", payload({"nope": 1}), "rejected", "unknown point 'nope'"),
    ("not writable", payload({"temp": 1}), "rejected", "not writable"),
    ("above max", payload({"speed": 101}), "rejected", "out of range"),
    ("below min", payload({"speed": -1}), "rejected", "out of range"),
    ("bool for a number", payload({"speed": True}), "rejected", "wrong type"),
    ("text for a number", payload({"speed": "fast"}), "rejected", "wrong type"),
    ("number for a bool", payload({"run": 1}), "rejected", "wrong type"),
    ("fraction for an integer", payload({"count": 1.5}), "rejected", "wrong type"),
    ("beyond uint16", payload({"count": 70000}), "rejected", "out of range"),
    ("not in allowed", payload({"mode": "turbo"}), "rejected", "not allowed"),
    ("stale", payload(at=NOW - 31), "expired", "over commands.max_age_s"),
    ("far in the future", payload(at=NOW + 31), "rejected", "in the future"),
]


@pytest.mark.parametrize(("raw", "status", "reason"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_each_refusal_has_its_status_and_reason(raw: bytes, status: str, reason: str) -> None:
    got_status, got_reason = verdict(raw)
    assert got_status == status and reason in got_reason, got_reason


def test_a_scaled_integer_point_takes_the_engineering_value() -> None:
    # A Modbus int16 register with scale 0.1: 21.4 is raw 214, 100000 at scale 10 is raw
    # 10000; the register type bounds the raw value, which the driver checks when it encodes.
    tenths = SimpleNamespace(name="setpoint", type="int16", writable=True, min=None,
                             max=None, allowed=None, scale=0.1, offset=0.0)
    tens = SimpleNamespace(**{**vars(tenths), "scale": 10.0})
    shifted = SimpleNamespace(**{**vars(tenths), "scale": 1.0, "offset": 0.5})
    assert commands.value_problem(tenths, 21.4) is None
    assert commands.value_problem(tens, 100000) is None
    assert commands.value_problem(shifted, 3.5) is None
    assert "wrong type" in (commands.value_problem(tenths, "fast") or "")
    assert "wrong type" in (commands.value_problem(tenths, True) or "")
    bounded = SimpleNamespace(**{**vars(tenths), "max": 50.0})
    assert "above max" in (commands.value_problem(bounded, 50.1) or "")
    unscaled = SimpleNamespace(**{**vars(tenths), "scale": 1.0})
    assert "wrong type" in (commands.value_problem(unscaled, 21.4) or "")


def test_unknown_device_offline_and_unsynchronised_clock() -> None:
    assert verdict(payload(), known=False)[0] == "rejected"
    assert "unknown device" in verdict(payload(), known=False)[1]
    status, reason = verdict(payload(), online=False)
    assert status == "rejected" and "offline" in reason
    status, reason = verdict(payload(at=100.0), now=120.0)
    assert status == "rejected" and "clock is not synchronised" in reason


def test_a_stale_command_is_expired_before_anything_else_is_checked() -> None:
    assert verdict(payload({"nope": 1}, at=NOW - 60), online=False)[0] == "expired"


def test_a_refusal_keeps_the_command_id_when_it_can_be_read() -> None:
    with pytest.raises(commands.Refused) as caught:
        commands.parse(payload(type="x.y"), "press-1")
    assert caught.value.command_id == "cmd-1"


def test_config_commands_section(tmp_path: Path) -> None:
    cfg = config.validate(base(tmp_path, "mqtt://127.0.0.1:1883"))
    assert cfg.commands.enabled is False and cfg.commands.max_age_s == 30
    with pytest.raises(ConfigError) as caught:
        config.validate(base(tmp_path, "mqtt://127.0.0.1:1883",
                             commands={"enabled": True, "max_age_s": 0}))
    assert any(line.startswith("commands.max_age_s") for line in caught.value.problems)
    with pytest.raises(ConfigError) as caught:
        config.validate(base(tmp_path, "mqtt://127.0.0.1:1883", commands={"enable": True}))
    assert any("commands.enable" in line for line in caught.value.problems)


async def test_the_ledger_runs_an_id_once_and_finds_interrupted_intents(tmp_path: Path) -> None:
    path = tmp_path / "commands.db"
    ledger = CommandLedger(path, keep_s=60)
    await ledger.open()
    assert await ledger.record_intent("a", "press-1", {"speed": 1})
    assert not await ledger.record_intent("a", "press-1", {"speed": 1})
    await ledger.record_intent("b", "press-1", {"speed": 2})
    await ledger.record_result("b", "press-1", {"status": "done"}, NOW)
    await ledger.mark_sent("b")
    await ledger.close()
    ledger = CommandLedger(path, keep_s=60)
    await ledger.open()
    unfinished = await ledger.unfinished()
    assert [(e.id, e.intent, e.result) for e in unfinished] == [("a", {"speed": 1}, None)]
    entry = await ledger.lookup("b")
    assert entry is not None and entry.result == {"status": "done"} and entry.sent
    await ledger.record_result("b", "press-1", {"status": "failed"}, NOW + 1)
    entry = await ledger.lookup("b")
    assert entry is not None and entry.result == {"status": "done"}  # one id, one result
    assert await ledger.prune(now=NOW * 2) == 1  # b: finished and old; a: not finished
    assert await ledger.lookup("b") is None and await ledger.lookup("a") is not None
    await ledger.close()


async def test_the_inbox_is_bounded_and_says_when_it_has_room_again() -> None:
    inbox = CommandInbox(capacity=2)
    rooms: list[int] = []
    inbox.on_room = lambda: rooms.append(len(inbox))

    def item(n: int) -> Incoming:
        return Incoming("press-1", str(n).encode(), lambda: None)

    assert inbox.offer(item(1)) is True
    assert inbox.offer(item(2)) is False  # full: the uplink stops reading its socket
    assert inbox.offer(item(3)) is False  # what was already read is kept, never dropped
    assert (await inbox.get()).payload == b"1" and rooms == []
    assert (await inbox.get()).payload == b"2" and rooms == [1]  # room again: read again
    assert (await inbox.get()).payload == b"3" and len(inbox) == 0


def _hostile_payloads(count: int) -> list[bytes]:
    import random

    rng = random.Random(15)
    scalars: list[Any] = [None, True, False, 0, -1, 2**63, 2**70, 1e308, -0.0, 1.5, "",
                          "speed", "\u202e", "x" * 300, [], {}, [1, [2]], {"a": {"b": 1}}]
    keys = ["specversion", "id", "source", "type", "time", "subject", "data", "values",
            "device", "speed", "mode", "run", "count", "temp", "Xtra"]

    def node(depth: int) -> Any:
        if depth > 3 or rng.random() < 0.4:
            return rng.choice(scalars)
        if rng.random() < 0.3:
            return [node(depth + 1) for _ in range(rng.randint(0, 3))]
        return {rng.choice(keys): node(depth + 1) for _ in range(rng.randint(0, 4))}

    found = []
    for index in range(count):
        body = json.loads(payload({"speed": 1}))
        for _ in range(rng.randint(1, 3)):  # one to three attributes mutated
            where = body if rng.random() < 0.5 else body["data"]
            if isinstance(where, dict):
                where[rng.choice(keys)] = node(0)
        text = json.dumps(body).encode()
        if index % 5 == 0:  # and some bytes cut or flipped
            cut = rng.randint(0, len(text))
            text = text[:cut] + bytes([rng.randint(0, 255)]) + text[cut + 1:]
        found.append(text)
    return found


def test_any_payload_is_a_command_or_a_refusal() -> None:
    for raw in _hostile_payloads(400):  # never another exception, whatever the bytes
        status, reason = verdict(raw)
        assert status in ("ok", *commands.STATUSES), raw
        assert (status == "ok") == (reason == ""), raw

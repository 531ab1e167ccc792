"""The poll schedule the runtime keeps for every polled device, alone and on a Modbus server."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from gateway.polling import MAX_STAGGER_S, PollSchedule, start_delay_s
from gateway.runtime import Gateway
from simulators.modbus_server import ModbusSimulator
from simulators.mosquitto import free_port
from simulators.plant import Plant
from simulators.wait import until
from tests.support import configs


def test_a_hundred_devices_do_not_poll_in_the_same_millisecond() -> None:
    phases = [PollSchedule.for_device(f"press-{i}", 1.0).phase_s for i in range(100)]
    per_ms = Counter(int(p * 1000) for p in phases)
    assert max(per_ms.values()) <= 3
    assert max(phases) - min(phases) > 0.9  # spread over the (1 s) interval


def test_start_up_is_staggered_over_at_most_a_second_and_little_for_a_few() -> None:
    delays = [start_delay_s(f"pump-{i}", 100, 60.0) for i in range(100)]
    assert max(delays) <= MAX_STAGGER_S and max(delays) - min(delays) > 0.9
    assert all(start_delay_s(f"pump-{i}", 100, 0.2) <= 0.2 for i in range(100))
    # Three devices need no second-long spread: they start within 30 ms.
    assert all(start_delay_s(name, 3) <= 0.03 for name in ("press-1", "mill-2", "pump-3"))
    assert max(start_delay_s(f"pump-{i}", 1000) for i in range(1000)) <= MAX_STAGGER_S


def test_missed_slots_are_skipped_and_counted_keeping_the_phase() -> None:
    schedule = PollSchedule(1.0, 0.25)
    schedule.restart(now=10.0)
    assert schedule.next_slot == 10.25 and schedule.wait_s(10.0) == 0.25
    assert schedule.advance(now=13.5) == 3  # the poll ran past 11.25, 12.25 and 13.25
    assert (schedule.next_slot, schedule.overruns) == (14.25, 3)
    assert schedule.advance(now=14.3) == 0
    assert (schedule.next_slot, schedule.overruns) == (15.25, 3)


def test_a_reconnect_keeps_the_phase() -> None:
    schedule = PollSchedule.for_device("mill-2", 0.5)
    schedule.restart(now=100.0)
    first = schedule.next_slot
    schedule.restart(now=1234.567)  # after an outage of any length
    assert schedule.next_slot > 1234.567
    assert (schedule.next_slot - first) / 0.5 == pytest.approx(
        round((schedule.next_slot - first) / 0.5))


def test_the_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        PollSchedule(0.0, 0.0)


def overruns(device: str) -> float:
    return REGISTRY.get_sample_value("millwright_device_poll_overruns_total",
                                     {"device": device}) or 0.0


async def test_a_poll_slower_than_its_interval_counts_overruns_and_keeps_polling(
        tmp_path: Path) -> None:
    async with ModbusSimulator(Plant()) as sim:
        device = {"name": "slow-press", "protocol": "modbus", "host": sim.host, "port": sim.port,
                  "unit_id": 1, "poll_interval_s": 0.1, "timeout_s": 2.0,
                  "points": [{"name": "speed", "table": "input", "address": 0,
                              "type": "float32"}]}
        raw = configs.base(tmp_path, f"mqtt://127.0.0.1:{free_port()}", [device])
        before = overruns("slow-press")
        async with Gateway(configs.validate(raw)) as gw:
            await until(lambda: gw.online["slow-press"], 10, "online")
            sim.set_fault(1, "slow", delay_s=0.35)  # each poll now spans at least 3 slots
            polled = sim.read_count(1)
            await until(lambda: sim.read_count(1) >= polled + 4, 10, "four slow polls")
            # Still online: a slow answer within timeout_s is not a failure.
            assert gw.online["slow-press"]
        # Every slow poll skipped at least two slots (0.35 s over 0.1 s slots).
        assert overruns("slow-press") - before >= 2 * 3

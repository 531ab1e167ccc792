"""The on-device predictor with the real bundled ONNX model: alarms, skips, batching, swaps."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from gateway.config import AssetConfig
from gateway.errors import ConfigError
from gateway.events import MAINTENANCE_NEEDED, Event
from gateway.frames import Frame
from gateway.predictor import Predictor, check_assets
from models.alarm import AlarmRule, alarm_steps
from models.batch import predict_asset
from models.onnx_model import BUNDLED_DIR, load_model
from models.table import AssetRows
from simulators.machine import SIGNALS, Machine, Sample, run_to_failure
from simulators.wait import until

STEP_S = 60.0


class Clock:
    """A settable clock: the predictor's notion of now, in simulated seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def asset(name: str, model: str = "bundled", **options: Any) -> AssetConfig:
    settings = {"alarm_after": 3, "cooldown_s": 1e9, "evaluate_every_s": STEP_S,
                "stale_after_s": 5 * STEP_S, **options}
    return AssetConfig(name=name, model=model,
                       inputs={signal: f"{name}/{signal}" for signal in SIGNALS}, **settings)


def readings(device: str, sample: Sample, at: float,
             signals: tuple[str, ...] = SIGNALS) -> list[Frame]:
    """The device's frame of `signals` at `at` (a list: what `observe` takes)."""
    values = sample.signals()
    return [Frame(device, at, {s: values[s] for s in signals}, at)]


async def replay(predictor: Predictor, clock: Clock, device: str,
                 history: list[Sample], start: float = 0.0) -> list[tuple[int, Event]]:
    """Feed one sample per step and evaluate after each; (step, event) for every alarm."""
    raised = []
    for step, sample in enumerate(history):
        clock.now = start + step * STEP_S
        predictor.observe(readings(device, sample, clock.now))
        raised.extend((step, event) for event in await predictor.evaluate())
    return raised


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def ready(*assets: AssetConfig, clock: Clock | None = None) -> Predictor:
    predictor = Predictor(list(assets), clock=clock or Clock())
    predictor.load()
    return predictor


async def test_a_wearing_machine_raises_one_event_windows_before_it_fails(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    predictor = ready(asset("press-a"), clock=clock)
    history = run_to_failure("press-a", seed=11, step_s=STEP_S)
    with caplog.at_level(logging.WARNING, logger="gateway.predictor"):
        raised = await replay(predictor, clock, "press-a", history)
    assert len(raised) == 1, [step for step, _ in raised]
    # One log line per alarm; its logger already names the predictor, the message does not.
    [logged] = [r.getMessage() for r in caplog.records if r.name == "gateway.predictor"]
    assert logged.startswith("maintenance needed for asset press-a (p="), logged
    step, event = raised[0]
    model = load_model("bundled")
    failure = len(history) - 1
    assert failure - step >= 3 * model.window  # a few windows of warning at least
    assert event.kind == MAINTENANCE_NEEDED and event.device == event.subject == "press-a"
    data = event.data
    assert data["probability"] >= model.threshold == data["threshold"]
    assert data["horizon_steps"] == model.horizon and data["horizon_s"] == model.horizon * STEP_S
    assert data["rul_s"] == pytest.approx(data["rul_steps"] * STEP_S, abs=0.05 * STEP_S)
    assert data["model"] == {"name": model.name, "version": model.version, "sha256": model.hash}
    assert data["evaluations_above"] >= 3 and data["window"] == model.window
    assert set(data["inputs"]) == set(model.inputs)
    assert data["inputs"]["vibration_mm_s"]["source"] == "press-a/vibration_mm_s"
    assert len(data["drivers"]) == 3 and all(d["feature"] in model.features
                                             for d in data["drivers"])
    assert event.time == step * STEP_S
    json.loads(event.encode("/lab/gw", 1))  # valid JSON without NaN

    # The device's probability is the offline batch prediction for the same step.
    values = np.array([[s.signals()[n] for n in model.inputs] for s in history])
    offline = predict_asset(model, AssetRows("press-a", np.arange(len(history)),
                                             np.arange(len(history)) * STEP_S), values)
    assert data["probability"] == pytest.approx(offline.probability[step], abs=1e-6)


async def test_event_ids_depend_only_on_the_inputs() -> None:
    history = run_to_failure("press-b", seed=12, step_s=STEP_S)
    ids = []
    for _ in range(2):
        clock = Clock()
        raised = await replay(ready(asset("press-b"), clock=clock), clock, "press-b", history)
        ids.append([event.id for _, event in raised])
    assert ids[0] and ids[0] == ids[1]


async def test_a_healthy_machine_raises_nothing() -> None:
    clock = Clock()
    machine = Machine("healthy-a", seed=13, life_s=math.inf)
    history = [machine.sample, *(machine.step(STEP_S) for _ in range(24 * 60))]
    before = metric("millwright_predictor_evaluations_total", asset="healthy-a")
    raised = await replay(ready(asset("healthy-a"), clock=clock), clock, "healthy-a", history)
    assert raised == []
    model = load_model("bundled")
    evaluated = metric("millwright_predictor_evaluations_total", asset="healthy-a") - before
    assert evaluated == len(history) - model.window + 1


async def test_missing_warming_and_stale_inputs_are_skipped_and_counted() -> None:
    clock = Clock()
    predictor = ready(asset("skip-a"), clock=clock)
    history = run_to_failure("skip-a", seed=14, step_s=STEP_S)

    def skipped(reason: str) -> float:
        return metric("millwright_predictor_skipped_total", asset="skip-a", reason=reason)

    # One input never arrives.
    for step in range(12):
        clock.now = step * STEP_S
        predictor.observe(readings("skip-a", history[step], clock.now, SIGNALS[:-1]))
        assert await predictor.evaluate() == []
    assert skipped("missing") == 12
    # All inputs, but fewer than a window of the last one.
    clock.now += STEP_S
    predictor.observe(readings("skip-a", history[12], clock.now))
    assert await predictor.evaluate() == []
    assert skipped("warming_up") == 1
    # Bad quality and non-finite readings never enter a window: the input goes stale.
    for step in range(13, 40):
        clock.now = step * STEP_S
        batch = readings("skip-a", history[step], clock.now, SIGNALS[:-1])
        batch.append(Frame("skip-a", clock.now, {SIGNALS[-1]: math.nan}, clock.now))
        batch.append(Frame("skip-a", clock.now, {SIGNALS[-1]: 1.0}, clock.now,
                           {SIGNALS[-1]: "bad"}))
        predictor.observe(batch)
        await predictor.evaluate()
    assert skipped("stale") > 0
    assert predictor.current_window("skip-a") is None


def test_a_fast_poll_feeds_the_window_once_per_training_step() -> None:
    clock = Clock()
    predictor = ready(asset("fast-a"), clock=clock)
    history = run_to_failure("fast-a", seed=16, step_s=1.0)
    # Readings every second for ten minutes: the bundled model's step is a minute.
    for second in range(10 * int(STEP_S)):
        clock.now = float(second)
        predictor.observe(readings("fast-a", history[second], float(second)))
    window = predictor.current_window("fast-a")
    assert window is not None  # ten readings taken, about one a minute
    second_of = {sample.speed_rpm: t for t, sample in enumerate(history)}
    seconds = [second_of[v] for v in window[:, SIGNALS.index("speed_rpm")]]
    spacing = [b - a for a, b in zip(seconds, seconds[1:], strict=False)]
    assert all(0.9 * STEP_S <= gap <= 1.1 * STEP_S for gap in spacing), seconds


async def test_evaluating_again_without_new_readings_is_not_new_evidence() -> None:
    clock = Clock()
    predictor = ready(asset("idle-a", evaluate_every_s=1.0, sample_every_s=0.0), clock=clock)
    history = run_to_failure("idle-a", seed=15, step_s=STEP_S)
    for step in range(10):
        predictor.observe(readings("idle-a", history[step], float(step)))
    clock.now = 10.0
    before = metric("millwright_predictor_evaluations_total", asset="idle-a")
    for _ in range(3):
        await predictor.evaluate()
        clock.now += 1.0
    assert metric("millwright_predictor_evaluations_total", asset="idle-a") - before == 1


def test_alarm_rule_needs_consecutive_evaluations_and_respects_cooldown() -> None:
    assert alarm_steps([0.9, 0.9, 0.1, 0.9, 0.9, 0.9, 0.9], 0.5, 3, 100) == [5]
    assert alarm_steps([0.9] * 10, 0.5, 2, 3) == [1, 4, 7]
    rule = AlarmRule(0.5, 2, cooldown=0)
    assert rule.update(0.6, 0) is False
    rule.interrupt()  # a skipped evaluation breaks the streak
    assert rule.update(0.6, 1) is False and rule.update(0.6, 2) is True


def test_describe_reports_normal_above_threshold_and_alarm_from_the_current_streak() -> None:
    predictor = ready(asset("m1"))
    state = predictor._groups[0].assets[0]
    rule = state.rule

    def feed(probability: float, now: float) -> str:
        state.last_probability = probability
        rule.update(probability, now)
        return str(predictor.describe()[0]["state"])

    assert predictor.describe()[0]["state"] == "normal"  # nothing evaluated yet
    high, low = rule.threshold + 0.01, rule.threshold - 0.01
    assert [feed(high, t) for t in range(3)] == ["above threshold"] * 2 + ["alarm"]
    assert feed(low, 3) == "normal"
    # After an alarm, a new streak is "above threshold" until it is long enough again.
    assert [feed(high, t) for t in range(4, 7)] == ["above threshold"] * 2 + ["alarm"]


def test_a_swap_recomputes_the_sampling_gaps_from_the_new_model() -> None:
    predictor = ready(asset("g1"), asset("g2", sample_every_s=7.0))
    group = predictor._groups[0]
    assert group.model.step_s and group.gaps == [group.model.step_s, 7.0]
    snapshot = copy.copy(group.model)
    snapshot.window = 1  # a snapshot model takes every reading
    group.swap(snapshot)
    assert group.gaps == [0.0, 7.0]


async def test_cooldown_spaces_repeated_alarms() -> None:
    clock = Clock()
    predictor = ready(asset("cool-a", cooldown_s=20 * STEP_S), clock=clock)
    machine = Machine("cool-a", seed=16, life_s=6 * 3600.0)
    history = [machine.sample, *(machine.step(STEP_S) for _ in range(7 * 60))]  # stays failed
    raised = await replay(predictor, clock, "cool-a", history)
    times = [event.time for _, event in raised]
    assert len(times) >= 3
    assert all(b - a >= 20 * STEP_S for a, b in zip(times, times[1:], strict=False))
    assert len({event.id for _, event in raised}) == len(raised)


async def test_all_due_assets_are_evaluated_in_one_batched_call() -> None:
    clock = Clock()
    names = [f"fleet-{i}" for i in range(100)]
    predictor = ready(*(asset(n) for n in names), clock=clock)
    machines = [Machine(n, seed=100 + i) for i, n in enumerate(names)]
    for step in range(10):
        clock.now = step * STEP_S
        for name, machine in zip(names, machines, strict=True):
            predictor.observe(readings(name, machine.step(STEP_S), step * STEP_S))
    clock.now = 10 * STEP_S
    calls = metric("millwright_predictor_batch_seconds_count")
    await predictor.evaluate()  # 100 rows: computed off the event loop
    assert metric("millwright_predictor_batch_seconds_count") - calls == 1
    assert all(metric("millwright_predictor_evaluations_total", asset=n) == 1 for n in names)


async def test_run_evaluates_every_tick_and_emits_until_cancelled() -> None:
    predictor = ready(asset("live-a", evaluate_every_s=0.02, stale_after_s=3600.0,
                            alarm_after=1, sample_every_s=0.0))
    history = run_to_failure("live-a", seed=17, step_s=STEP_S)
    for sample in history[-15:]:  # the last window before failure: certainly alarming
        predictor.observe(readings("live-a", sample, at=time.time()))
    emitted: list[Event] = []

    async def emit(events: list[Event]) -> None:
        emitted.extend(events)

    task = asyncio.create_task(predictor.run(emit))
    await until(lambda: emitted, 10, "a maintenance event from run()")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert emitted[0].device == "live-a"


# -- model directories refused at load / `millwright check` ----------------------------

def copy_bundled(tmp_path: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(BUNDLED_DIR, target)
    return target


def edit_json(directory: Path, change: Any) -> None:
    path = directory / "model.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def corrupt_with_matching_hash(directory: Path) -> None:
    import hashlib

    garbage = b"\x08\x07 this is not a protobuf"
    (directory / "model.onnx").write_bytes(garbage)
    edit_json(directory, lambda m: m["files"]["classifier"].update(
        sha256=hashlib.sha256(garbage).hexdigest()))


BAD_MODELS = {
    "missing directory": (lambda d: shutil.rmtree(d), "no such model directory"),
    "damaged onnx": (lambda d: (d / "model.onnx").write_bytes(b"garbage"),
                     "does not match model.json"),
    "not onnx at all": (corrupt_with_matching_hash, "onnxruntime cannot load it"),
    "json syntax": (lambda d: (d / "model.json").write_text("{"), "not readable JSON"),
    "feature order": (lambda d: edit_json(d, lambda m: m["features"].reverse()),
                      "'features' does not match"),
    "input order": (lambda d: edit_json(d, lambda m: m["inputs"].reverse()),
                    "'features' does not match"),
    "window": (lambda d: edit_json(d, lambda m: m.update(window=12)),
               "trained on windows of 10 steps but model.json says 'window' 12"),
    "threshold": (lambda d: edit_json(d, lambda m: m.update(threshold=1.5)),
                  "'threshold' must be a number between 0 and 1"),
    "rul file gone": (lambda d: (d / "rul.onnx").unlink(), "rul.onnx: cannot read"),
}


@pytest.mark.parametrize("case", BAD_MODELS)
def test_bad_model_directories_are_refused_with_one_clear_line(tmp_path: Path,
                                                                case: str) -> None:
    damage, message = BAD_MODELS[case]
    directory = copy_bundled(tmp_path)
    damage(directory)
    assets = [asset("good"), asset("bad", model=str(directory))]
    problems = check_assets(assets)
    assert len(problems) == 1, problems
    assert problems[0].startswith("assets[1].model (asset 'bad'): ")
    assert message in problems[0]
    with pytest.raises(ConfigError) as raised:
        Predictor(assets).load()
    assert raised.value.problems == problems


def test_inputs_that_do_not_match_the_model_and_duplicate_names() -> None:
    wrong = AssetConfig(name="w", inputs={"speed_rpm": "w/speed_rpm", "torque": "w/torque"})
    problems = check_assets([wrong, asset("dup"), asset("dup")])
    assert problems[0].startswith("assets[0].inputs (asset 'w'): model 'millwright-bundled' "
                                  "takes inputs speed_rpm, current_a")
    assert "missing current_a, temperature_c, vibration_mm_s, pressure_bar" in problems[0]
    assert "unknown torque" in problems[0]
    assert problems[1].startswith("assets[2].name (asset 'dup'): duplicate of assets[1]")


async def test_replacing_the_model_files_swaps_the_model_without_a_restart(
        tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    from models.train import TrainOptions, train
    from simulators.dataset import write_dataset

    live = copy_bundled(tmp_path)
    write_dataset(tmp_path / "data.csv", machines=6, seed=300)
    replacement = train(TrainOptions(data=tmp_path / "data.csv", out=tmp_path / "v2",
                                     window=6, horizon=60, estimators=20, name="retrained",
                                     version="2")).directory
    clock = Clock()
    predictor = ready(asset("swap-a", model=str(live), alarm_after=1, cooldown_s=0), clock=clock)
    history = run_to_failure("swap-a", seed=18, step_s=STEP_S)
    first = await replay(predictor, clock, "swap-a", history[:-5])
    assert first and first[-1][1].data["model"]["version"] == "1"

    # A damaged file arriving is refused: the running model stays.
    (live / "model.onnx").write_bytes(b"half a file")
    kept = await replay(predictor, clock, "swap-a", history[-5:], start=clock.now + STEP_S)
    assert kept and all(e.data["model"]["version"] == "1" for _, e in kept)

    # The complete new model (another window length) is picked up at the next tick.
    for name in ("model.onnx", "rul.onnx", "model.json"):
        shutil.copy2(replacement / name, live / name)
    swapped = await replay(predictor, clock, "swap-a", history[-5:], start=clock.now + STEP_S)
    assert swapped, "the new model evaluates at once on the history it kept"
    new = swapped[-1][1].data
    assert new["model"]["name"] == "retrained" and new["model"]["version"] == "2"
    assert new["window"] == 6


def test_millwright_check_names_the_bad_model(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main
    from simulators.modbus_server import device_points
    from tests.support import configs

    directory = copy_bundled(tmp_path)
    (directory / "model.onnx").write_bytes(b"garbage")
    raw = configs.base(tmp_path, "mqtt://127.0.0.1:1883", [
        {"name": "press-1", "protocol": "modbus", "host": "127.0.0.1", "port": 5020,
         "unit_id": 1, "points": device_points()}])
    raw["assets"] = [{"name": "press-1", "model": "model",
                      "inputs": {s: f"press-1/{s}" for s in SIGNALS}}]
    path = configs.write(tmp_path / "gateway.toml", raw)
    assert main(["check", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("assets[0].model (asset 'press-1'): ")
    assert f"{directory}/model.onnx: SHA-256" in err[0] and "Traceback" not in err[0]
    raw["assets"][0]["model"] = "bundled"
    assert main(["check", "--config", str(configs.write(path, raw))]) == 0

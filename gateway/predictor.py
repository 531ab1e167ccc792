"""On-device failure prediction: rolling windows per asset -> batched ONNX -> maintenance events.

Each `[[assets]]` entry maps the model's inputs to device points. `observe` takes the
frames the gateway accepts and appends every good value of a mapped point to that
input's ring buffer (count-based windows, as in training); a categorical input's
text is held as its category's index, as training encoded it (model.json's
`categories`). A snapshot model (window 1) evaluates each asset's newest values.
Every tick, the assets that are due and have new data are evaluated together, one
onnxruntime call per model directory, with the feature code training
used (models.features via models.onnx_model). An asset whose inputs are missing, stale
or not yet a full window is not predicted; the skip is counted in
`millwright_predictor_skipped_total{reason}`. `maintenance_needed` is raised when the
probability stays at or above the model's threshold for `alarm_after` evaluations, then
not again for `cooldown_s`. Replacing the model files on disk swaps the model in at the
next tick; a directory that fails validation is logged once and the old model stays.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway import metrics
from gateway.config import AssetConfig
from gateway.errors import ConfigError
from gateway.events import Event, maintenance_needed
from gateway.frames import Frame
from gateway.predictor_groups import AssetState, ModelGroup, finite
from models.features import UNKNOWN_CATEGORY, category_text
from models.onnx_model import Model, ModelError, file_signature, load_model, resolve_model_dir

log = logging.getLogger(__name__)

#: Batches at least this large are computed in a worker thread so the loop stays responsive.
OFFLOAD_ROWS = 64
#: How often (by the predictor's clock) the model files are looked at for a replacement.
RELOAD_CHECK_S = 1.0


def _where(index: int, asset: AssetConfig, key: str) -> str:
    return f"assets[{index}].{key} (asset '{asset.name}')"


def _input_problems(index: int, asset: AssetConfig, model: Model) -> list[str]:
    missing = [name for name in model.inputs if name not in asset.inputs]
    unknown = [name for name in asset.inputs if name not in model.inputs]
    if not (missing or unknown):
        return []
    parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
        [f"unknown {', '.join(unknown)}"] if unknown else [])
    return [f"{_where(index, asset, 'inputs')}: model '{model.name}' takes inputs "
            f"{', '.join(model.inputs)}; {'; '.join(parts)}. Map each of its inputs to "
            "'DEVICE/POINT'"]


def _load_all(assets: Sequence[AssetConfig]) -> tuple[dict[Path, Model], list[str]]:
    models: dict[Path, Model] = {}
    failed: dict[Path, str] = {}
    problems: list[str] = []
    names: dict[str, int] = {}
    for index, asset in enumerate(assets):
        if asset.name in names:
            problems.append(f"{_where(index, asset, 'name')}: duplicate of assets"
                            f"[{names[asset.name]}]; asset names must be unique")
        names.setdefault(asset.name, index)
        directory = resolve_model_dir(asset.model)
        if directory not in models and directory not in failed:
            try:
                models[directory] = load_model(directory)
            except ModelError as exc:
                failed[directory] = str(exc)
        if directory in failed:
            problems.append(f"{_where(index, asset, 'model')}: {failed[directory]}")
        else:
            problems.extend(_input_problems(index, asset, models[directory]))
    return models, problems


def check_assets(assets: Sequence[AssetConfig]) -> list[str]:
    """Problems with the assets' models, one line each, for `millwright check`."""
    return _load_all(assets)[1]


class Predictor:
    """Evaluates every configured asset's model on the readings the gateway accepts."""

    def __init__(self, assets: Sequence[AssetConfig], *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.assets = list(assets)
        # Monotonic: a wall clock stepped back (NTP, an operator) must not stop the
        # schedule (evaluations, sample gaps, staleness, cooldown). Reading times on the
        # wall clock are kept only for the events.
        self._clock = clock
        self._groups: list[ModelGroup] = []
        # device -> point -> where its values go (the few mapped points of a large frame)
        self._routes: dict[str, dict[str, list[tuple[ModelGroup, int, int]]]] = {}
        self.tick_s = min((a.evaluate_every_s for a in self.assets), default=5.0)
        self._files_checked = -math.inf

    def load(self) -> None:
        """Load and check every model; ConfigError lists every problem found."""
        models, problems = _load_all(self.assets)
        if problems:
            raise ConfigError(problems)
        by_dir: dict[Path, list[tuple[int, AssetConfig]]] = {}
        for index, asset in enumerate(self.assets):
            by_dir.setdefault(resolve_model_dir(asset.model), []).append((index, asset))
        self._groups, self._routes = [], {}
        for directory, configs in by_dir.items():
            group = ModelGroup(directory, models[directory], configs)
            self._groups.append(group)
            for row, (_, config) in enumerate(configs):
                for model_input, source in config.inputs.items():
                    device, _, point = source.partition("/")
                    self._routes.setdefault(device, {}).setdefault(point, []).append(
                        (group, row, group.buffers.columns.index(model_input)))
        for directory, model in models.items():
            log.info("model %s version %s (%s) for %d assets", model.name,
                     model.version, directory, len(by_dir[directory]))

    def observe(self, frames: Sequence[Frame]) -> None:
        """Append each good numeric value of a mapped point to its input's window."""
        routes = self._routes
        at = self._clock()  # when the gateway took the readings, on the predictor's clock
        for frame in frames:
            mapped = routes.get(frame.device)
            if mapped is None:
                continue
            received = frame.received
            for point, targets in mapped.items():
                value = frame.values.get(point)
                if value is None or point in frame.quality:
                    continue
                number = finite(value)
                for group, row, col in targets:
                    codes = group.codes[col]
                    if codes is not None:  # a categorical input: its category's code
                        entry = codes.get(category_text(value), UNKNOWN_CATEGORY)
                    elif number is None:
                        continue
                    else:
                        entry = number
                    if group.take(row, col, at):
                        group.buffers.push(row, col, entry, at)
                        group.wall[row, col] = received

    def current_window(self, asset: str) -> np.ndarray | None:
        """The asset's current (window, inputs) values in model input order, oldest first;
        None until every input has a full window. For diagnostics and tests."""
        for group in self._groups:
            for a in group.assets:
                if a.name == asset:
                    if not group.buffers.full(a.row):
                        return None
                    return group.buffers.windows(np.array([a.row]), group.model.inputs)[0]
        raise KeyError(f"no asset named '{asset}'")

    def describe(self) -> list[dict[str, Any]]:
        """Each asset's last probability, its streak above the threshold and its model (for
        the page); `state` is "alarm" while the current streak above the threshold is long
        enough to alarm (whether or not the cooldown let it raise an event)."""
        out = []
        for group in self._groups:
            model = group.model
            for a in group.assets:
                rule = a.rule
                above = a.last_probability is not None and a.last_probability >= rule.threshold
                # An alarm stays on while the streak above the threshold lasts.
                state = "alarm" if above and rule.consecutive >= rule.alarm_after else (
                    "above threshold" if above else "normal")
                out.append({"name": a.name, "probability": a.last_probability,
                            "threshold": rule.threshold, "above": rule.consecutive,
                            "alarm_after": rule.alarm_after, "state": state,
                            "skipped": a.skip_reason, "model": {
                                "name": model.name, "version": model.version,
                                "sha256": model.hash}})
        return out

    async def run(self, emit: Callable[[list[Event]], Awaitable[None]]) -> None:
        """Every tick: swap changed models in, evaluate due assets, emit alarms. Until cancelled."""
        while True:
            events = await self.evaluate()
            if events:
                await emit(events)
            await asyncio.sleep(self.tick_s)

    async def evaluate(self) -> list[Event]:
        """One tick: the maintenance events raised by evaluating every due asset."""
        out: list[Event] = []
        now = self._clock()
        check_files = now - self._files_checked >= RELOAD_CHECK_S
        if check_files:
            self._files_checked = now
        for group in self._groups:
            if check_files:
                await self._reload_if_changed(group)
            out.extend(await self._evaluate_group(group, self._clock()))
        return out

    async def _evaluate_group(self, group: ModelGroup, now: float) -> list[Event]:
        due = [a for a in group.assets if a.next_due <= now]
        if not due:
            return []
        rows = np.array([a.row for a in due], dtype=np.int64)
        ready = []
        buffers = group.buffers
        for asset, reason in zip(due, buffers.not_ready(rows, now), strict=True):
            asset.next_due = now + asset.config.evaluate_every_s
            if reason != asset.skip_reason:
                log.info("asset %s %s", asset.name, f"not evaluated: {reason} inputs"
                         if reason else "evaluated: inputs complete")
                asset.skip_reason = reason
            if reason is not None:
                metrics.PREDICTOR_SKIPPED.labels(asset.name, reason).inc()
                asset.rule.interrupt()
            elif buffers.fresh[asset.row]:  # nothing new since the last evaluation: no new evidence
                ready.append(asset)
        if not ready:
            return []
        rows = np.array([a.row for a in ready], dtype=np.int64)
        model = group.model
        windows = buffers.windows(rows, model.inputs)
        stamps = group.wall[rows][:, [buffers.columns.index(n) for n in model.inputs]]
        buffers.fresh[rows] = False
        started = time.perf_counter()
        try:
            if len(ready) >= OFFLOAD_ROWS:
                features, prediction = await asyncio.to_thread(model.predict_windows, windows)
            else:
                features, prediction = model.predict_windows(windows)
        except ModelError as exc:
            if not group.failing:
                log.error("%s; its assets are not evaluated until it runs", exc)
            group.failing = True
            for asset in ready:
                metrics.PREDICTOR_SKIPPED.labels(asset.name, "model_error").inc()
                asset.rule.interrupt()
            return []
        if group.failing:
            log.info("model in %s runs again", group.directory)
            group.failing = False
        metrics.PREDICTOR_LATENCY.observe(time.perf_counter() - started)
        events = []
        for i, asset in enumerate(ready):
            probability = float(prediction.probability[i])
            asset.evaluations.inc()
            asset.probability.set(probability)
            asset.last_probability = probability
            if asset.rule.update(probability, now):
                rul = None if prediction.rul_steps is None else float(prediction.rul_steps[i])
                events.append(self._event(asset, model, probability, rul, windows[i],
                                          features[i], stamps[i]))
                metrics.PREDICTOR_ALARMS.labels(asset.name).inc()
                log.warning("maintenance needed for asset %s (p=%.3f)", asset.name,
                            probability)
        return events

    def _event(self, asset: AssetState, model: Model, probability: float, rul: float | None,
               window: np.ndarray, features: np.ndarray, stamps: np.ndarray) -> Event:
        step = model.step_s
        inputs: dict[str, dict[str, Any]] = {}
        for j, name in enumerate(model.inputs):
            series = window[:, j]
            source = asset.config.inputs[name]
            if name in model.categories:
                code = int(series[-1])
                known = 0 <= code < len(model.categories[name])
                inputs[name] = {"source": source,
                                "last": model.categories[name][code] if known else None}
            else:
                inputs[name] = {"source": source, "last": float(series[-1]),
                                "mean": round(float(series.mean()), 6)}
        newest = stamps.tolist()  # each input's newest reading time, in model input order
        data: dict[str, Any] = {
            "asset": asset.name,
            "probability": round(probability, 6),
            "threshold": model.threshold,
            "horizon_steps": model.horizon,
            "horizon_s": model.horizon * step if step else None,
            "rul_steps": None if rul is None else round(rul, 1),
            "rul_s": None if rul is None or not step else round(rul * step, 1),
            "evaluations_above": asset.rule.consecutive,
            "window": model.window,
            "model": {"name": model.name, "version": model.version, "sha256": model.hash},
            "inputs": inputs,
            "drivers": model.deviations(features),
        }
        # The id hashes what the prediction was made from: the model and each input's newest
        # reading time, so a replay of the same inputs yields the same event id.
        key = (model.hash, list(zip(model.inputs, newest, strict=True)))
        return maintenance_needed(asset.name, data, key, at=max(newest))

    async def _reload_if_changed(self, group: ModelGroup) -> None:
        signature = file_signature(group.directory)
        if signature in (group.signature, group.rejected):
            return
        try:
            model = await asyncio.to_thread(load_model, group.directory)
            problems = [line for a in group.assets
                        for line in _input_problems(a.index, a.config, model)]
            if problems:
                raise ModelError("; ".join(problems))
        except ModelError as exc:
            group.rejected = signature
            log.error("keeping model %s version %s; the new files in %s are "
                      "refused: %s", group.model.name, group.model.version, group.directory, exc)
            return
        old = group.model
        group.swap(model)
        group.signature, group.rejected = signature, None
        log.info("model in %s swapped: %s %s (%s...) -> %s %s (%s...)",
                 group.directory, old.name, old.version, old.hash[:12], model.name,
                 model.version, model.hash[:12])

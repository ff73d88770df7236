"""One iteration: every target's windows from Prometheus, one set of v2 calls for all of them, publish.

Per target state lives in `TargetState` (its view on /metrics, its live accuracy, its last status),
so a failure of one dependency is counted by reason, logged once when the status changes (and once when
it recovers), and never stops the loop. A target whose last success is older than 3 intervals is
stale: its forecasts are withdrawn from /metrics and `perf_predictor_forecast_stale` is 1.

A target with `capacity` has a `Recommender` fed with every fresh forecast at the capacity's quantile;
its recommendation is part of the published forecasts, so it is withdrawn with them when they go stale
and is never computed from an old forecast. The windows read for the forecast also carry the actuals
that score earlier recommendations (the capacity's live calibration).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from training.sources.prometheus import PrometheusError

from .accuracy import LiveAccuracy
from .capacity import Recommender
from .config import Config, Target
from .history import PrometheusReader, Windows
from .publish import Forecasts, LoopMetrics, ThresholdLine, duration_label, quantile_label, series_labels
from .v2_client import ModelError, ModelSpec, V2Client

logger = logging.getLogger("forecast_loop")
STALE_INTERVALS = 3


class TargetError(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class TargetState:
    target: Target
    status: str = "starting"
    accuracy: Optional[LiveAccuracy] = None
    horizons: tuple = ()
    thresholds: tuple = ()
    spec: Optional[ModelSpec] = field(default=None, repr=False)
    recommender: Optional[Recommender] = None
    capacity_index: int = 0  # the capacity quantile's row in the model's outputs
    median_index: int = 0  # the model's quantile nearest 0.5 (accuracy's median, calibration's centre)


class ForecastLoop:
    def __init__(self, config: Config, clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self.reader = PrometheusReader(config.prometheus)
        self.model = V2Client(config.model)
        self.metrics = LoopMetrics([t.name for t in config.targets], config.interval)
        self.states = {t.name: TargetState(t, recommender=Recommender(t.capacity, config.interval)
                                           if t.capacity is not None else None) for t in config.targets}
        self.spec: Optional[ModelSpec] = None
        self.started = clock()
        self.iteration = 0  # iterations run; `iterated` is notified after each (the scaler's streams wait on it)
        self.iterated = threading.Condition()

    # -- status, counted and logged once per change ------------------------------------------------
    def _failed(self, state: TargetState, reason: str, message: str) -> None:
        self.metrics.errors.labels(state.target.name, reason).inc()
        if state.status != reason:
            logger.warning("target %s: %s (%s); will retry every %gs", state.target.name, message, reason,
                           self.config.interval)
            state.status = reason

    def _succeeded(self, state: TargetState, count: int) -> None:
        if state.status != "ok":
            logger.info("target %s: forecasting %d series%s", state.target.name, count,
                        "" if state.status == "starting" else f" again (was {state.status})")
            state.status = "ok"

    def _mark_staleness(self, now: float) -> None:
        limit = STALE_INTERVALS * self.config.interval
        for state in self.states.values():
            view = self.metrics.views[state.target.name]
            since = view.last_success if view.last_success is not None else self.started
            view.stale = now - since > limit
            if view.stale and view.forecasts is not None:
                view.show(None)

    # -- per target setup against the model --------------------------------------------------------
    def _prepare(self, state: TargetState, spec: ModelSpec) -> None:
        """Horizons, thresholds and accuracy for this model; raises TargetError when they do not fit it."""
        if state.spec == spec:
            return
        target = state.target
        step = spec.step if spec.step is not None else self.config.model.step
        if step is None:
            raise TargetError("model_step_unknown", "the model does not publish its step; set model.step")
        if step != target.step:
            raise TargetError("step_mismatch", f"step {target.step:g}s differs from the model's {step:g}s")
        horizons = []
        for seconds in self.config.horizons:
            index = int(seconds // target.step) - 1
            if index >= spec.horizon:
                raise TargetError("horizon_beyond_model", f"horizon {duration_label(seconds)} is beyond the "
                                  f"model's {spec.horizon} steps of {target.step:g}s")
            horizons.append((duration_label(seconds), index))
        lines = []
        if target.thresholds is not None:
            for level in target.thresholds.levels:
                q = target.thresholds.quantile
                if q is None:
                    q = spec.quantiles[-1] if level.direction == "above" else spec.quantiles[0]
                if q not in spec.quantiles:
                    raise TargetError("quantile_not_served", f"thresholds.quantile {q:g} is not one of the "
                                      f"model's {', '.join(map(quantile_label, spec.quantiles))}")
                lines.append(ThresholdLine(level.severity, level.direction, quantile_label(q), level.value))
        if target.capacity is not None:
            if target.capacity.quantile not in spec.quantiles:
                raise TargetError("quantile_not_served", f"capacity.quantile {target.capacity.quantile:g} is not "
                                  f"one of the model's {', '.join(map(quantile_label, spec.quantiles))}")
            state.capacity_index = spec.quantiles.index(target.capacity.quantile)
        median = spec.median_index
        if target.capacity is not None and target.capacity.calibrate and \
                not spec.quantiles[median] < target.capacity.quantile:
            raise TargetError("quantile_not_served", f"capacity.calibrate needs a model quantile nearer the median "
                              f"than capacity.quantile {target.capacity.quantile:g} (the model serves "
                              f"{', '.join(map(quantile_label, spec.quantiles))})")
        state.median_index = median
        state.accuracy = LiveAccuracy(int(target.step), spec.horizon, self.config.accuracy_window, median)
        state.horizons, state.thresholds, state.spec = tuple(horizons), tuple(lines), spec
        self.metrics.views[target.name].thresholds = state.thresholds

    # -- one iteration -----------------------------------------------------------------------------
    def run_once(self) -> None:
        started = time.perf_counter()
        now = self.clock()
        try:  # every iteration: a replaced model (new W, H, step or quantiles) is seen at once
            self.spec = spec = self.model.spec()
        except ModelError as exc:
            for state in self.states.values():
                self._failed(state, exc.reason, str(exc))
            self._mark_staleness(now)
            return
        gathered: list[tuple[TargetState, Windows, int]] = []
        for state in self.states.values():
            view = self.metrics.views[state.target.name]
            try:
                self._prepare(state, spec)
                end = int(now // state.target.step * state.target.step)
                windows = self.reader.windows(state.target, spec.window, end)
            except (TargetError, PrometheusError) as exc:
                self._failed(state, exc.reason, str(exc))
                continue
            view.skipped = dict(windows.skipped)
            if not windows.keys:
                view.series = 0
                what = "no series" if not windows.returned else f"no usable series ({dict(windows.skipped)})"
                self._failed(state, "no_series", f"the query returned {what}")
                continue
            gathered.append((state, windows, end))
        if gathered:
            self._forecast(gathered, spec, now)
        self._mark_staleness(now)
        self.metrics.duration.observe(time.perf_counter() - started)

    def _forecast(self, gathered: list, spec: ModelSpec, now: float) -> None:
        try:
            forecasts = self.model.forecast(np.concatenate([w.values for _, w, _ in gathered]), spec)
        except ModelError as exc:
            for state, _, _ in gathered:
                self._failed(state, exc.reason, str(exc))
            return
        lo = 0
        for state, windows, end in gathered:
            n = len(windows.keys)
            mine = forecasts[:, lo: lo + n]
            lo += n
            name = state.target.name
            view = self.metrics.views[name]
            recommendation = None
            if state.recommender is not None:
                recommendation = state.recommender.update(now, end, state.target.step, windows.keys,
                                                          mine[state.capacity_index], mine[state.median_index],
                                                          windows.values)
            view.show(Forecasts(
                labels=[series_labels(name, key) for key in windows.keys], values=mine,
                quantiles=tuple(quantile_label(q) for q in spec.quantiles), horizons=state.horizons, origin=end,
                actual=windows.values[:, -1].copy(), recommendation=recommendation))
            view.series = n
            view.last_success = now
            state.accuracy.observe(end, windows.keys, windows.values, mine)
            view.score = state.accuracy.score()
            self._succeeded(state, n)

    def run(self, stop: threading.Event) -> None:
        """Iterate every `interval` (measured start to start) until `stop` is set."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.run_once()
            except Exception:  # a bug, not a dependency: say so, keep the loop alive
                logger.exception("forecast iteration failed")
            with self.iterated:
                self.iteration += 1
                self.iterated.notify_all()
            stop.wait(max(0.0, self.config.interval - (time.monotonic() - started)))

"""A target's replica recommendation: how many replicas its forecast load needs, a lead time ahead.

Pure (numpy only, no I/O): the loop calls it every iteration and the replay simulation calls the same
code. For each series, `raw_load` is the largest forecast (at the configured quantile) over the steps
from now to now + lead_time + one interval: replicas asked for now are ready after the lead time, and
the next recommendation comes one interval later, so this one must cover until then. Point i of a
forecast, at origin + (i+1)*step, is the load of the step that ends there (a rate over the step before
it), so every point whose step begins before now + lead_time + interval counts. `load` is the
largest `raw_load` of the last `scale_down_window` seconds (the Kubernetes HPA's scale-down
stabilisation, pkg/controller/podautoscaler/horizontal.go `stabilizeRecommendation`: a recommendation
counts while it is younger than the window), so a higher forecast scales up at once and a lower one
only once it has held for the window. `desired = clamp(ceil(load / per_replica), min, max)`. The window
defaults to 0: through KEDA the HPA already holds the largest proposal over all its triggers for its own
scale-down stabilisation (5 minutes; horizontal.go `computeReplicasForMetrics` takes the largest metric's
proposal, then `normalizeDesiredReplicas` stabilises that), so a window here would be stacked on it;
set one for a consumer without that hold.

A forecast trigger (KEDA external scaler or `prometheus` trigger, target per_replica) reports
`trigger_load = desired * per_replica`, the load rounded up to whole replicas, not the load itself: the
HPA keeps the current count while value / (target * current) is within its tolerance of 1 (0.1; kubernetes
pkg/controller/podautoscaler/replica_calculator.go `GetExternalPerPodMetricReplicas`), so a load of 6.5
replicas' worth at 6 replicas (ratio 1.08) would add nothing, while 7 replicas' worth (1.17) adds the one
the recommendation asks for.

With `calibrate` (the default), the quantile is calibrated live per series before the max is taken: each
point becomes median + factor * (quantile - median), the factor kept by `Calibration` from the actuals
that followed earlier recommendations (adaptive conformal inference; see its docstring).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Hashable, Optional, Sequence

import numpy as np

# load / per_replica within this relative distance above a whole number counts as that number: 1.1 / 0.1
# is 11.000000000000002 in floating point, and 11 replicas serve it.
RATIO_ROUNDING = 1e-9


@dataclass(frozen=True)
class Capacity:
    """A target's `capacity:` block. Loads are in the target query's unit; durations in seconds."""

    per_replica: float  # load one replica serves, > 0
    max_replicas: int  # >= min_replicas, >= 1
    quantile: float = 0.9  # one of the served model's quantiles
    lead_time: float = 300.0  # pod start + warm-up, >= 0
    min_replicas: int = 1  # >= 0 (0: KEDA may scale to zero)
    scale_down_window: float = 0.0  # a lower recommendation waits until it has held this long, >= 0
    calibrate: bool = True  # scale the quantile's distance above the median until its live exceedance is 1 - quantile

    def __post_init__(self) -> None:
        problems = []
        if not (math.isfinite(self.per_replica) and self.per_replica > 0):
            problems.append(f"per_replica must be > 0, got {self.per_replica!r}")
        if not 0 < self.quantile < 1:
            problems.append(f"quantile must be between 0 and 1 (exclusive), got {self.quantile!r}")
        for name in ("lead_time", "scale_down_window"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                problems.append(f"{name} must be >= 0 seconds, got {value!r}")
        if self.calibrate and not self.quantile > 0.5:
            problems.append(f"calibrate needs a quantile above the median (it scales the distance above it), "
                            f"got quantile {self.quantile!r}")
        if self.min_replicas < 0:
            problems.append(f"min_replicas must be >= 0, got {self.min_replicas!r}")
        if self.max_replicas < max(1, self.min_replicas):
            problems.append(f"max_replicas must be >= 1 and >= min_replicas ({self.min_replicas}), "
                            f"got {self.max_replicas!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def replicas(self, load: np.ndarray) -> np.ndarray:
        """clamp(ceil(load / per_replica), min_replicas, max_replicas) as int64."""
        with np.errstate(over="ignore"):  # a ratio beyond float range is clamped like any other
            ratio = np.asarray(load, dtype=np.float64) / self.per_replica
        needed = np.ceil(ratio * (1.0 - RATIO_ROUNDING))
        return np.clip(needed, self.min_replicas, self.max_replicas).astype(np.int64)


class Calibration:
    """Adaptive conformal inference (Gibbs & Candès 2021, "Adaptive conformal inference under distribution
    shift") on one series' chosen quantile, scored on the points the recommendation used.

    The recommendation takes the chosen quantile's forecast at face value: each point it used should be
    exceeded by the actual with probability 1 - quantile. Once those steps are past, the loop knows the
    share that were; after each origin's outcome, log(factor) += gamma * (share exceeded - (1 - quantile)),
    and each point is used as median + factor * (quantile - median). Whatever the model (too narrow on one
    series, too wide on another), the long-run exceedance of the points used then tends to 1 - quantile:
    ACI's gap after T outcomes is at most (log FACTOR_MAX - log FACTOR_MIN + gamma) / (gamma * T), about 3%
    after a week of 5-minute steps with these constants. Per point, not on the max over the points: the
    quantile keeps the meaning the configuration gives it, and the max of calibrated points is then the
    issue's rule unchanged. The distance above the median is scaled, not the value, so the median (the
    model's best guess) stays, a perfect forecast (quantile = median) is left alone, and the model's own
    sense of when it is unsure is kept. Bounded to [FACTOR_MIN, FACTOR_MAX]; it starts at 1 (the model's
    own quantile), and again after a restart. One outcome per forecast origin: the loop recommends several
    times per step, but the actuals (and so the factor) move once per step.
    """

    GAMMA = 0.05
    FACTOR_MIN, FACTOR_MAX = 0.2, 5.0

    def __init__(self, quantile: float):
        self.quantile = quantile
        self.log_factor = 0.0
        self.pending: dict[float, np.ndarray] = {}  # origin -> the calibrated points it recommended from
        self.outcomes = 0
        self.exceeded = 0.0  # sum of the shares exceeded

    @property
    def factor(self) -> float:
        return math.exp(self.log_factor)

    def observe(self, end: float, step: float, actual: np.ndarray) -> None:
        """`actual`: the newest values of the series, the last one the load of the step ending at `end`
        (NaN: missing). Scores every pending recommendation whose steps have all ended by `end`."""
        lo, hi = math.log(self.FACTOR_MIN), math.log(self.FACTOR_MAX)
        for origin in sorted(o for o, p in self.pending.items() if o + len(p) * step <= end):
            calibrated = self.pending.pop(origin)
            last = len(actual) - 1 - int(round((end - origin) / step))  # the step ending at origin
            covered = actual[last + 1: last + 1 + len(calibrated)] if last + 1 >= 0 else actual[:0]
            if len(covered) < len(calibrated) or not np.isfinite(covered).all():
                continue  # left the window, or a gap: no outcome
            exceeded = float(np.mean(covered > calibrated))
            self.outcomes += 1
            self.exceeded += exceeded
            self.log_factor = min(hi, max(lo, self.log_factor + self.GAMMA * (exceeded - (1 - self.quantile))))

    def recommend(self, origin: float, points: int, forecast: np.ndarray, median: np.ndarray) -> float:
        """The calibrated raw load over the first `points` points, remembered until its outcome is known."""
        f, m = forecast[:points], median[:points]
        calibrated = m + self.factor * (f - m)
        self.pending[origin] = calibrated  # a later call at the same origin covers at least as much
        return float(calibrated.max())


@dataclass(frozen=True)
class Recommendation:
    load: np.ndarray  # [n] float: the forecast load behind `desired` (after the scale-down window)
    desired: np.ndarray  # [n] int: clamp(ceil(load / per_replica), min_replicas, max_replicas)
    raw_load: np.ndarray  # [n] float: this iteration's max forecast over [now, now + lead_time + interval]
    factor: np.ndarray  # [n] float: the calibration factor used (1: the model's own quantile, or no calibration)
    trigger_load: np.ndarray  # [n] float: desired * per_replica, what a forecast trigger reports (see Capacity)


class Recommender:
    """One target's recommendations, remembered per series key for the scale-down window, and its
    calibration per series key (forgotten when the key has not been seen for CALIBRATION_MEMORY)."""

    CALIBRATION_MEMORY = 3600.0

    def __init__(self, capacity: Capacity, interval: float):
        if not (math.isfinite(interval) and interval > 0):
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.capacity = capacity
        self.interval = float(interval)
        self._history: dict[Hashable, deque] = {}  # key -> deque of (time, raw_load), oldest first
        self._calibration: dict[Hashable, tuple[float, Calibration]] = {}  # key -> (last seen, state)

    def calibration(self, key: Hashable) -> Optional[Calibration]:
        seen = self._calibration.get(key)
        return seen[1] if seen is not None else None

    def update(self, now: float, origin: float, step: float, keys: Sequence[Hashable], forecast: np.ndarray,
               median: Optional[np.ndarray] = None, actual: Optional[np.ndarray] = None) -> Recommendation:
        """forecast: [n, H] of the chosen quantile for the series `keys` (hashable), point i at
        origin + (i+1)*step, the load of the step (origin + i*step, origin + (i+1)*step]. raw_load = max
        over the points whose step begins before now + lead_time + interval (at least the first point).
        load = max of raw_load over the last scale_down_window seconds, per key (scale-up at once,
        scale-down only after the forecast has stayed low for the window). Keys not seen for longer than
        the window are forgotten.

        With capacity.calibrate, `median` ([n, H], the model's median) and `actual` ([n, m], each series'
        newest values, the last one the step ending at `origin`; NaN where missing) are required: the
        actuals score earlier recommendations, and the points are calibrated before the max."""
        forecast = np.asarray(forecast, dtype=np.float64)
        if forecast.ndim != 2 or forecast.shape[0] != len(keys) or forecast.shape[1] < 1:
            raise ValueError(f"forecast must be [len(keys)={len(keys)}, H >= 1], got {forecast.shape}")
        if not np.isfinite(forecast).all():
            raise ValueError("forecast has NaN or Inf values")
        if step <= 0:
            raise ValueError(f"step must be > 0, got {step!r}")
        horizon_end = now + self.capacity.lead_time + self.interval
        times = origin + step * np.arange(1, forecast.shape[1] + 1)
        points = max(1, int(np.count_nonzero(times - step < horizon_end)))
        factor = np.ones(len(keys))
        if self.capacity.calibrate:
            raw = self._calibrated(now, origin, step, keys, forecast, median, actual, points, factor)
        else:
            raw = forecast[:, :points].max(axis=1)

        cutoff = now - self.capacity.scale_down_window
        load = np.empty_like(raw)
        for i, key in enumerate(keys):
            history = self._history.setdefault(key, deque())
            history.append((now, float(raw[i])))
            while history and history[0][0] <= cutoff and len(history) > 1:
                history.popleft()
            load[i] = max(value for _, value in history)
        for key in [k for k, h in self._history.items() if h[-1][0] <= cutoff]:
            del self._history[key]
        desired = self.capacity.replicas(load)
        return Recommendation(load=load, desired=desired, raw_load=raw, factor=factor,
                              trigger_load=desired * self.capacity.per_replica)

    def _calibrated(self, now, origin, step, keys, forecast, median, actual, points, factor) -> np.ndarray:
        if median is None or actual is None:
            raise ValueError("capacity.calibrate needs the median forecast and the actual values")
        median = np.asarray(median, dtype=np.float64)
        actual = np.asarray(actual, dtype=np.float64)
        if median.shape != forecast.shape or not np.isfinite(median).all():
            raise ValueError(f"median must be finite and shaped like the forecast {forecast.shape}, got {median.shape}")
        if actual.ndim != 2 or actual.shape[0] != len(keys):
            raise ValueError(f"actual must be [len(keys)={len(keys)}, m], got {actual.shape}")
        raw = np.empty(len(keys))
        for i, key in enumerate(keys):
            seen = self._calibration.get(key)
            state = seen[1] if seen is not None else Calibration(self.capacity.quantile)
            self._calibration[key] = (now, state)
            state.observe(origin, step, actual[i])
            factor[i] = state.factor
            raw[i] = state.recommend(origin, points, forecast[i], median[i])
        gone = now - self.CALIBRATION_MEMORY
        for key in [k for k, (seen, _) in self._calibration.items() if seen < gone]:
            del self._calibration[key]
        return raw

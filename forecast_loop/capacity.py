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
only once it has held for the window. `desired = clamp(ceil(load / per_replica), min, max)`.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Hashable, Sequence

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
    scale_down_window: float = 300.0  # a lower recommendation waits until it has held this long, >= 0

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


@dataclass(frozen=True)
class Recommendation:
    load: np.ndarray  # [n] float: the forecast load behind `desired` (after the scale-down window)
    desired: np.ndarray  # [n] int: clamp(ceil(load / per_replica), min_replicas, max_replicas)
    raw_load: np.ndarray  # [n] float: this iteration's max forecast over [now, now + lead_time + interval]


class Recommender:
    """One target's recommendations, remembered per series key for the scale-down window."""

    def __init__(self, capacity: Capacity, interval: float):
        if not (math.isfinite(interval) and interval > 0):
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.capacity = capacity
        self.interval = float(interval)
        self._history: dict[Hashable, deque] = {}  # key -> deque of (time, raw_load), oldest first

    def update(self, now: float, origin: float, step: float, keys: Sequence[Hashable],
               forecast: np.ndarray) -> Recommendation:
        """forecast: [n, H] of the chosen quantile for the series `keys` (hashable), point i at
        origin + (i+1)*step, the load of the step (origin + i*step, origin + (i+1)*step]. raw_load = max
        over the points whose step begins before now + lead_time + interval (at least the first point). load = max of raw_load over the last scale_down_window seconds,
        per key (scale-up at once, scale-down only after the forecast has stayed low for the window).
        Keys not seen for longer than the window are forgotten."""
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
        return Recommendation(load=load, desired=self.capacity.replicas(load), raw_load=raw)

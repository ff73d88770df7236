"""Both policies on one series, from the same history and the same HPA, and how they compare.

The replay starts once the model has a full window (W buckets) and the newest bucket has been scraped;
both policies start there with the replicas the reactive metric asks for, all ready, and run to the end
of the series. One `Settings` serves every series: nothing is tuned per series.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np

from forecast_loop.capacity import Capacity, Recommender

from .demand import capacity_for
from .hpa import HPASettings
from .replay import Outcome, Predictive, ServiceModel, outcome, replay

TARGET_OVERLOAD_REDUCTION = 0.5  # at least 50% fewer overloaded minutes than reactive...
TARGET_REPLICA_HOURS_RATIO = 1.1  # ...with at most 10% more replica-hours


@dataclass(frozen=True)
class Settings:
    start_delay: float = 180.0
    target_utilisation: float = 0.8
    scrape_lag: float = 30.0
    rate_window: float = 120.0
    hpa: HPASettings = field(default_factory=HPASettings)
    quantile: float = 0.9  # capacity.quantile of the forecast loop's target
    loop_interval: float = 60.0  # the forecast loop's interval
    scale_down_window: float = 0.0  # capacity.scale_down_window of the forecast loop's target
    # capacity.lead_time of the forecast loop's target; None: start_delay (the Recommender counts every
    # forecast step that has begun by then, so the step in progress when a new pod is ready is covered)
    lead_time: Optional[float] = None
    calibrate: bool = True  # capacity.calibrate of the forecast loop's target

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SeriesResult:
    name: str
    step: float
    start: float  # seconds since the series' first bucket
    capacity: float
    reactive: Outcome
    predictive: Outcome
    trajectories: dict  # policy -> Trajectory
    calibration: Optional[dict] = None  # the predictive recommendation's live calibration at the end

    @property
    def overload_reduction(self) -> float:
        """1 - predictive / reactive overloaded minutes (1: none left; NaN when reactive had none)."""
        base = self.reactive.overloaded_minutes
        return 1 - self.predictive.overloaded_minutes / base if base > 0 else math.nan

    @property
    def replica_hours_ratio(self) -> float:
        return self.predictive.replica_hours / self.reactive.replica_hours

    @property
    def target_met(self) -> bool:
        reduction = self.overload_reduction
        enough = self.predictive.overloaded_minutes == 0 if math.isnan(reduction) else \
            reduction >= TARGET_OVERLOAD_REDUCTION
        return enough and self.replica_hours_ratio <= TARGET_REPLICA_HOURS_RATIO

    def as_dict(self) -> dict:
        reduction = self.overload_reduction
        return {"series": self.name, "step_seconds": self.step, "capacity_per_replica": self.capacity,
                "replayed_minutes": self.reactive.minutes, "reactive": self.reactive.as_dict(),
                "predictive": self.predictive.as_dict(),
                "overload_reduction": None if math.isnan(reduction) else reduction,
                "replica_hours_ratio": self.replica_hours_ratio, "target_met": self.target_met,
                "calibration": self.calibration}


DAY = 86400.0


def worst_day(result: SeriesResult) -> tuple[int, int]:
    """Slice indices [lo, hi) of the day (or the whole replay, if shorter) centred on reactive scaling's
    largest shortfall of ready capacity below demand (the middle of the replay when it had none)."""
    reactive = result.trajectories["reactive"]
    n = len(reactive.time)
    short = reactive.ready * result.capacity - reactive.demand
    worst = int(np.argmin(short)) if n and short.min() < 0 else n // 2
    per_day = int(DAY // (reactive.time[1] - reactive.time[0])) if n > 1 else 1
    lo = max(0, min(worst - per_day // 2, n - per_day))
    return lo, min(n, lo + per_day)


def replay_start(window: int, step: float, settings: Settings) -> float:
    """The first sync at which the bucket ending the first full window has been scraped."""
    sync = settings.hpa.sync_period
    return math.ceil((window * step + settings.scrape_lag) / sync) * sync


def compare(name: str, values: np.ndarray, step: float, forecasts: np.ndarray, window: int,
            settings: Settings, median: Optional[np.ndarray] = None) -> SeriesResult:
    """forecasts: [len(values), H] of `settings.quantile`, row j made at the end of bucket j (NaN: none);
    median: the same of the model's median (needed by settings.calibrate)."""
    start = replay_start(window, step, settings)
    end = len(values) * step
    if end <= start:
        raise ValueError(f"{name}: {len(values)} points leave nothing to replay after a window of {window}")
    capacity = capacity_for(values[window:])
    service = ServiceModel(capacity, settings.start_delay, settings.target_utilisation, settings.scrape_lag,
                           settings.rate_window)
    lead_time = settings.start_delay if settings.lead_time is None else settings.lead_time
    recommender = Recommender(Capacity(per_replica=capacity,
                                       max_replicas=settings.hpa.max_replicas,
                                       quantile=settings.quantile, lead_time=lead_time,
                                       min_replicas=settings.hpa.min_replicas,
                                       scale_down_window=settings.scale_down_window,
                                       calibrate=settings.calibrate), settings.loop_interval)
    reactive = replay(values, step, service, settings.hpa, start, end)
    predictive = replay(values, step, service, settings.hpa, start, end,
                        Predictive(recommender, forecasts, settings.loop_interval, median))
    sync = settings.hpa.sync_period
    state = recommender.calibration("series")
    calibration = None if state is None else {
        "outcomes": state.outcomes, "factor": state.factor,
        "exceedance": state.exceeded / state.outcomes if state.outcomes else None}
    return SeriesResult(name, step, start, capacity, outcome(reactive, service, sync),
                        outcome(predictive, service, sync), {"reactive": reactive, "predictive": predictive},
                        calibration)


def perfect_forecasts(values: np.ndarray, window: int, horizon: int) -> np.ndarray:
    """What a perfect forecaster would say: row j holds the H buckets after bucket j (the last bucket repeated
    past the end). A bound on what any model can do through this recommendation and this HPA. It is its own
    median too (every quantile of a certain future is that future), so calibration leaves it alone."""
    out = np.full((len(values), horizon), np.nan)
    padded = np.concatenate([values, np.full(horizon, values[-1])])
    rows = np.arange(window - 1, len(values))
    out[rows] = padded[rows[:, None] + 1 + np.arange(horizon)]
    return out

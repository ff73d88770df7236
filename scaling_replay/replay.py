"""The service model and one replay: a demand series, pods that start slowly, one HPA, 15-second slices.

Demand is a series on a fixed step (NAB: counts per 5 minutes), read as a rate that holds over its step:
bucket j covers [j*step, (j+1)*step). A ready replica serves `capacity` of it; demand above
ready replicas * capacity is not served (overload). A pod the HPA adds becomes ready `start_delay`
seconds later and costs replica time from the moment it exists; a pod it removes stops at once, not-ready
pods first (as a ReplicaSet picks them).

Both policies run the same HPA (`hpa.HPA`, 15 s sync, tolerance 0.1, 5-minute scale-down stabilisation):
- reactive: one metric, the live load as Prometheus would give it, `rate(...[rate_window])` scraped
  every `scrape_lag` seconds: the mean demand over [t - scrape_lag - rate_window, t - scrape_lag], with the
  AverageValue target `target_utilisation * capacity`;
- predictive: the same metric plus the forecast loop's recommendation (`forecast_loop.capacity.Recommender`,
  updated every loop interval from the buckets complete `scrape_lag` seconds before, which also score its
  earlier recommendations for calibration, as the loop's windows do) as a second metric
  with target `per_replica` (KEDA external scaler: metricValueFloat = trigger_load, the recommendation
  in whole replicas times per_replica, targetSizeFloat = per_replica); the HPA takes the larger, so
  reactive scaling is the floor.
Capacity is accounted per slice: a pod counts as ready from the first slice that starts after it is ready.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from forecast_loop.capacity import Recommender

from .hpa import HPA, HPASettings, per_pod_proposal


ACTUALS = 24  # newest buckets handed to the Recommender per iteration: enough to score every pending one


@dataclass(frozen=True)
class ServiceModel:
    capacity: float  # demand one ready replica serves, in the series' unit
    start_delay: float = 180.0  # seconds from pod creation to ready (image pull, start, warm-up)
    target_utilisation: float = 0.8  # reactive trigger: AverageValue target = target_utilisation * capacity
    scrape_lag: float = 30.0  # seconds until a bucket or a sample is visible in Prometheus
    rate_window: float = 120.0  # the reactive query's rate window, seconds

    def __post_init__(self) -> None:
        if not (math.isfinite(self.capacity) and self.capacity > 0):
            raise ValueError(f"capacity must be > 0, got {self.capacity!r}")
        if not 0 < self.target_utilisation <= 1:
            raise ValueError(f"target_utilisation must be in (0, 1], got {self.target_utilisation!r}")
        if self.start_delay < 0 or self.scrape_lag < 0 or self.rate_window <= 0:
            raise ValueError("start_delay and scrape_lag must be >= 0, rate_window > 0")

    @property
    def reactive_target(self) -> float:
        return self.target_utilisation * self.capacity


@dataclass(frozen=True)
class Predictive:
    """The forecast side: the loop's Recommender and one forecast row per origin bucket."""

    recommender: Recommender
    forecasts: np.ndarray  # [n_buckets, H] of the recommender's quantile; row j: forecast from the end of bucket j
    interval: float  # the forecast loop's interval, seconds
    median: Optional[np.ndarray] = None  # [n_buckets, H] of the model's median, for calibration


@dataclass
class Trajectory:
    """Per 15-second slice starting at `time`: what the service saw and had."""

    time: np.ndarray  # seconds since the start of bucket 0
    demand: np.ndarray
    pods: np.ndarray  # pods existing during the slice (after this sync's scaling): the cost
    ready: np.ndarray  # pods ready during the slice: the capacity
    reactive_metric: np.ndarray  # what the reactive trigger reported at this sync
    reactive_proposal: np.ndarray  # the reactive metric's own proposal at this sync (the floor)
    before: np.ndarray  # pods before this sync
    forecast_load: np.ndarray  # the recommendation's trigger_load the HPA saw (NaN: reactive policy)


def bucket_demand(values: np.ndarray, step: float, times: np.ndarray) -> np.ndarray:
    """The demand rate at `times`: the value of the bucket holding each time."""
    return values[np.minimum((times // step).astype(np.int64), len(values) - 1)]


def lagged_rate(values: np.ndarray, step: float, times: np.ndarray, lag: float, window: float) -> np.ndarray:
    """Mean demand over [t - lag - window, t - lag]: what rate(...[window]) scraped `lag` ago reports."""
    edges = step * np.arange(len(values) + 1)
    cumulative = np.concatenate([[0.0], np.cumsum(values * step)])
    def integral(t: np.ndarray) -> np.ndarray:
        return np.interp(t, edges, cumulative)
    return (integral(times - lag) - integral(times - lag - window)) / window


def replay(values: np.ndarray, step: float, service: ServiceModel, settings: HPASettings, start: float,
           end: float, predictive: Optional[Predictive] = None) -> Trajectory:
    """One policy over [start, end): reactive alone, or with `predictive` as a second HPA metric."""
    sync = settings.sync_period
    if step % sync or start % sync:
        raise ValueError(f"the step ({step:g}s) and start ({start:g}s) must be whole sync periods ({sync:g}s)")
    times = np.arange(start, end, sync, dtype=np.float64)
    demand = bucket_demand(values, step, times)
    reactive = lagged_rate(values, step, times, service.scrape_lag, service.rate_window)
    n = len(times)
    pods_out, ready_out = np.empty(n, np.int64), np.empty(n, np.int64)
    proposal_out, before_out = np.empty(n, np.int64), np.empty(n, np.int64)
    load_out = np.full(n, np.nan)

    target = service.reactive_target
    first = per_pod_proposal(reactive[0], target, 0, settings.tolerance)
    initial = min(max(first, settings.min_replicas), settings.max_replicas)
    pods = [start] * initial  # ready times, ascending: the newest (least ready) pods are last
    hpa = HPA(settings, start, initial)
    load: Optional[float] = None
    next_loop = start
    for i in range(n):
        t = times[i]
        if predictive is not None and t >= next_loop:
            fresh = _recommend(predictive, values, step, service.scrape_lag, t)
            load = fresh if fresh is not None else load
            next_loop += predictive.interval
        current = len(pods)
        metrics = [(reactive[i], target)]
        if load is not None:
            metrics.append((load, predictive.recommender.capacity.per_replica))
            load_out[i] = load
        proposal_out[i] = per_pod_proposal(reactive[i], target, current, settings.tolerance)
        before_out[i] = current
        desired = hpa.sync(t, current, metrics)
        if desired > current:
            pods.extend([t + service.start_delay] * (desired - current))
        elif desired < current:
            del pods[desired:]
        pods_out[i] = len(pods)
        ready_out[i] = bisect.bisect_right(pods, t)
    return Trajectory(times, demand, pods_out, ready_out, reactive, proposal_out, before_out, load_out)


def _recommend(predictive: Predictive, values: np.ndarray, step: float, lag: float, now: float) -> Optional[float]:
    """One forecast-loop iteration at `now`: the Recommender's load from the newest complete bucket."""
    last = int((now - lag) // step) - 1  # the newest bucket complete and scraped by now
    if last < 0 or last >= len(predictive.forecasts) or not np.isfinite(predictive.forecasts[last]).all():
        return None  # no forecast (window not full yet): the loop publishes nothing, KEDA keeps the last
    median = predictive.median[last][None] if predictive.median is not None else None
    actual = values[max(0, last + 1 - ACTUALS): last + 1][None]  # the loop's window: its newest points
    rec = predictive.recommender.update(now, (last + 1) * step, step, ("series",), predictive.forecasts[last][None],
                                        median, actual)
    return float(rec.trigger_load[0])


@dataclass(frozen=True)
class Outcome:
    overloaded_minutes: float  # minutes with demand above ready replicas * capacity
    unserved_share: float  # demand above ready capacity / all demand
    replica_hours: float  # pod existence, starting pods included
    minutes: float  # replayed minutes

    def as_dict(self) -> dict:
        return {"overloaded_minutes": self.overloaded_minutes, "unserved_share": self.unserved_share,
                "replica_hours": self.replica_hours, "minutes": self.minutes}


def outcome(trajectory: Trajectory, service: ServiceModel, sync: float) -> Outcome:
    capacity = trajectory.ready * service.capacity
    unserved = np.maximum(trajectory.demand - capacity, 0.0)
    total = float(trajectory.demand.sum())
    return Outcome(
        overloaded_minutes=float(np.count_nonzero(trajectory.demand > capacity) * sync / 60),
        unserved_share=float(unserved.sum() / total) if total > 0 else 0.0,
        replica_hours=float(trajectory.pods.sum() * sync / 3600),
        minutes=float(len(trajectory.time) * sync / 60))

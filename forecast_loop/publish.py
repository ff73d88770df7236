"""What the loop publishes on its /metrics, in its own registry.

Forecast series carry the series' own labels (minus `__name__`; a label named target, quantile or
horizon becomes `exported_<name>`) plus `target`, `quantile` ("0.9") and, for the point forecasts,
`horizon` ("15m"). They have no timestamp: Prometheus stamps them at the scrape ("now"), and a
forecast's own time is its origin, `perf_predictor_forecast_origin_timestamp_seconds`. Each target's
view is replaced whole by the loop thread, so a scrape never sees half an iteration.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import Metric
from prometheus_client.process_collector import ProcessCollector

from .accuracy import Score
from .history import Key

RESERVED = ("target", "quantile", "horizon")
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


def duration_label(seconds: float) -> str:
    return f"{int(seconds // 60)}m" if seconds % 60 == 0 else f"{int(seconds)}s"


def quantile_label(q: float) -> str:
    return f"{q:g}"


def series_labels(target: str, key: Key) -> dict[str, str]:
    labels = {(f"exported_{k}" if k in RESERVED else k): v for k, v in key}
    labels["target"] = target
    return labels


@dataclass(frozen=True)
class Forecasts:
    labels: list[dict]  # per series, with `target`
    values: np.ndarray  # [n_quantiles, n, H]
    quantiles: tuple[str, ...]  # quantile labels, in the order of `values`
    horizons: tuple[tuple[str, int], ...]  # (label, index into H)
    origin: int  # epoch seconds of the last point the forecasts start from
    actual: np.ndarray  # [n], the value at the origin


@dataclass(frozen=True)
class ThresholdLine:
    severity: str
    direction: str
    quantile: str
    value: float


@dataclass
class TargetView:
    forecasts: Optional[Forecasts] = None
    series: int = 0
    skipped: dict = field(default_factory=dict)
    last_success: Optional[float] = None
    stale: bool = False
    score: Optional[Score] = None
    thresholds: tuple[ThresholdLine, ...] = ()


class LoopMetrics:
    def __init__(self, targets: list[str], interval: float):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.interval = interval
        self.views = {name: TargetView() for name in targets}
        self.errors = Counter("perf_predictor_forecast_errors", "Failed target iterations, by reason.",
                              ["target", "reason"], registry=self.registry)
        self.duration = Histogram("perf_predictor_forecast_loop_duration_seconds",
                                  "One iteration over every target: query, forecast, publish.",
                                  buckets=DURATION_BUCKETS, registry=self.registry)
        self.registry.register(self)

    def describe(self):
        return []

    def collect(self):
        forecast = Metric("perf_predictor_forecast", "Forecast of the target's series at a horizon, by quantile.",
                          "gauge")
        high = Metric("perf_predictor_forecast_max", "Maximum of the forecast over the model's whole horizon.",
                      "gauge")
        low = Metric("perf_predictor_forecast_min", "Minimum of the forecast over the model's whole horizon.",
                     "gauge")
        actual = Metric("perf_predictor_forecast_actual", "The series' value at the origin: the last point read.",
                        "gauge")
        families = {name: Metric(name, doc, "gauge") for name, doc in (
            ("perf_predictor_forecast_origin_timestamp_seconds", "Time of the last actual point the forecasts start from."),
            ("perf_predictor_forecast_last_success_timestamp_seconds", "When the target was last forecast."),
            ("perf_predictor_forecast_stale", "1 when the target has had no fresh forecast for 3 intervals."),
            ("perf_predictor_forecast_series", "Series forecast in the last iteration."),
            ("perf_predictor_forecast_series_skipped", "Series not forecast in the last iteration, by reason."),
            ("perf_predictor_forecast_threshold", "A target's alert threshold, compared by the breach alert."),
            ("perf_predictor_forecast_mase", "Rolling MASE of the median forecast against what happened."),
            ("perf_predictor_forecast_coverage", "Rolling share of actual points inside the outer band (p10-p90)."),
            ("perf_predictor_forecast_scored", "Forecasts scored in the rolling accuracy window."),
        )}
        families["perf_predictor_forecast_interval_seconds"] = interval = Metric(
            "perf_predictor_forecast_interval_seconds", "The loop's interval.", "gauge")
        interval.add_sample(interval.name, {}, self.interval)
        for target, view in list(self.views.items()):
            t = {"target": target}

            def add(name: str, value: float, **extra) -> None:
                families[name].add_sample(name, {**t, **extra}, value)

            add("perf_predictor_forecast_stale", float(view.stale))
            add("perf_predictor_forecast_series", view.series)
            for reason, count in view.skipped.items():
                add("perf_predictor_forecast_series_skipped", count, reason=reason)
            if view.last_success is not None:
                add("perf_predictor_forecast_last_success_timestamp_seconds", view.last_success)
            for line in view.thresholds:
                add("perf_predictor_forecast_threshold", line.value, severity=line.severity,
                    direction=line.direction, quantile=line.quantile)
            if view.score is not None:
                add("perf_predictor_forecast_mase", view.score.mase)
                add("perf_predictor_forecast_coverage", view.score.coverage)
                add("perf_predictor_forecast_scored", view.score.scored)
            f = view.forecasts
            if f is None:
                continue
            add("perf_predictor_forecast_origin_timestamp_seconds", f.origin)
            highs, lows = f.values.max(axis=2), f.values.min(axis=2)
            for i, labels in enumerate(f.labels):
                actual.add_sample(actual.name, labels, float(f.actual[i]))
            for qi, q in enumerate(f.quantiles):
                for i, labels in enumerate(f.labels):
                    at = {**labels, "quantile": q}
                    for h, index in f.horizons:
                        forecast.add_sample(forecast.name, {**at, "horizon": h}, float(f.values[qi, i, index]))
                    high.add_sample(high.name, at, float(highs[qi, i]))
                    low.add_sample(low.name, at, float(lows[qi, i]))
        yield forecast
        yield high
        yield low
        yield actual
        yield from families.values()

"""What the loop publishes on its /metrics, in its own registry.

Forecast series carry the series' own labels (minus `__name__`; a label named target, quantile or
horizon becomes `exported_<name>`) plus `target`, `quantile` ("0.9") and, for the point forecasts,
`horizon` ("15m"). They have no timestamp: Prometheus stamps them at the scrape ("now"), and a
forecast's own time is its origin, `perf_predictor_forecast_origin_timestamp_seconds`. Each target's
view is replaced whole by the loop thread, so a scrape never sees half an iteration.

The forecast families are rendered to exposition text once per iteration, in the loop thread
(`render`), and a scrape only joins the texts of every target: prometheus-client's exposition costs
about 25 us per sample, 0.45 s for the 27,000 of 1,000 series. The rest goes through the registry.
A target with `capacity` adds two pre-rendered families per series: the recommended replicas and the
forecast load behind them (forecast_loop.capacity).
"""
from __future__ import annotations

from dataclasses import dataclass, field
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.process_collector import ProcessCollector

from .accuracy import Score
from .capacity import Recommendation
from .history import Key

RESERVED = ("target", "quantile", "horizon")
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
FORECAST_FAMILIES = {
    "perf_predictor_forecast": "Forecast of the target's series at a horizon, by quantile.",
    "perf_predictor_forecast_max": "Maximum of the forecast over the model's whole horizon.",
    "perf_predictor_forecast_min": "Minimum of the forecast over the model's whole horizon.",
    "perf_predictor_forecast_actual": "The series' value at the origin: the last point read.",
    "perf_predictor_desired_replicas": "Replicas the forecast load needs a lead time ahead (target capacity).",
    "perf_predictor_desired_replicas_load": "The forecast load behind perf_predictor_desired_replicas.",
    "perf_predictor_desired_replicas_calibration": "Factor on the capacity quantile's distance above the median, "
                                                   "calibrated live (1: the model's own quantile).",
}


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
    recommendation: Optional[Recommendation] = None  # for a target with capacity, per series


@dataclass(frozen=True)
class ThresholdLine:
    severity: str
    direction: str
    quantile: str
    value: float


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(f: Forecasts) -> dict[str, str]:
    """Exposition lines of the forecast families for one target, by family name."""
    lines: dict[str, list[str]] = {name: [] for name in FORECAST_FAMILIES}
    forecast, high, low = (lines[n] for n in ("perf_predictor_forecast", "perf_predictor_forecast_max",
                                               "perf_predictor_forecast_min"))
    values = f.values[:, :, [index for _, index in f.horizons]].tolist()
    highs, lows = f.values.max(axis=2).tolist(), f.values.min(axis=2).tolist()
    actual = f.actual.tolist()
    bases = [",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) for labels in f.labels]
    for i, base in enumerate(bases):
        lines["perf_predictor_forecast_actual"].append(f"perf_predictor_forecast_actual{{{base}}} {actual[i]!r}")
        for qi, q in enumerate(f.quantiles):
            at = f'{base},quantile="{q}"'
            for (h, _), value in zip(f.horizons, values[qi][i]):
                forecast.append(f'perf_predictor_forecast{{{at},horizon="{h}"}} {value!r}')
            high.append(f"perf_predictor_forecast_max{{{at}}} {highs[qi][i]!r}")
            low.append(f"perf_predictor_forecast_min{{{at}}} {lows[qi][i]!r}")
    if f.recommendation is not None:
        desired, load = f.recommendation.desired.tolist(), f.recommendation.load.tolist()
        factor = f.recommendation.factor.tolist()
        for i, base in enumerate(bases):
            lines["perf_predictor_desired_replicas"].append(f"perf_predictor_desired_replicas{{{base}}} {desired[i]}")
            lines["perf_predictor_desired_replicas_load"].append(
                f"perf_predictor_desired_replicas_load{{{base}}} {load[i]!r}")
            lines["perf_predictor_desired_replicas_calibration"].append(
                f"perf_predictor_desired_replicas_calibration{{{base}}} {factor[i]!r}")
    return {name: "".join(line + "\n" for line in family) for name, family in lines.items()}


@dataclass
class TargetView:
    shown: tuple = (None, {})  # (Forecasts or None, its render()), replaced in one assignment
    series: int = 0
    skipped: dict = field(default_factory=dict)
    last_success: Optional[float] = None
    stale: bool = False
    score: Optional[Score] = None
    thresholds: tuple[ThresholdLine, ...] = ()

    def show(self, forecasts: Optional[Forecasts]) -> None:
        self.shown = (forecasts, render(forecasts) if forecasts is not None else {})

    @property
    def forecasts(self) -> Optional[Forecasts]:
        return self.shown[0]


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

            def add(name: str, value: float, t: dict = t, **extra) -> None:
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
            forecasts, _ = view.shown
            if forecasts is not None:
                add("perf_predictor_forecast_origin_timestamp_seconds", forecasts.origin)
        yield from families.values()

    def exposition(self) -> bytes:
        """The whole /metrics page: the pre-rendered forecast families, then the registry."""
        texts = [view.shown[1] for view in list(self.views.values())]
        parts = []
        for name, doc in FORECAST_FAMILIES.items():
            parts.append(f"# HELP {name} {doc}\n# TYPE {name} gauge\n")
            parts.extend(text[name] for text in texts if text)
        return "".join(parts).encode() + generate_latest(self.registry)


def serve(metrics: LoopMetrics, host: str, port: int) -> ThreadingHTTPServer:
    """/metrics (any path) in a daemon thread; the bound port is `server.server_port`."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = metrics.exposition()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server

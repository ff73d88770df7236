"""RED metrics for the predictor, correct with any number of worker processes, and the accounting of
one inference request (`InFlight`, `tracked`) that every protocol uses.

`python -m predictor` points prometheus-client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR) at a
fresh directory before anything imports it, so every process writes its own files and a scrape sums
them. KServe's own histograms land in the same directory and keep working.
"""
from __future__ import annotations

import asyncio
import atexit
import functools
import glob
import os
import re
import time
from contextlib import contextmanager
from typing import Iterator, Optional

from kserve.metrics import PREDICT_HIST_TIME, get_labels

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

from .admission import OVERLOAD
from .contract import REASON_OF_HTTP_STATUS

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)

REQUESTS = Counter("perf_predictor_requests", "Inference requests, by outcome.",
                   ["model", "protocol", "endpoint", "status_class"])
DURATION = Histogram("perf_predictor_request_duration_seconds", "Inference request duration, receipt to reply.",
                     ["model", "protocol", "endpoint"], buckets=LATENCY_BUCKETS)
IN_FLIGHT = Gauge("perf_predictor_requests_in_flight", "Inference requests being processed.",
                  ["model", "protocol"], multiprocess_mode="livesum")
BATCH_SIZE = Histogram("perf_predictor_batch_size", "Series per inference request.",
                       ["model", "protocol"], buckets=BATCH_BUCKETS)
PREDICT_BATCH = Histogram("perf_predictor_predict_batch_series", "Series per model predict call, after "
                          "micro-batching concurrent requests together.", ["model"], buckets=BATCH_BUCKETS)
SERIES = Counter("perf_predictor_series_forecast", "Series forecast (sum of batch sizes).", ["model", "protocol"])
CLIENT_ERRORS = Counter("perf_predictor_client_errors", "Rejected inference requests, by reason.",
                        ["model", "protocol", "reason"])
AUTH_FAILURES = Counter("perf_predictor_auth_failures", "Calls refused for want of a valid bearer token, by "
                        "reason: missing, malformed or invalid.", ["protocol", "reason"])
REJECTED = Counter("perf_predictor_rejected", "Inference requests refused before any work because the process "
                   "held as many as it may (reason overload); not counted in perf_predictor_requests_total.",
                   ["model", "protocol", "reason"])
HELD_BOUND = Gauge("perf_predictor_requests_held_bound", "Inference requests the process may hold now: "
                   "--max_requests_held, or fewer while overload makes the event loop run late (admission.py); "
                   "0 is no bound.",
                   ["model"], multiprocess_mode="livesum")
LOAD_SECONDS = Gauge("perf_predictor_model_load_seconds", "Time to verify, load and compile the model.",
                     ["model"], multiprocess_mode="max")
MODEL_INFO = Gauge("perf_predictor_model_info", "The served model, from its model card (value is 1).",
                   ["model", "version", "trained_at", "window", "horizon", "quantiles", "step_seconds"],
                   multiprocess_mode="max")
BACKTEST = Gauge("perf_predictor_model_backtest", "Backtest quality recorded in the model card, overall, "
                 "for the model (method=\"model\") and each baseline.",
                 ["model", "version", "method", "metric"], multiprocess_mode="max")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _forget_dead_workers(path: str) -> None:
    """Live gauges (in-flight) of a worker that died would count forever; counters must stay."""
    pids = {int(m.group(1)) for f in glob.glob(os.path.join(path, "gauge_live*_*.db"))
            if (m := re.search(r"_(\d+)\.db$", f))}
    for pid in pids:
        if not _pid_alive(pid):
            multiprocess.mark_process_dead(pid, path)


def exposition() -> tuple[bytes, str]:
    """The scrape body: the sum over every process when multiprocess mode is on."""
    flush_refusals()
    path: Optional[str] = os.environ.get(MULTIPROC_ENV)
    if not path:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    _forget_dead_workers(path)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def status_class(status: int) -> str:
    return f"{status // 100}xx"


def record_model(name: str, card: dict, load_seconds: float) -> None:
    LOAD_SECONDS.labels(name).set(load_seconds)
    version = str(card.get("version", ""))
    MODEL_INFO.labels(
        model=name, version=version, trained_at=str(card.get("created_at", "")),
        window=str(card.get("window", "")), horizon=str(card.get("horizon", "")),
        quantiles=",".join(f"{q:g}" for q in card.get("quantiles", [])), step_seconds=str(card.get("step_seconds", "")),
    ).set(1)
    overall = (card.get("backtest") or {}).get("overall") or {}
    for method, scores in overall.items():
        for metric, value in (scores.items() if isinstance(scores, dict) else ()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                BACKTEST.labels(model=name, version=version, method=method, metric=metric).set(float(value))


def record_bound(model: str, bound: int) -> None:
    HELD_BOUND.labels(model).set(bound)


@functools.cache
def predict_seconds(model: str):
    """KServe's predict-time histogram for `model`, which the v2 paths feed as KServe's own path does."""
    return PREDICT_HIST_TIME.labels(**get_labels(model))


# Refusals for overload, counted here and added to REJECTED at most REFUSALS_FLUSH_S later (and before
# this process answers a scrape): under overload they come by the thousand a second, and each update of
# a multiprocess metric takes a lock, a getpid() and a write to its file.
REFUSALS_FLUSH_S = 0.5
_refusals: dict[tuple[str, str], int] = {}


def record_refusal(model: str, protocol: str) -> None:
    """One request refused for overload (admission.py): not a server error, so load alone cannot fire
    the error-ratio alert."""
    if not _refusals:
        try:
            asyncio.get_running_loop().call_later(REFUSALS_FLUSH_S, flush_refusals)
        except RuntimeError:  # no loop (a test, a script): counted at once
            REJECTED.labels(model, protocol, OVERLOAD).inc()
            return
    _refusals[model, protocol] = _refusals.get((model, protocol), 0) + 1


@atexit.register
def flush_refusals() -> None:
    while _refusals:
        (model, protocol), n = _refusals.popitem()
        REJECTED.labels(model, protocol, OVERLOAD).inc(n)


def record(model: str, protocol: str, endpoint: str, status: int, reason: Optional[str], seconds: float) -> None:
    if reason == OVERLOAD:
        record_refusal(model, protocol)
        return
    REQUESTS.labels(model, protocol, endpoint, status_class(status)).inc()
    DURATION.labels(model, protocol, endpoint).observe(seconds)
    if 400 <= status < 500:
        CLIENT_ERRORS.labels(model, protocol, reason or REASON_OF_HTTP_STATUS.get(status, "other")).inc()


class InFlight:
    """One inference request from receipt to reply: in flight until `done`, then counted and timed
    with its status and 4xx reason (once, whoever calls `done` first)."""

    __slots__ = ("model", "protocol", "endpoint", "started", "gauge")

    def __init__(self, model: str, protocol: str, endpoint: str):
        self.model, self.protocol, self.endpoint = model, protocol, endpoint
        self.gauge = IN_FLIGHT.labels(model, protocol)
        self.gauge.inc()
        self.started = time.perf_counter()

    def done(self, status: int, reason: Optional[str] = None) -> None:
        if self.gauge is not None:
            self.gauge.dec()
            self.gauge = None
            record(self.model, self.protocol, self.endpoint, status, reason, time.perf_counter() - self.started)


@contextmanager
def tracked(model: str, protocol: str, endpoint: str) -> Iterator[dict]:
    """In flight while inside; then counted and timed with the status (500 unless the caller sets
    another) and the 4xx reason the caller leaves in the yielded dict."""
    state = {"status": 500, "reason": None}
    request = InFlight(model, protocol, endpoint)
    try:
        yield state
    finally:
        request.done(state["status"], state["reason"])

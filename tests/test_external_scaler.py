"""KEDA's external scaler served by the forecast loop, called by a real gRPC client built from KEDA's .proto.

The client is generated with grpcio-tools from `../shared/spec/keda/externalscaler.proto` into a temporary
directory; the loop runs against a real Prometheus holding NAB tweets and the real predictor
(tests/forecast_loop_fixtures.py). The answers must be those of the recommendation's definition applied
to a direct v2 forecast of the same window, and equal to what the loop publishes on /metrics.
"""
from __future__ import annotations

import importlib
import json
import math
import re
import socket
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import yaml

from forecast_loop.capacity import Calibration
from forecast_loop.config import parse
from forecast_loop.external_scaler import serve
from forecast_loop.loop import ForecastLoop

from .conftest import REPO, shared_dir
from .forecast_loop_fixtures import LoopProcess, history, loop_config  # noqa: F401 (fixture)
from .test_forecast_loop_e2e import direct_forecast

PER_REPLICA = 20.0
LEAD_TIME = 600  # the fixture's data ends less than 200 s before now: the first three points count
CAPACITY = {"per_replica": PER_REPLICA, "min_replicas": 1, "max_replicas": 50, "lead_time": "10m"}


@pytest.fixture(scope="module")
def keda(tmp_path_factory):
    """(messages, stub class) generated from KEDA's own externalscaler.proto."""
    proto = shared_dir() / "spec" / "keda" / "externalscaler.proto"
    if not proto.is_file():
        pytest.skip(f"KEDA's externalscaler.proto not found at {proto} (set PERF_PREDICTOR_SHARED)")
    out = tmp_path_factory.mktemp("keda-client")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{proto.parent}", f"--python_out={out}",
                    f"--grpc_python_out={out}", str(proto)], check=True)
    sys.path.insert(0, str(out))
    try:
        pb2 = importlib.import_module("externalscaler_pb2")
        pb2_grpc = importlib.import_module("externalscaler_pb2_grpc")
    finally:
        sys.path.remove(str(out))
    return pb2, pb2_grpc.ExternalScalerStub


def scaler_config(prom_url: str, model_url: str) -> dict:
    config = loop_config(prom_url, model_url)
    config["targets"][0]["capacity"] = dict(CAPACITY)  # tweets: AAPL and AMZN (max_series 2)
    config["targets"][2]["capacity"] = dict(CAPACITY)  # nothing: never forecast
    return config


def ref(pb2, **metadata):
    # KEDA sends the whole trigger metadata, scalerAddress included (pkg/scalers/external_scaler.go)
    return pb2.ScaledObjectRef(name="api", namespace="shop",
                               scalerMetadata={"scalerAddress": "perf-predictor-forecast-loop:9500", **metadata})


def expected(server, stamps, series, origin_index: int, symbol: str) -> float:
    """max of the p90 forecast over the steps begun before now + lead time + interval (origin + 601 to
    + 801 s here): those ending at origin + 300, + 600 and + 900, the last begun at + 600."""
    window = series[symbol][origin_index - 335: origin_index + 1][None, :]
    return float(direct_forecast(server, window)["p90"][0, :LEAD_TIME // 300 + 1].max())


def whole_replicas(load: float) -> float:
    """What the trigger reports for a forecast load: the recommendation (clamped to 1..50) * per_replica."""
    return min(50, max(1, math.ceil(load / PER_REPLICA))) * PER_REPLICA


def dashboard_query(expr: str) -> str:
    """A Grafana panel's query with the dashboard's variables as Grafana would fill them for this test."""
    for variable, value in (("$__rate_interval", "1m"), ("$namespace", ".*"), ("$target", "tweets"),
                            ("$horizon", "15m"), ("$deployment", ".*")):
        expr = expr.replace(variable, value)
    return expr


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    return exc.value.code(), exc.value.details()


def test_keda_client_gets_the_recommendation_from_the_loop_process(history, server, keda):
    pb2, Stub = keda
    prom = history["prometheus"]
    loop = LoopProcess(history["root"], scaler_config(prom.url, server.http_url), name="scaler-loop",
                       args=("--scaler-listen", "127.0.0.1:0"))
    channel = grpc.insecure_channel(f"127.0.0.1:{loop.scaler_port()}")
    try:
        stub = Stub(channel)
        loop.wait_until(lambda: loop.samples("perf_predictor_desired_replicas", target="tweets"),
                        what="the first recommendation")
        origin = loop.value("perf_predictor_forecast_origin_timestamp_seconds", target="tweets")
        i = int(np.searchsorted(history["stamps"], origin))
        served = {}
        for symbol in ("AAPL", "AMZN"):
            spec = stub.GetMetricSpec(ref(pb2, target="tweets", symbol=symbol), timeout=10)
            (metric,) = spec.metricSpecs
            assert (metric.metricName, metric.targetSizeFloat) == ("perf-predictor-tweets", PER_REPLICA)
            reply = stub.GetMetrics(pb2.GetMetricsRequest(scaledObjectRef=ref(pb2, target="tweets", symbol=symbol),
                                                          metricName=metric.metricName), timeout=10)
            (value,) = reply.metricValues
            served[symbol] = value.metricValueFloat
            assert value.metricName == metric.metricName
            want = expected(server, history["stamps"], history["series"], i, symbol)
            published = loop.value("perf_predictor_desired_replicas_load", target="tweets", symbol=symbol)
            desired = loop.value("perf_predictor_desired_replicas", target="tweets", symbol=symbol)
            assert published == pytest.approx(want, rel=1e-6)
            assert desired == min(50, max(1, math.ceil(want / PER_REPLICA)))
            # the trigger reports the recommendation in whole replicas: the HPA's AverageValue rule on it,
            # ceil(value / target), is the published recommendation, and its tolerance compares whole replicas
            assert value.metricValueFloat == desired * PER_REPLICA
            # the calibration starts from the model's own quantile (no outcome yet: no step has ended since)
            assert loop.value("perf_predictor_desired_replicas_calibration", target="tweets", symbol=symbol) == 1.0
            assert stub.IsActive(ref(pb2, target="tweets", symbol=symbol), timeout=10).result is True

        # the other trigger style: KEDA's `prometheus` trigger with the chart's query on the scraped series
        prom.reload("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                    f"scrape_configs:\n  - job_name: forecast-loop\n    honor_labels: true\n"
                    f"    static_configs: [{{targets: ['{loop.target}']}}]\n")
        (row,) = prom.wait_for(f'max(perf_predictor_desired_replicas{{target="tweets",symbol="AAPL"}}) * {PER_REPLICA}',
                               what="(scrape of the recommendation)")
        assert float(row["value"][1]) == pytest.approx(served["AAPL"], rel=1e-9)
        # the dashboard's replica panel on the same scrape (its kube-state-metrics query aside): the
        # recommendation and what the HPA would hold of it, for each series
        dashboard = json.loads((REPO / "charts/perf-predictor/files/forecast-loop-dashboard.json").read_text())
        (panel,) = [p for p in dashboard["panels"] if p["title"].startswith("Replicas")]
        exprs = [t["expr"] for t in panel["targets"] if "desired_replicas" in t["expr"]]
        assert len(exprs) == 2
        for expr in exprs:
            rows = prom.wait_for(dashboard_query(expr), what="(dashboard)")
            assert {r["metric"]["symbol"]: float(r["value"][1]) for r in rows} == \
                {symbol: value / PER_REPLICA for symbol, value in served.items()}
        # every other query of that dashboard: Prometheus accepts it (a bad one is an HTTP 400), and one over
        # series the loop publishes now, without an offset into the past the test has not lived, has data
        for expr in (t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])):
            names = set(re.findall(r"\b(perf_predictor_\w+)", expr))
            published = names and "offset" not in expr and all(
                any(sample.labels.get("target", "tweets") == "tweets" for sample in loop.samples(n)) for n in names)
            rows = prom.wait_for(dashboard_query(expr), timeout=30, what="(dashboard)") if published else \
                prom.query(dashboard_query(expr))
            assert rows or not published, expr

        stream = stub.StreamIsActive(ref(pb2, target="tweets", symbol="AAPL"), timeout=30)
        assert next(stream).result is True  # sent at once, then only on a change
        stream.cancel()

        def status(call, request):
            return code_of(lambda: call(request, timeout=10))

        metrics = lambda r: pb2.GetMetricsRequest(scaledObjectRef=r, metricName="perf-predictor-x")  # noqa: E731
        code, details = status(stub.GetMetrics, metrics(ref(pb2, target="tweet")))
        assert code == grpc.StatusCode.NOT_FOUND and "no target 'tweet'" in details
        code, details = status(stub.GetMetricSpec, ref(pb2))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "scalerMetadata.target is required" in details
        code, details = status(stub.GetMetricSpec, ref(pb2, target="holes"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "has no capacity" in details
        code, details = status(stub.GetMetrics, metrics(ref(pb2, target="tweets")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "2 series" in details and "(symbol)" in details
        code, details = status(stub.IsActive, ref(pb2, target="tweets", sym="AAPL"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "no label sym" in details
        code, details = status(stub.GetMetrics, metrics(ref(pb2, target="tweets", symbol="GOOG")))
        assert code == grpc.StatusCode.NOT_FOUND, "GOOG is beyond max_series: not forecast"
        # a target without a forecast: no recommendation, an error KEDA counts as a failed trigger
        # (pkg/scalers/external_scaler.go GetMetricsAndActivity returns it; pkg/fallback/fallback.go counts it) ...
        code, details = status(stub.GetMetrics, metrics(ref(pb2, target="nothing")))
        assert code == grpc.StatusCode.UNAVAILABLE and "no fresh forecast" in details
        code, _ = status(stub.IsActive, ref(pb2, target="nothing"))
        assert code == grpc.StatusCode.UNAVAILABLE
        # ... while its metric spec needs no forecast, so KEDA can build the HPA meanwhile
        assert stub.GetMetricSpec(ref(pb2, target="nothing"), timeout=10).metricSpecs[0].targetSizeFloat == PER_REPLICA
        # the optional StreamMetricSpec is not served: KEDA then keeps polling GetMetricSpec (see the .proto)
        code, _ = status(lambda r, timeout: next(stub.StreamMetricSpec(r, timeout=timeout)), ref(pb2, target="tweets"))
        assert code == grpc.StatusCode.UNIMPLEMENTED
        assert loop.proc.poll() is None, "bad requests leave the loop up"
    finally:
        channel.close()
        loop.stop()


def test_no_recommendation_from_a_stale_forecast(history, server, keda):
    """In-process, on a clock that walks: fresh -> older than 3 intervals (UNAVAILABLE, without another
    iteration) -> fresh again -> the data stops (the loop withdraws the recommendation from /metrics)."""
    pb2, Stub = keda
    config = parse(scaler_config(history["prometheus"].url, server.http_url))
    stamps, series = history["stamps"], history["series"]
    first = len(stamps) - 200
    clock = {"now": float(stamps[first]) + 10}
    loop = ForecastLoop(config, clock=lambda: clock["now"])
    scaler, port = serve(loop, "127.0.0.1", 0, clock=lambda: clock["now"])
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = Stub(channel)
        request = pb2.GetMetricsRequest(scaledObjectRef=ref(pb2, target="tweets", symbol="AMZN"))
        code, details = code_of(lambda: stub.GetMetrics(request, timeout=10))
        assert code == grpc.StatusCode.UNAVAILABLE and "no forecast yet" in details
        loop.run_once()
        want = whole_replicas(expected(server, stamps, series, first, "AMZN"))
        assert stub.GetMetrics(request, timeout=10).metricValues[0].metricValueFloat == want

        clock["now"] += 3 * config.interval + 1
        code, details = code_of(lambda: stub.GetMetrics(request, timeout=10))
        assert code == grpc.StatusCode.UNAVAILABLE and "more than 3 intervals" in details
        loop.run_once()  # same window, fresh again
        assert stub.GetMetrics(request, timeout=10).metricValues[0].metricValueFloat == want
        assert 'perf_predictor_desired_replicas{symbol="AMZN",target="tweets"}' in loop.metrics.exposition().decode()

        clock["now"] = float(stamps[-1]) + 3600  # every series has stopped: no_series, then stale
        loop.run_once()
        assert loop.metrics.views["tweets"].stale
        text = loop.metrics.exposition().decode()
        assert "perf_predictor_desired_replicas{" not in text and "perf_predictor_desired_replicas_load{" not in text
        code, _ = code_of(lambda: stub.GetMetrics(request, timeout=10))
        assert code == grpc.StatusCode.UNAVAILABLE
    finally:
        channel.close()
        scaler.stop(grace=None)


def test_stream_pushes_a_change_after_an_iteration(history, server, keda):
    """StreamIsActive sends the state at once and again when an iteration changes it (min_replicas 0 and a
    load of 0: inactive, so KEDA may scale to zero)."""
    pb2, Stub = keda
    doc = scaler_config(history["prometheus"].url, server.http_url)
    doc["targets"][0]["capacity"].update(min_replicas=0)
    config = parse(doc)
    stamps = history["stamps"]
    clock = {"now": float(stamps[len(stamps) - 200]) + 10}
    loop = ForecastLoop(config, clock=lambda: clock["now"])
    loop.run_once()
    scaler, port = serve(loop, "127.0.0.1", 0, clock=lambda: clock["now"])
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        stream = Stub(channel).StreamIsActive(ref(pb2, target="tweets", symbol="AAPL"), timeout=30)
        assert next(stream).result is True
        # the same series forecast from a window of zeros: load 0 with min_replicas 0 is inactive
        view = loop.metrics.views["tweets"]
        forecasts = view.forecasts
        zero = loop.states["tweets"].recommender.update(clock["now"] + 600, forecasts.origin + 600, 300.0,
                                                        [(("symbol", "AAPL"),), (("symbol", "AMZN"),)], np.zeros((2, 12)),
                                                        np.zeros((2, 12)), np.zeros((2, 1)))
        assert zero.desired.tolist() == [0, 0]
        clock["now"] += 600
        view.last_success = clock["now"]
        view.show(type(forecasts)(**{**forecasts.__dict__, "recommendation": zero}))
        started = time.monotonic()
        with loop.iterated:
            loop.iteration += 1
            loop.iterated.notify_all()
        assert next(stream).result is False
        assert time.monotonic() - started < 3, "pushed on the iteration, not on the periodic recheck"
        stream.cancel()
    finally:
        channel.close()
        scaler.stop(grace=None)


def test_a_taken_scaler_port_is_a_clear_start_error(tmp_path):
    config = tmp_path / "loop.yaml"
    config.write_text(yaml.safe_dump(loop_config("http://127.0.0.1:9", "http://127.0.0.1:9")))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "forecast_loop", "--config", str(config), "--listen", "127.0.0.1:0",
                               "--scaler-listen", f"127.0.0.1:{port}"], cwd=REPO, capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"error: cannot listen on 127.0.0.1:{port} for the KEDA external scaler" in done.stderr


def test_the_loop_calibrates_the_quantile_on_the_actuals_that_follow(history, server):
    """In-process, on a clock that walks one step per iteration over the fixture's data: the loop scores
    each recommendation's points once their steps have ended (from the windows it reads anyway), and the
    factor it publishes is the definition's (forecast_loop.capacity.Calibration), recomputed here from
    direct v2 forecasts of the same windows."""
    config = parse(scaler_config(history["prometheus"].url, server.http_url))
    stamps, amzn = history["stamps"], history["series"]["AMZN"]
    first = len(stamps) - 200
    clock = {"now": float(stamps[first]) + 10}
    loop = ForecastLoop(config, clock=lambda: clock["now"])
    points = LEAD_TIME // 300 + 1  # now = origin + 10 s, interval 1 s: the steps begun by origin + 611 s
    factor, pending, factors = 1.0, {}, []
    for i in range(first, first + 8):
        for origin in sorted(o for o in pending if o + points <= i):  # every step it used has ended
            exceeded = np.mean(amzn[origin + 1: origin + 1 + points] > pending.pop(origin))
            factor = min(Calibration.FACTOR_MAX, max(Calibration.FACTOR_MIN,
                                                     factor * math.exp(Calibration.GAMMA * (exceeded - 0.1))))
        forecast = direct_forecast(server, amzn[i - 335: i + 1][None, :])
        median, upper = forecast["p50"][0, :points], forecast["p90"][0, :points]
        pending[i] = median + factor * (upper - median)
        clock["now"] = float(stamps[i]) + 10
        loop.run_once()
        shown = loop.metrics.views["tweets"].forecasts
        row = [labels.get("symbol") for labels in shown.labels].index("AMZN")
        assert shown.recommendation.factor[row] == pytest.approx(factor, rel=1e-9)
        assert shown.recommendation.raw_load[row] == pytest.approx(pending[i].max(), rel=1e-6)
        factors.append(factor)
    state = loop.states["tweets"].recommender.calibration((("symbol", "AMZN"),))
    assert state.outcomes == 8 - points and factors[points] != 1.0  # scored from the 4th origin on
    published = re.search(r'^perf_predictor_desired_replicas_calibration\{symbol="AMZN",target="tweets"\} (\S+)$',
                          loop.metrics.exposition().decode(), re.M)
    assert published and float(published.group(1)) == pytest.approx(factors[-1], rel=1e-9)

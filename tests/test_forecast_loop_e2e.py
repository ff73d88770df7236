"""The forecast loop end to end, with the real parts: real Prometheus, real predictor, the loop as a process.

A real Prometheus holds NAB tweets moved to end now (`forecast_loop_fixtures.history`). The
loop (`python -m forecast_loop`) reads them, forecasts them through the real predictor (conftest's
`server`), and Prometheus scrapes it every second, with the chart's forecast-loop rules loaded. What
Prometheus then holds must equal a direct v2 call (tritonclient) on the same window taken from the
CSV itself, and the breach alert must fire for a threshold below the forecast.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import tritonclient.http as triton

from forecast_loop.config import parse
from forecast_loop.loop import ForecastLoop
from training.metrics import coverage, mase, seasonal_naive_scale

from .conftest import MODEL_NAME
from .forecast_loop_fixtures import LoopProcess, history, loop_config, rules_with  # noqa: F401 (fixture)


def direct_forecast(server, window: np.ndarray) -> dict[str, np.ndarray]:
    client = triton.InferenceServerClient(server.http_host)
    tensor = triton.InferInput("history", [len(window), window.shape[1]], "FP64")
    tensor.set_data_from_numpy(window.astype(np.float64))
    reply = client.infer(MODEL_NAME, [tensor])
    return {o["name"]: reply.as_numpy(o["name"]) for o in reply.get_response()["outputs"]}


def test_prometheus_holds_the_same_forecast_as_a_direct_v2_call_and_the_breach_fires(history, server):
    prom = history["prometheus"]
    loop = LoopProcess(history["root"], loop_config(prom.url, server.http_url))
    try:
        (history["root"] / "rules.yaml").write_text(rules_with(breach_for="0s"))
        prom.reload("global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
                    "rule_files: [rules.yaml]\n"
                    f"scrape_configs:\n  - job_name: forecast-loop\n    static_configs: [{{targets: ['{loop.target}']}}]\n")
        prom.wait_for('perf_predictor_forecast{target="tweets"}', what="(scrape of the loop)")

        # the same window, from the CSV, through a direct v2 call
        at = time.time()
        origin = float(prom.query('perf_predictor_forecast_origin_timestamp_seconds{target="tweets"}', at)[0]["value"][1])
        i = int(np.searchsorted(history["stamps"], origin))
        assert history["stamps"][i] == origin
        symbols = ("AAPL", "AMZN")
        window = np.stack([history["series"][s][i - 335: i + 1] for s in symbols])
        direct = direct_forecast(server, window)
        published = prom.query('perf_predictor_forecast{target="tweets"}', at)
        assert {r["metric"]["symbol"] for r in published} == set(symbols), "GOOG is beyond max_series"
        assert {r["metric"]["horizon"] for r in published} == {"15m", "30m", "60m"}
        assert {r["metric"]["quantile"] for r in published} == {"0.1", "0.5", "0.9"}
        assert len(published) == 2 * 3 * 3
        for r in published:
            m = r["metric"]
            k = int(m["horizon"][:-1]) // 5 - 1
            want = direct[f"p{round(float(m['quantile']) * 100)}"][symbols.index(m["symbol"]), k]
            assert float(r["value"][1]) == pytest.approx(float(want), rel=1e-6), m
        for r in prom.query('perf_predictor_forecast_max{target="tweets"}', at):
            want = direct[f"p{round(float(r['metric']['quantile']) * 100)}"][symbols.index(r["metric"]["symbol"])].max()
            assert float(r["value"][1]) == pytest.approx(float(want), rel=1e-6)

        # a critical threshold of 1 is below every p90 forecast: the chart's rule fires in Prometheus
        alerts = prom.wait_for('ALERTS{alertname="PerfPredictorForecastBreach", alertstate="firing"}',
                               what="(breach alert)")
        assert {(a["metric"]["symbol"], a["metric"]["severity"], a["metric"]["quantile"]) for a in alerts} == {
            ("AAPL", "critical", "0.9"), ("AMZN", "critical", "0.9")}

        # counts: max_series, NaN/Inf and gaps, an empty query
        assert loop.value("perf_predictor_forecast_series", target="tweets") == 2
        assert loop.value("perf_predictor_forecast_series_skipped", target="tweets", reason="over_max_series") == 1
        assert loop.value("perf_predictor_forecast_series", target="holes") == 1
        assert {s.labels["case"] for s in loop.samples("perf_predictor_forecast", target="holes")} == {"inf"}
        assert loop.value("perf_predictor_forecast_series_skipped", target="holes", reason="gap") == 1
        assert loop.value("perf_predictor_forecast_series_skipped", target="holes", reason="non_finite") == 1
        assert loop.value("perf_predictor_forecast_errors_total", target="nothing", reason="no_series") >= 1
        assert loop.value("perf_predictor_forecast_series", target="nothing") == 0
        assert loop.log().count("target nothing: the query returned no series") == 1, "logged once, not per interval"
        assert loop.value("perf_predictor_forecast_stale", target="tweets") == 0
        assert loop.value("perf_predictor_forecast_threshold", target="tweets", severity="critical",
                          direction="above", quantile="0.9") == 1
    finally:
        loop.stop()


def test_live_accuracy_scores_earlier_forecasts_like_the_backtest(history, server):
    """The loop in-process on a clock that walks through the backfilled past, one step per iteration:
    after H + 1 steps two origins have all their actuals; the rolling MASE and coverage must be the
    backtest's formulas applied to direct v2 forecasts of the same windows."""
    prom = history["prometheus"]
    config = parse(loop_config(prom.url, server.http_url))
    stamps, series = history["stamps"], history["series"]
    first = len(stamps) - 200  # an origin well inside the data
    clock = {"now": float(stamps[first]) + 10}
    loop = ForecastLoop(config, clock=lambda: clock["now"])
    for k in range(14):
        clock["now"] = float(stamps[first + k]) + 10
        loop.run_once()
    score = loop.metrics.views["tweets"].score
    assert score is not None and score.scored == 4  # origins first and first+1, two series each

    mases, covered = [], []
    for origin in (first, first + 1):
        window = np.stack([series[s][origin - 335: origin + 1] for s in ("AAPL", "AMZN")])
        direct = direct_forecast(server, window)
        for row, symbol in enumerate(("AAPL", "AMZN")):
            actual = series[symbol][origin + 1: origin + 13]
            mases.append(mase(actual, direct["p50"][row], seasonal_naive_scale(window[row])))
            covered.append(coverage(actual, direct["p10"][row], direct["p90"][row]))
    assert score.mase == pytest.approx(np.mean(mases), rel=1e-5)
    assert score.coverage == pytest.approx(np.mean(covered), rel=1e-9)
    text = loop.metrics.exposition().decode()
    assert f'perf_predictor_forecast_mase{{target="tweets"}} {score.mase!r}' in text

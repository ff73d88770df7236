"""A real Prometheus scrapes the real predictor (2 workers) under a known load, with the chart's rules
loaded: every dashboard and rule expression returns data, nothing alerts, and the counts agree."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import yaml

from chartlib import CHART, render
from tests.conftest import MODEL_NAME, free_port, start_server, stop_server, wait_ready

REST_OK, REST_BAD, GRPC_OK = 30, 4, 6
JOB = "perf-predictor-predictor"


def promql(base: str, query: str) -> list[dict]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = (target["expr"].replace("$__rate_interval", "1m")
                    .replace("$namespace", ".*").replace("$model", ".*"))
            out.append((f"{panel['title']} / {target.get('legendFormat', target['refId'])}", expr))
    return out


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("prometheus not installed (Debian package `prometheus`; .ci/run installs it)")
    return path


@pytest.fixture(scope="module")
def model_with_backtest(model_dir, tmp_path_factory) -> Path:
    """The test model with a backtest summary in its card, as `training.evaluate` records it."""
    model = tmp_path_factory.mktemp("e2e") / "model"
    shutil.copytree(model_dir, model)
    card = json.loads((model / "model-card.json").read_text())
    card["backtest"] = {"overall": {"model": {"mase": 0.71, "coverage": 0.8},
                                    "last_value": {"mase": 0.96, "coverage": None}}}
    (model / "model-card.json").write_text(json.dumps(card))
    return model


@pytest.fixture(scope="module")
def stack(prometheus_binary, model_with_backtest, tmp_path_factory):
    work = tmp_path_factory.mktemp("prometheus")
    predictor = start_server(model_with_backtest, work / "predictor.log", "--workers", "2",
                             env={"PROMETHEUS_MULTIPROC_DIR": str(work / "metrics")})
    # A generous latency SLO: this checks the wiring, and the CI machine is shared and noisy.
    (rule,) = [o for o in render("helm4", "--set", "monitoring.prometheusRule.enabled=true",
                                 "--set", f"monitoring.prometheusRule.jobRegex={JOB}",
                                 "--set-json", "monitoring.prometheusRule.latencyP99SloSeconds=5")
               if o["kind"] == "PrometheusRule"]
    (work / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    port = free_port()
    (work / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(work / "rules.yaml")],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{
            "targets": [f"127.0.0.1:{predictor.http_port}"],
            "labels": {"namespace": "e2e", "pod": "perf-predictor-0"}}]}],
    }))
    log = (work / "prometheus.log").open("w")
    prom = subprocess.Popen([prometheus_binary, f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(predictor, timeout=120)
        deadline = time.monotonic() + 60
        while not _up(base):
            assert prom.poll() is None, (work / "prometheus.log").read_text()
            assert time.monotonic() < deadline, "Prometheus never scraped the predictor"
            time.sleep(0.5)
        yield predictor, base
    finally:
        prom.terminate()
        prom.wait(timeout=30)
        stop_server(predictor)


def _up(base: str) -> bool:
    try:
        return any(r["value"][1] == "1" for r in promql(base, f'up{{job="{JOB}"}}'))
    except OSError:
        return False


@pytest.fixture(scope="module")
def loaded(stack, model_dir):
    from forecaster import artifact
    from tests.test_serving import histories, post

    predictor, base = stack
    window = artifact.read_card(model_dir)["window"]
    body = json.dumps({"inputs": [{"name": "history", "datatype": "FP32", "shape": [2, window],
                                   "data": histories(2, window).ravel().tolist()}]}).encode()
    for i in range(REST_OK):
        assert post(predictor, f"/v2/models/{MODEL_NAME}/infer", body)[0] == 200
        if i < REST_BAD:
            assert post(predictor, f"/v2/models/{MODEL_NAME}/infer", b'{"inputs": []}')[0] == 400
        time.sleep(0.1)  # spread over several scrapes so rates have something to work on
    client = grpcclient.InferenceServerClient(predictor.grpc_host)
    for _ in range(GRPC_OK):
        tensor = grpcclient.InferInput("history", [1, window], "FP32")
        tensor.set_data_from_numpy(np.ones((1, window), dtype=np.float32))
        client.infer(MODEL_NAME, [tensor])
    deadline = time.monotonic() + 30
    while True:  # until a scrape after the last request has been stored and rules evaluated
        total = promql(base, "sum(perf_predictor_requests_total)")
        if total and float(total[0]["value"][1]) == REST_OK + REST_BAD + GRPC_OK and promql(base, "perf_predictor:requests:rate5m"):
            break
        assert time.monotonic() < deadline, f"Prometheus never saw all requests: {total}"
        time.sleep(0.5)
    time.sleep(2)
    return base


def test_scraped_counts_agree_with_the_requests_sent(loaded):
    got = {(r["metric"]["protocol"], r["metric"]["status_class"]): float(r["value"][1])
           for r in promql(loaded, "sum by (protocol, status_class) (perf_predictor_requests_total)")}
    assert got == {("rest", "2xx"): REST_OK, ("rest", "4xx"): REST_BAD, ("grpc", "2xx"): GRPC_OK}
    (series,) = promql(loaded, "sum(perf_predictor_series_forecast_total)")
    assert float(series["value"][1]) == 2 * REST_OK + GRPC_OK
    backtest = {(r["metric"]["method"], r["metric"]["metric"]): float(r["value"][1])
                for r in promql(loaded, "perf_predictor_model_backtest")}
    assert backtest == {("model", "mase"): 0.71, ("model", "coverage"): 0.8, ("last_value", "mase"): 0.96}


@pytest.mark.parametrize("title,expr", dashboard_queries(), ids=[t for t, _ in dashboard_queries()])
def test_every_dashboard_query_returns_data(loaded, title, expr):
    result = promql(loaded, expr)
    assert result, f"{title}: no data for {expr}"
    assert all(np.isfinite(float(r["value"][1])) for r in result), result


def test_rules_evaluate_cleanly_and_return_data_without_alerting(loaded):
    with urllib.request.urlopen(f"{loaded}/api/v1/rules", timeout=10) as resp:
        groups = json.loads(resp.read())["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert rules and all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    for rule in rules:
        if rule["type"] == "recording":
            assert promql(loaded, rule["name"]), f"recording rule {rule['name']} has no data"
        else:
            for name in set(re.findall(r"perf_predictor:[a-z0-9_:]+|\bup\b", rule["query"])):
                selector = f'up{{job="{JOB}"}}' if name == "up" else name
                assert promql(loaded, selector), f"{rule['name']}: {selector} has no data"
            assert rule["state"] == "inactive", f"{rule['name']} is {rule['state']} under healthy load"

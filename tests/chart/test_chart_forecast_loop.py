"""The chart's optional forecast loop (`forecastLoop.enabled`, ci/forecast-loop-values.yaml).

Lint, kinds, the restricted Pod Security Standard and the Kubernetes/CRD schemas are checked for it by
the chart-wide tests (every ci file); here: the config it renders is one the loop itself accepts, the
Deployment, Service and ServiceMonitor fit together, the NetworkPolicy lets the loop reach only
Prometheus, the predictor and DNS (and lets it into the predictor), in both workload modes; bad
values are refused; the rules pass promtool's unit tests; the dashboard asks only for series the loop
publishes.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from chartlib import CHART, CI_DIR, NAMESPACE, RELEASE, promtool, promtool_unit_test, render, run_helm

from forecast_loop.accuracy import Score
from forecast_loop.capacity import Capacity, Recommender
from forecast_loop.config import parse
from forecast_loop.publish import Forecasts, LoopMetrics, ThresholdLine

HERE = Path(__file__).resolve().parent
CI = ["-f", str(CI_DIR / "forecast-loop-values.yaml")]
WORKLOADS = {"inferenceService": [], "deployment": ["--set", "workload=deployment"]}
LOOP = f"{RELEASE}-forecast-loop"


def objects(*extra: str) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in render("helm3", *CI, *extra)}


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("workload", WORKLOADS)
def test_rendered_config_is_accepted_by_the_loop(workload):
    objs = objects(*WORKLOADS[workload])
    config = parse(yaml.safe_load(objs[("ConfigMap", LOOP)]["data"]["config.yaml"]), "config.yaml")
    assert [t.name for t in config.targets] == ["api-requests", "free-disk"]
    assert config.listen_port == 9400 and config.model.name == "perf-predictor"
    want = {"inferenceService": f"http://{RELEASE}-predictor.{NAMESPACE}.svc.cluster.local",
            "deployment": f"http://{RELEASE}.{NAMESPACE}.svc.cluster.local:8080"}[workload]
    assert config.model.url == want  # the predictor Service this workload mode creates


@pytest.mark.parametrize("workload", WORKLOADS)
def test_deployment_service_and_monitor_fit_together(workload):
    objs = objects(*WORKLOADS[workload])
    dep, svc, sm = objs[("Deployment", LOOP)], objs[("Service", LOOP)], objs[("ServiceMonitor", LOOP)]
    pod = dep["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["python", "-m", "forecast_loop"]
    assert container["args"] == ["--config=/etc/forecast-loop/config.yaml"]
    assert dep["spec"]["replicas"] == 1
    assert pod["spec"]["volumes"][0]["configMap"]["name"] == LOOP
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert container["securityContext"] == values["securityContext"]
    assert pod["spec"]["securityContext"] == values["podSecurityContext"]
    assert matches(dep["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    assert matches(svc["spec"]["selector"], pod["metadata"]["labels"])
    assert matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    assert container["ports"][0]["containerPort"] == 9400
    # the predictor's own ServiceMonitor/PodMonitor must not pick up the loop's Service or pods
    pred_selector = {"app.kubernetes.io/component": "predictor"}
    assert not matches(pred_selector, pod["metadata"]["labels"])
    assert "checksum/config" in pod["metadata"]["annotations"]


def predictor_pod_labels(objs: dict, workload: str) -> dict:
    if workload == "deployment":
        return objs[("Deployment", RELEASE)]["spec"]["template"]["metadata"]["labels"]
    # KServe labels the predictor pods with the InferenceService name
    # (kserve pkg/constants/constants.go: InferenceServicePodLabelKey = "serving.kserve.io/inferenceservice")
    return {"serving.kserve.io/inferenceservice": RELEASE, "component": "predictor"}


@pytest.mark.parametrize("workload", WORKLOADS)
def test_network_policy_egress_to_prometheus_predictor_and_dns_only(workload):
    objs = objects(*WORKLOADS[workload])
    np_ = objs[("NetworkPolicy", LOOP)]["spec"]
    loop_labels = objs[("Deployment", LOOP)]["spec"]["template"]["metadata"]["labels"]
    assert matches(np_["podSelector"]["matchLabels"], loop_labels)
    assert set(np_["policyTypes"]) == {"Ingress", "Egress"}
    prometheus, predictor, dns = np_["egress"]
    assert [p["port"] for p in prometheus["ports"]] == [9090]
    assert prometheus["to"][0]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    assert [p["port"] for p in predictor["ports"]] == [8080]
    assert matches(predictor["to"][0]["podSelector"]["matchLabels"], predictor_pod_labels(objs, workload))
    assert {p["port"] for p in dns["ports"]} == {53}
    assert [p["port"] for p in np_["ingress"][0]["ports"]] == [9400]
    # and the predictor, isolated by its own policy, admits the loop
    into = objs[("NetworkPolicy", f"{LOOP}-to-predictor")]["spec"]
    assert matches(into["podSelector"]["matchLabels"], predictor_pod_labels(objs, workload))
    assert matches(into["ingress"][0]["from"][0]["podSelector"]["matchLabels"], loop_labels)


def test_off_by_default_and_nothing_extra_without_its_toggles():
    assert not [o for o in render("helm3") if "forecast-loop" in o["metadata"]["name"]]
    objs = objects("--set", "forecastLoop.serviceMonitor.enabled=false", "--set", "forecastLoop.prometheusRule.enabled=false",
                   "--set", "networkPolicy.enabled=false", "--set", "monitoring.grafanaDashboard.enabled=false")
    assert sorted(k for k in objs if "forecast-loop" in k[1]) == [
        ("ConfigMap", LOOP), ("Deployment", LOOP), ("Service", LOOP)]


BAD = {
    "no-targets": (["--set", "forecastLoop.enabled=true"], r"forecastLoop.targets|at least one"),
    "unknown-target-key": (["--set-json", 'forecastLoop.targets=[{"name": "a", "query": "up", "maxSeries": 3}]'],
                           r"(?i)additional propert.*maxSeries.*not allowed"),
    "both-directions": (["--set-json", 'forecastLoop.targets=[{"name": "a", "query": "up", '
                                       '"thresholds": {"warning": {"above": 1, "below": 0}}}]'],
                        r"(?i)thresholds.*warning"),
    "bad-interval": (["--set", "forecastLoop.interval=soon"], r"(?i)forecastLoop.interval"),
    "typo": (["--set", "forecastLoop.serviceMonitors.enabled=true"], r"(?i)additional propert.*serviceMonitors"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_values_are_refused(helm, case):
    args, pattern = BAD[case]
    base = [] if case == "no-targets" else ["--set", "forecastLoop.enabled=true"]
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *base, *args)
    assert proc.returncode != 0 and re.search(pattern, proc.stderr), proc.stderr


def rendered_rules() -> dict:
    objs = objects("--set", "forecastLoop.prometheusRule.breachFor=5m", "--set", "forecastLoop.prometheusRule.errorsFor=10m")
    return objs[("PrometheusRule", LOOP)]["spec"]


def test_promtool_unit_tests_fire_and_stay_quiet(tmp_path):
    spec = rendered_rules()
    assert "__" not in yaml.safe_dump(spec), "a placeholder was left unreplaced"
    tested = promtool_unit_test(tmp_path, spec, HERE / "forecast-loop-rules.test.yaml")
    proc = subprocess.run([promtool(), "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    alerts = {r["alert"] for g in spec["groups"] for r in g["rules"] if "alert" in r}
    assert alerts == {"PerfPredictorForecastBreach", "PerfPredictorForecastStale", "PerfPredictorForecastErrors"}
    assert alerts <= tested


def published_names() -> set[str]:
    """Every series name a loop with one forecast target (with capacity) publishes (its real collector)."""
    metrics = LoopMetrics(["t"], 60)
    view = metrics.views["t"]
    recommendation = Recommender(Capacity(per_replica=1.0, max_replicas=3, calibrate=False), 60).update(0, 0, 300, ["k"], np.ones((1, 12)))
    view.show(Forecasts([{"target": "t"}], np.zeros((3, 1, 12)), ("0.1", "0.5", "0.9"), (("15m", 2),), 0,
                        np.zeros(1), recommendation))
    view.last_success, view.skipped, view.score = 1.0, {"gap": 1}, Score(1.0, 0.8, 3)
    view.thresholds = (ThresholdLine("critical", "above", "0.9", 1.0),)
    metrics.errors.labels("t", "model_error").inc()
    metrics.duration.observe(0.1)
    return {s.name for family in text_string_to_metric_families(metrics.exposition().decode())
            for s in family.samples}


def test_dashboard_asks_only_for_series_the_loop_publishes():
    objs = objects()
    dashboard = json.loads(objs[("ConfigMap", f"{LOOP}-dashboard")]["data"]["perf-predictor-forecasts.json"])
    assert dashboard == json.loads((CHART / "files" / "forecast-loop-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = set(re.findall(r"\b(perf_predictor_[a-z_]+)", " ".join(exprs)))
    assert used and used <= published_names(), used - published_names()
    titles = " ".join(p["title"] for p in dashboard["panels"])
    assert "MASE" in titles and "coverage" in titles and "earlier" in titles


def test_rules_ask_only_for_series_the_loop_publishes():
    exprs = " ".join(r["expr"] for g in rendered_rules()["groups"] for r in g["rules"])
    used = set(re.findall(r"\b(perf_predictor_[a-z_]+)", exprs))
    assert used and used <= published_names(), used - published_names()


def test_helm_lint_with_the_loop_in_knative_mode(helm):
    proc = run_helm(helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, *CI,
                    "--set", "deploymentMode=Knative", "--set", "autoscaling.class=kpa",
                    "--set", "autoscaling.metric=concurrency", "--set", "autoscaling.target=10")
    assert proc.returncode == 0, proc.stdout + proc.stderr

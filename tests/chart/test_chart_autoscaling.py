"""The chart's KEDA ScaledObjects on the forecast loop's recommendation (forecastLoop.autoscaling).

ci/forecast-loop-scaling-external-values.yaml (the loop's gRPC scaler, CPU as the reactive floor) and
ci/forecast-loop-scaling-prometheus-values.yaml (a prometheus trigger on the exported series, the live
load query as the floor); ci/forecast-loop-values.yaml is forecast-only (capacity, entry disabled).
The CRD schema is checked for every ci file by test_chart_schemas.py; here, the rules KEDA's controller
and webhook apply, each next to the KEDA source file it comes from, and that the loop, its Service and
its NetworkPolicy serve what the ScaledObject asks for.
"""
from __future__ import annotations

import copy
import json
import re

import pytest
import yaml

from chartlib import CHART, CI_DIR, NAMESPACE, RELEASE, load_yaml, render, run_helm
from test_chart_forecast_loop import LOOP, matches, published_names
from test_chart_schemas import crd_errors, strictify

from forecast_loop.config import parse
from forecast_loop.external_scaler import KEDA_KEYS

CASES = {name: ["-f", str(CI_DIR / f"forecast-loop-scaling-{name}-values.yaml")] for name in ("external", "prometheus")}


def objects(*args: str) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in render("helm3", *args)}


def scaled_object(objs: dict) -> dict:
    (so,) = [o for (kind, _), o in objs.items() if kind == "ScaledObject"]
    return so


def loop_config(objs: dict):
    return parse(yaml.safe_load(objs[("ConfigMap", LOOP)]["data"]["config.yaml"]), "config.yaml")


def triggers(so: dict) -> dict[str, dict]:
    return {t["name"]: t for t in so["spec"]["triggers"]}


@pytest.mark.parametrize("case", CASES)
def test_replica_bounds_and_threshold_come_from_capacity(case):
    objs = objects(*CASES[case])
    so = scaled_object(objs)
    (target,) = loop_config(objs).targets
    capacity = target.capacity
    assert so["metadata"]["annotations"]["perf-predictor/forecast-target"] == target.name
    # apis/keda/v1alpha1/scaledobject_types.go CheckReplicaCountBoundsAreValid: min <= max
    assert so["spec"]["minReplicaCount"] == capacity.min_replicas <= so["spec"]["maxReplicaCount"] == capacity.max_replicas
    assert so["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "api"}
    forecast, reactive = triggers(so)["forecast"], triggers(so)["reactive"]
    # pkg/scalers/scaler.go GetMetricTargetType: external and prometheus triggers refuse Utilization; with
    # AverageValue the HPA computes ceil(value / target) = the recommendation
    assert forecast["metricType"] == "AverageValue"
    if case == "prometheus":
        # pkg/scalers/prometheus_scaler.go: serverAddress, query and threshold are required; threshold a float
        meta = forecast["metadata"]
        assert float(meta["threshold"]) == capacity.per_replica
        assert meta["serverAddress"] == loop_config(objs).prometheus.url
        # ignoreNullValues defaults to true (an empty answer is 0); false makes a withdrawn forecast a failure
        assert meta["ignoreNullValues"] == "false"
        # the recommendation in whole replicas times the threshold: ceil(value / threshold) = desired, and the
        # HPA's tolerance compares desired / current (kubernetes replica_calculator.go GetExternalPerPodMetricReplicas)
        assert meta["query"] == (f'max(perf_predictor_desired_replicas{{target="api-requests",service="api"}}) * '
                                 f'{meta["threshold"]}')
        assert set(re.findall(r"perf_predictor_[a-z_]+", meta["query"])) <= published_names()
        assert reactive["type"] == "prometheus" and float(reactive["metadata"]["threshold"]) == capacity.per_replica
    else:
        # pkg/scalers/cpu_memory_scaler.go: Utilization takes `value` as an integer percentage; the
        # metadata `type` key is deprecated in favour of metricType
        assert reactive == {"type": "cpu", "name": "reactive", "metricType": "Utilization", "metadata": {"value": "70"}}


@pytest.mark.parametrize("case", CASES)
def test_fallback_is_one_keda_accepts(case):
    so = scaled_object(objects(*CASES[case]))
    fallback = so["spec"]["fallback"]
    # apis/keda/v1alpha1/scaledobject_types.go CheckFallbackValid: both counts >= 0 and at least one
    # trigger that is not cpu or memory (those are served by metrics-server, not by KEDA's adapter)
    assert fallback["failureThreshold"] >= 0 and fallback["replicas"] >= 0
    assert any(t["type"] not in ("cpu", "memory") for t in so["spec"]["triggers"])
    # pkg/fallback/fallback.go doFallback: a Value target needs ready replicas to divide by; ours is AverageValue,
    # so the fallback metric is replicas * per_replica and the forecast trigger asks for `replicas`
    assert triggers(so)["forecast"]["metricType"] == "AverageValue"
    # reactive only: the floor, not a guess; but never 0, for pkg/scaling/executor/scale_scaledobjects.go
    # RequestScale scales to zero when a trigger errs, none is active, minReplicaCount is 0 and
    # fallback.replicas is 0 (with replicas > 0 it waits for the fallback instead)
    assert fallback["replicas"] == max(1, so["spec"]["minReplicaCount"])
    if so["spec"]["minReplicaCount"] == 0:
        # apis/keda/v1alpha1/scaledobject_webhook.go verifyCPUMemoryScalers: only cpu/memory triggers
        # and minReplicaCount 0 are refused (they never scale to zero)
        assert any(t["type"] not in ("cpu", "memory") for t in so["spec"]["triggers"])


def test_external_trigger_reaches_the_loops_scaler():
    objs = objects(*CASES["external"])
    so = scaled_object(objs)
    meta = triggers(so)["forecast"]["metadata"]
    svc, dep = objs[("Service", LOOP)], objs[("Deployment", LOOP)]
    # pkg/scalers/external_scaler.go: scalerAddress (host:port, required) is dialled by KEDA's operator;
    # every other key reaches the scaler as scalerMetadata
    host, port = meta["scalerAddress"].rsplit(":", 1)
    assert host == f"{LOOP}.{NAMESPACE}.svc.cluster.local"
    (svc_port,) = [p for p in svc["spec"]["ports"] if p["port"] == int(port)]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    (container_port,) = [p for p in container["ports"] if p["name"] == svc_port["targetPort"]]
    config = loop_config(objs)
    assert config.scaler_listen == ("0.0.0.0", container_port["containerPort"])
    target = next(t for t in config.targets if t.name == meta["target"])
    assert target.capacity is not None
    assert set(meta) - {"target"} - KEDA_KEYS == {"service"}, "the rest are label matchers of the series"
    assert so["metadata"]["namespace"] == "shop", "the ScaledObject lives with the team's Deployment"


def test_keda_operator_may_call_the_scaler_and_nobody_else_new():
    with_scaler = objects(*CASES["external"])[("NetworkPolicy", LOOP)]["spec"]["ingress"]
    without = objects(*CASES["external"], "--set", "forecastLoop.scaler.enabled=false",
                      "--set", "forecastLoop.autoscaling[0].forecastTrigger=prometheus")[("NetworkPolicy", LOOP)]
    assert len(with_scaler) == len(without["spec"]["ingress"]) + 1
    (rule,) = [r for r in with_scaler if r["ports"] == [{"port": 9500, "protocol": "TCP"}]]
    (peer,) = rule["from"]
    # the KEDA chart labels its operator pods app.kubernetes.io/name: keda-operator
    # (kedacore/charts keda/templates/manager/deployment.yaml); the operator runs the scalers
    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}
    assert matches(peer["podSelector"]["matchLabels"], {"app.kubernetes.io/name": "keda-operator", "app": "keda-operator"})
    svc = objects(*CASES["external"], "--set", "forecastLoop.scaler.enabled=false",
                  "--set", "forecastLoop.autoscaling[0].forecastTrigger=prometheus")[("Service", LOOP)]
    assert [p["name"] for p in svc["spec"]["ports"]] == ["metrics"], "no scaler port unless the scaler is on"


def test_forecast_only_mode_renders_no_scaled_object():
    objs = objects("-f", str(CI_DIR / "forecast-loop-values.yaml"))
    assert not [k for k in objs if k[0] == "ScaledObject"]
    config = loop_config(objs)
    assert config.targets[0].capacity.per_replica == 50 and config.scaler_listen is None
    values = yaml.safe_load((CI_DIR / "forecast-loop-values.yaml").read_text())
    assert values["forecastLoop"]["autoscaling"][0]["enabled"] is False


def test_calibrate_passes_the_schema_and_reaches_the_loops_config():
    target = '[{"name": "a", "query": "up", "capacity": {"per_replica": 10, "max_replicas": 5, "calibrate": false}}]'
    objs = objects("--set", "forecastLoop.enabled=true", "--set-json", f"forecastLoop.targets={target}")
    assert loop_config(objs).targets[0].capacity.calibrate is False


def test_dashboard_plots_recommended_against_actual_replicas():
    objs = objects("-f", str(CI_DIR / "forecast-loop-values.yaml"))
    dashboard = json.loads(objs[("ConfigMap", f"{LOOP}-dashboard")]["data"]["perf-predictor-forecasts.json"])
    (panel,) = [p for p in dashboard["panels"] if "replicas" in p["title"].lower() and p["type"] == "timeseries"]
    exprs = [t["expr"] for t in panel["targets"]]
    assert any(e.startswith("perf_predictor_desired_replicas{") for e in exprs)
    assert any(e.startswith("kube_deployment_status_replicas{") for e in exprs)  # kube-state-metrics
    # what the HPA would hold of it: the largest recommendation of its scale-down stabilisation window,
    # 300 s unless the ScaledObject sets one (kubernetes pkg/apis/autoscaling/v2/defaults.go
    # SetDefaults_HorizontalPodAutoscalerBehavior; horizontal.go stabilizeRecommendationWithBehaviors)
    assert any(e.startswith("max_over_time(perf_predictor_desired_replicas{") and e.endswith("[5m])") for e in exprs)


def test_crd_check_catches_bad_scaled_objects(shared_dir):
    """The schema check that passes every ci file is able to fail on a ScaledObject."""
    crd = load_yaml(shared_dir / "crds" / "keda.sh_scaledobjects.yaml")
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schemas = {("keda.sh/v1alpha1", "ScaledObject"): strictify(version["schema"]["openAPIV3Schema"])}
    so = scaled_object(objects(*CASES["external"]))
    assert crd_errors(so, schemas) == []
    bad = copy.deepcopy(so)
    bad["spec"]["fallback"]["behavior"] = "sometimes"
    del bad["spec"]["triggers"][1]["type"]
    bad["spec"]["triggers"][0]["metadata"]["n"] = 3
    errors = " ".join(crd_errors(bad, schemas))
    assert "behavior" in errors and "'type' is a required property" in errors and "is not of type 'string'" in errors


BAD = {
    "unknown-target": ('[{"enabled": true, "target": "b", "scaleTargetRef": {"name": "api"}, "reactive": {"cpu": 70}}]',
                       r"autoscaling\[0\].target: no target named \"b\""),
    "no-capacity": ('[{"enabled": true, "target": "plain", "scaleTargetRef": {"name": "api"}, "reactive": {"cpu": 70}}]',
                    r"target \"plain\" has no capacity"),
    "external-without-scaler": ('[{"enabled": true, "target": "a", "scaleTargetRef": {"name": "api"}, '
                                '"reactive": {"cpu": 70}}]', r"external needs forecastLoop.scaler.enabled"),
    "no-reactive-floor": ('[{"enabled": true, "target": "a", "scaleTargetRef": {"name": "api"}}]',
                          r"(?i)reactive.*required|missing propert[a-z]* .*reactive"),
    "two-floors": ('[{"enabled": true, "target": "a", "scaleTargetRef": {"name": "api"}, '
                   '"reactive": {"cpu": 70, "query": "up"}}]', r"(?i)reactive"),
    "twice-the-same-workload": ('[{"enabled": true, "target": "a", "scaleTargetRef": {"name": "api"}, '
                                '"forecastTrigger": "prometheus", "reactive": {"cpu": 70}}, '
                                '{"enabled": true, "target": "a", "scaleTargetRef": {"name": "api"}, '
                                '"forecastTrigger": "prometheus", "reactive": {"query": "up"}}]',
                                r"autoscaling\[1\].scaleTargetRef: perf-predictor/Deployment/api is already scaled"),
}
TARGETS = ('[{"name": "a", "query": "up", "capacity": {"per_replica": 10, "max_replicas": 5}}, '
           '{"name": "plain", "query": "up"}]')


@pytest.mark.parametrize("case", BAD)
def test_bad_autoscaling_values_are_refused(helm, case):
    entries, pattern = BAD[case]
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--set", "forecastLoop.enabled=true",
                    "--set-json", f"forecastLoop.targets={TARGETS}", "--set-json", f"forecastLoop.autoscaling={entries}")
    assert proc.returncode != 0 and re.search(pattern, proc.stderr), proc.stderr


@pytest.mark.parametrize("capacity, pattern", [
    ('{"max_replicas": 5}', r"(?i)per_replica"),
    ('{"per_replica": 0, "max_replicas": 5}', r"(?i)per_replica"),
    ('{"per_replica": 1, "max_replicas": 5, "lead": "5m"}', r"(?i)additional propert.*lead"),
    ('{"per_replica": 1, "max_replicas": 5, "calibrate": "yes"}', r"(?i)calibrate.*(boolean|got string)"),
    ('{"per_replica": 1, "max_replicas": 2, "min_replicas": 3}',
     r"targets\[0\].capacity.max_replicas: must be >= min_replicas \(3\), got 2"),
])
def test_bad_capacity_is_refused_by_the_schema(helm, capacity, pattern):
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--set", "forecastLoop.enabled=true",
                    "--set-json", f'forecastLoop.targets=[{{"name": "a", "query": "up", "capacity": {capacity}}}]')
    assert proc.returncode != 0 and re.search(pattern, proc.stderr), proc.stderr

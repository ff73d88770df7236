"""What the rendered objects must contain (KServe fields and annotations, ports,
probes, autoscaling mapping, monitoring, NetworkPolicy, PDB), and that the chart
README documents every value."""

from __future__ import annotations

import json
import re

import yaml

from chartlib import CHART, NAMESPACE, RELEASE, render, render_case


def one(objs, kind):
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(spec):
    return next(c for c in spec["containers"] if c["name"] == "kserve-container")


def test_default_inference_service():
    isvc = one(render_case("helm3", "default"), "InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    ann = isvc["metadata"]["annotations"]
    assert ann["serving.kserve.io/deploymentMode"] == "Standard"
    assert ann["serving.kserve.io/autoscalerClass"] == "hpa"
    pred = isvc["spec"]["predictor"]
    assert (pred["minReplicas"], pred["maxReplicas"], pred["scaleMetric"], pred["scaleTarget"]) == (1, 3, "cpu", 80)
    assert pred["automountServiceAccountToken"] is False
    c = container(pred)
    assert c["args"][:5] == ["--model_name=perf-predictor", "--model_dir=/mnt/models", "--http_port=8080",
                             "--grpc_port=8081", "--workers=1"]
    assert "command" not in c  # the image's exec-form ENTRYPOINT runs `python -m predictor`
    assert [(p["name"], p["containerPort"]) for p in c["ports"]] == [("http1", 8080), ("h2c", 8081)]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/models/perf-predictor/ready", "port": 8080}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert not any(e["name"] == "STORAGE_URI" for e in c["env"])  # baked model by default
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    assert pred["labels"]["app.kubernetes.io/component"] == "predictor"


def test_storage_uri_feeds_the_storage_initializer():
    c = container(one(render_case("helm3", "storage-uri"), "InferenceService")["spec"]["predictor"])
    assert {"name": "STORAGE_URI", "value": "s3://models/perf-predictor/v1"} in c["env"]
    assert "--model_dir=/mnt/models" in c["args"]


def test_keda_maps_to_external_prometheus_metric():
    pred = one(render_case("helm3", "keda"), "InferenceService")
    assert pred["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "keda"
    spec = pred["spec"]["predictor"]
    assert "scaleMetric" not in spec  # KServe rejects scaleMetric with KEDA
    metric = spec["autoScaling"]["metrics"][0]
    assert metric["type"] == "External"
    ext = metric["external"]
    assert ext["metric"]["backend"] == "prometheus"
    assert 'namespace="perf-predictor"' in ext["metric"]["query"]
    assert one(render_case("helm3", "keda"), "PodMonitor")  # the series the query reads
    assert 'model="perf-predictor"' in ext["metric"]["query"]
    assert ext["target"] == {"type": "Value", "value": "10"}


def test_knative_mode():
    isvc = one(render_case("helm3", "knative"), "InferenceService")
    ann = isvc["metadata"]["annotations"]
    assert ann["serving.kserve.io/deploymentMode"] == "Knative"
    assert "serving.kserve.io/autoscalerClass" not in ann
    pred = isvc["spec"]["predictor"]
    assert (pred["scaleMetric"], pred["scaleTarget"], pred["minReplicas"]) == ("rps", 20, 0)
    # Knative allows a single container port
    assert [p["name"] for p in container(pred)["ports"]] == ["http1"]
    pm = one(render_case("helm3", "knative"), "PodMonitor")
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "user-port"  # Knative's name for the user port
    # Knative's default feature flags refuse these pod fields; the security settings sit on the container
    assert "securityContext" not in pred and "terminationGracePeriodSeconds" not in pred
    assert container(pred)["securityContext"]["runAsUser"] == 10001


def test_no_autoscaling_pins_replicas():
    objs = render_case("helm3", "no-autoscaling")
    isvc = one(objs, "InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "none"
    assert (isvc["spec"]["predictor"]["minReplicas"], isvc["spec"]["predictor"]["maxReplicas"]) == (1, 1)
    assert not [o for o in objs if o["kind"] == "PodDisruptionBudget"]


def test_memory_hpa_is_a_quantity_per_pod():
    pred = one(render_case("helm3", "hpa-memory"), "InferenceService")["spec"]["predictor"]
    assert "scaleMetric" not in pred and "scaleTarget" not in pred
    assert pred["autoScaling"]["metrics"] == [{"type": "Resource", "resource": {
        "name": "memory", "target": {"type": "AverageValue", "averageValue": "512Mi"}}}]


def test_kserve_015_mode_names():
    isvc = one(render("helm3", "--set", "kserveVersion=0.15.2"), "InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    isvc = one(render("helm3", "-f", str(CHART / "ci" / "knative-values.yaml"), "--set", "kserveVersion=0.15"),
               "InferenceService")
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"


def test_knative_network_policy_opens_the_queue_proxy():
    np = one(render_case("helm3", "knative-network-policy"), "NetworkPolicy")
    rules = np["spec"]["ingress"]
    assert sorted(p["port"] for p in rules[0]["ports"]) == [8012, 8013]
    assert [p["port"] for p in rules[1]["ports"]] == [9090]
    assert rules[1]["from"] == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "knative-serving"}}}]
    assert [p["port"] for p in rules[2]["ports"]] == [8080]


def test_plain_deployment_shares_the_container():
    objs = render_case("helm3", "deployment")
    dep, svc, hpa = one(objs, "Deployment"), one(objs, "Service"), one(objs, "HorizontalPodAutoscaler")
    isvc_c = container(one(render_case("helm3", "default"), "InferenceService")["spec"]["predictor"])
    dep_c = container(dep["spec"]["template"]["spec"])
    assert dep_c == isvc_c
    assert "replicas" not in dep["spec"]  # the HPA owns it
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in dep["spec"]["selector"]["matchLabels"].items())
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert ports["http1"]["port"] == 8080 and ports["h2c"]["appProtocol"] == "kubernetes.io/h2c"
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": dep["metadata"]["name"]}
    assert hpa["spec"]["metrics"][0]["resource"] == {"name": "cpu", "target": {"type": "Utilization",
                                                                               "averageUtilization": 70}}


def test_pdb_only_when_more_than_one_replica():
    pdb = one(render_case("helm3", "default"), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    objs = render("helm3", "--set", "autoscaling.maxReplicas=1")
    assert not [o for o in objs if o["kind"] == "PodDisruptionBudget"]
    fixed = one(render_case("helm3", "deployment-fixed"), "PodDisruptionBudget")
    assert fixed["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "predictor"


def test_network_policy_admits_only_inference_and_metrics():
    np = one(render_case("helm3", "network-policy"), "NetworkPolicy")
    assert np["spec"]["policyTypes"] == ["Ingress"]
    rules = np["spec"]["ingress"]
    assert sorted(p["port"] for p in rules[0]["ports"]) == [8080, 8081]
    assert rules[0]["from"][0]["namespaceSelector"] == {"matchLabels": {"perf-predictor/client": "true"}}
    assert rules[0]["from"][1]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "test"
    assert [p["port"] for p in rules[1]["ports"]] == [8080]
    assert rules[1]["from"][0]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    assert len(rules) == 2
    assert np["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "predictor"


def test_monitors_select_the_predictor_pods():
    sm = one(render_case("helm3", "service-monitor"), "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"]["serving.kserve.io/inferenceservice"] == "perf-predictor"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    sm2 = one(render_case("helm3", "deployment-service-monitor"), "ServiceMonitor")
    svc = one(render_case("helm3", "deployment-service-monitor"), "Service")
    assert all(svc["metadata"]["labels"][k] == v for k, v in sm2["spec"]["selector"]["matchLabels"].items())
    pm = one(render_case("helm3", "pod-monitor"), "PodMonitor")
    isvc = one(render_case("helm3", "pod-monitor"), "InferenceService")
    pod_labels = isvc["spec"]["predictor"]["labels"]
    assert all(pod_labels[k] == v for k, v in pm["spec"]["selector"]["matchLabels"].items())
    assert pm["spec"]["podMetricsEndpoints"][0] ["port"] == "http1"


def test_prometheus_rule_and_dashboard_come_from_files():
    text = (CHART / "files" / "prometheus-rules.yaml").read_text()
    for placeholder, value in (("__JOB_REGEX__", ".*perf-predictor.*"), ("__ERROR_RATIO__", "0.05"),
                               ("__P99_SLO_SECONDS__", "0.1"), ("__FOR__", "5m")):
        text = text.replace(placeholder, value)
    rules = yaml.safe_load(text)
    pr = one(render_case("helm3", "prometheus-rule"), "PrometheusRule")
    assert pr["spec"] == rules
    exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    for metric in ("perf_predictor_requests_total", "perf_predictor_request_duration_seconds_bucket", "up{"):
        assert metric in exprs
    cm = one(render_case("helm3", "grafana-dashboard"), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["perf-predictor.json"])
    assert dashboard == json.loads((CHART / "files" / "dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]


def test_helm_test_hook_pod():
    pod = one(render_case("helm3", "default"), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    c = pod["spec"]["containers"][0]
    assert c["image"] == container(one(render_case("helm3", "default"), "InferenceService")["spec"]["predictor"])["image"]
    assert c["command"][:2] == ["python3", "-c"]
    assert c["command"][2] == (CHART / "files" / "helm-test.py").read_text()
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["BASE_URL"] == f"http://{RELEASE}-predictor.{NAMESPACE}.svc.cluster.local"
    dep_pod = one(render_case("helm3", "deployment"), "Pod")
    env = {e["name"]: e["value"] for e in dep_pod["spec"]["containers"][0]["env"]}
    assert env["BASE_URL"] == f"http://{RELEASE}.{NAMESPACE}.svc.cluster.local:8080"


def test_auth_mounts_one_secret_into_the_server_the_loop_and_the_test():
    """ci/auth-values.yaml: the flags, the Secret from values, mounted read-only without subPath (so
    rotation reaches the pods: Kubernetes never updates a subPath mount) wherever a token is used."""
    objs = render_case("helm3", "auth")
    secret = one(objs, "Secret")
    assert secret["stringData"]["tokens"].splitlines() == ["ci-token-" + "a" * 32, "ci-token-" + "b" * 32]
    mount = {"name": "auth-tokens", "mountPath": "/var/run/secrets/perf-predictor", "readOnly": True}
    volume = {"name": "auth-tokens", "secret": {"secretName": secret["metadata"]["name"], "defaultMode": 0o440,
                                                "items": [{"key": "tokens", "path": "tokens"}]}}
    c = container(one(objs, "InferenceService")["spec"]["predictor"])
    assert {"--auth_token_file=/var/run/secrets/perf-predictor/tokens", "--auth_open=health,metrics",
            "--enable_repository_api", "--model_digest=sha256:" + "0" * 64} <= set(c["args"])
    assert mount in c["volumeMounts"] and volume in one(objs, "InferenceService")["spec"]["predictor"]["volumes"]
    loop = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert mount in loop["containers"][0]["volumeMounts"] and volume in loop["volumes"]
    config = yaml.safe_load(next(o for o in objs if o["kind"] == "ConfigMap" and "forecast-loop" in o["metadata"]["name"]
                                 and "config.yaml" in o.get("data", {}))["data"]["config.yaml"])
    assert config["model"]["bearer_token_file"] == "/var/run/secrets/perf-predictor/tokens"
    test_pod = one(objs, "Pod")["spec"]
    assert {"name": "TOKEN_FILE", "value": "/var/run/secrets/perf-predictor/tokens"} in test_pod["containers"][0]["env"]
    assert mount in test_pod["containers"][0]["volumeMounts"] and volume in test_pod["volumes"]
    # an existing Secret is used as it is, and nothing is created
    objs = render("helm3", "--set", "auth.enabled=true", "--set", "auth.existingSecret=mine", "--set",
                  "auth.secretKey=lines", "--set", "auth.openMetrics=false")
    assert not [o for o in objs if o["kind"] == "Secret"]
    isvc = one(objs, "InferenceService")["spec"]["predictor"]
    assert {"name": "auth-tokens", "secret": {"secretName": "mine", "defaultMode": 0o440,
                                              "items": [{"key": "lines", "path": "tokens"}]}} in isvc["volumes"]
    assert "--auth_open=health" in container(isvc)["args"]
    assert not any(a.startswith(("--auth", "--enable_repository", "--model_digest"))
                   for a in container(one(render_case("helm3", "default"), "InferenceService")["spec"]["predictor"])["args"])


def _leaf_keys(node, prefix=""):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaf_keys(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1]


def test_readme_lists_every_value():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([^`]+)` \|", readme, re.M))
    keys = set(_leaf_keys(values))
    # free-form maps are documented as a whole
    for whole in ("resources", "podSecurityContext", "securityContext", "tests.resources",
                  "networkPolicy.metricsNamespaceSelector", "networkPolicy.knative.systemNamespaceSelector",
                  "networkPolicy.knative.ingressNamespaceSelector", "forecastLoop.resources",
                  "forecastLoop.networkPolicy.prometheus.namespaceSelector",
                  "forecastLoop.networkPolicy.keda.namespaceSelector", "forecastLoop.networkPolicy.keda.podSelector"):
        keys = {k for k in keys if not k.startswith(whole + ".")} | {whole}
    missing = sorted(keys - documented)
    assert not missing, f"chart README does not document: {missing}"
    schema_keys = json.loads((CHART / "values.schema.json").read_text())["properties"]
    assert set(values) <= set(schema_keys)

"""The rendered chart as KServe's controller and webhooks, Knative's webhook, the Kubernetes
NetworkPolicy model and prometheus-operator treat it, for every ci/*-values.yaml and for each
supported KServe version.

A schema says what a field may hold; the controller that reads it decides what it means. Each rule
below is written from the source of that controller, cited next to it (repository, path, tag), and
applied to the objects `helm template` renders. Rules that differ between KServe versions run once
per version in KSERVE_VERSIONS.
"""

from __future__ import annotations

import copy
import re
from functools import lru_cache

import pytest
import yaml

from chartlib import CASES, CI_DIR, CHART, REPO, case_args, pod_specs, render
from test_chart_pod_security import restricted_violations

# The KServe versions the chart supports; tests run the version-dependent rules for each.
KSERVE_VERSIONS = ["0.15", "0.16"]

STORAGE_FIXTURE = yaml.safe_load((REPO / "tests" / "chart" / "kserve_storage_containers.yaml").read_text())
CSC_PATCH = CHART / "files" / "storage-initializer-restricted-patch.yaml"


# --------------------------------------------------------------------------------------------
# helpers


def values_of(case: str, *overrides: dict) -> dict:
    """The chart's values.yaml merged with the case's ci file (what helm hands the templates)."""
    merged = yaml.safe_load((CHART / "values.yaml").read_text())
    layers = [] if case == "default" else [yaml.safe_load((CI_DIR / f"{case}-values.yaml").read_text()) or {}]
    for layer in [*layers, *overrides]:
        merged = _deep_merge(merged, layer)
    return merged


def _deep_merge(base, over):
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _deep_merge(base.get(k), v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


@lru_cache(maxsize=None)
def _render_versioned(case: str, version: str, extra: tuple[str, ...] = ()) -> tuple:
    return tuple(render("helm3", *case_args(case), "--set", f"kserveVersion={version}", *extra))


def objects(case: str, version: str, *extra: str) -> list[dict]:
    return copy.deepcopy(list(_render_versioned(case, version, tuple(extra))))


def of_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def isvc_of(objs):
    found = of_kind(objs, "InferenceService")
    return found[0] if found else None


def kserve_cases():
    return [c for c in CASES if values_of(c)["workload"] == "inferenceService"]


def intended_mode(case: str) -> str:
    return values_of(case)["deploymentMode"]


# --------------------------------------------------------------------------------------------
# 1. deployment-mode names by KServe version

# kserve/kserve pkg/constants/constants.go: v0.15.2 defines only RawDeployment, Serverless, ModelMesh;
# v0.16.0 adds Standard and Knative (and keeps the old two as Legacy* aliases).
KNOWN_MODES = {"0.15": {"RawDeployment", "Serverless", "ModelMesh"},
               "0.16": {"Standard", "Knative", "ModelMesh"}}
LEGACY_ALIASES = {"0.15": {}, "0.16": {"RawDeployment": "Standard", "Serverless": "Knative"}}
RAW_NAME = {"0.15": "RawDeployment", "0.16": "Standard"}
MEANING = {"RawDeployment": "Standard", "Serverless": "Knative", "Standard": "Standard", "Knative": "Knative"}


def controller_mode(annotation: str, version: str, cluster_default: str) -> str:
    """kserve/kserve pkg/controller/v1beta1/inferenceservice/utils/utils.go GetDeploymentMode
    (v0.15.2, v0.16.0): a name the version does not know falls back to the cluster's default mode."""
    name = LEGACY_ALIASES[version].get(annotation, annotation)
    return name if name in KNOWN_MODES[version] else cluster_default


@pytest.mark.parametrize("version", KSERVE_VERSIONS)
@pytest.mark.parametrize("case", kserve_cases())
def test_deployment_mode_is_a_name_the_version_knows(case, version):
    isvc = isvc_of(objects(case, version))
    annotation = isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"]
    # whatever the cluster default (KServe's Helm chart defaults to Knative/Serverless), the
    # controller must run the mode the values ask for
    for cluster_default in KNOWN_MODES[version] - {"ModelMesh"}:
        resolved = controller_mode(annotation, version, cluster_default)
        assert MEANING[resolved] == intended_mode(case), (
            f"KServe {version} reads deploymentMode {annotation!r} as {resolved} on a cluster whose default is "
            f"{cluster_default}; the values ask for {intended_mode(case)}")
    # the webhook picks the HPA/KEDA checks only under the literal raw-mode name (see
    # webhook_autoscaling_error), so a Standard-mode object must carry exactly that name
    if intended_mode(case) == "Standard":
        assert annotation == RAW_NAME[version]


# --------------------------------------------------------------------------------------------
# 2. autoscaling as KServe's webhook validates it and its HPA reconciler reads it

# kserve/kserve pkg/constants/constants.go AutoscalerAllowedClassList / ...HPAMetricsList / ...KPAMetricsList
ALLOWED_CLASSES = {"hpa", "external", "keda", "none"}
HPA_METRICS = {"cpu", "memory"}
KPA_METRICS = {"concurrency", "rps"}


def webhook_autoscaling_error(isvc: dict, version: str) -> str | None:
    """kserve/kserve pkg/apis/serving/v1beta1/inference_service_validation.go (v0.15.2, v0.16.0):
    validateInferenceServiceAutoscaler and validateAutoScalingCompExtension with
    validateScalingHPACompExtension / validateScalingKedaCompExtension / validateScalingKPACompExtension."""
    ann = isvc["metadata"].get("annotations", {})
    pred = isvc["spec"]["predictor"]
    cls = ann.get("serving.kserve.io/autoscalerClass")
    if cls is not None and cls not in ALLOWED_CLASSES:
        return f"[{cls}] is not a supported autoscaler class type"
    mode = ann.get("serving.kserve.io/deploymentMode")
    metrics = (pred.get("autoScaling") or {}).get("metrics") or []
    if mode == RAW_NAME[version]:
        if cls == "hpa":
            metric = pred.get("scaleMetric", "cpu")
            if metric not in HPA_METRICS:
                return f"[{metric}] is not a supported metric"
            target = pred.get("scaleTarget")
            # the source's `metric == MetricCPU && target < 1 || target > 100` binds as
            # `(cpu && < 1) || > 100`: any shorthand target above 100 is refused, memory included
            if target is not None and ((metric == "cpu" and target < 1) or target > 100):
                return "the target utilization percentage should be a [1-100] integer"
            if target is not None and metric == "memory" and target < 1:
                return "the target memory should be greater than 1 MiB"
            for m in metrics:
                if m.get("type") != "Resource" or not m.get("resource"):
                    return "invalid HPA metric source type"
        elif cls == "keda":
            if "scaleMetric" in pred:
                return "ScaleMetric is not supported for KEDA"
            for m in metrics:
                if m.get("type") == "External":
                    ext = m.get("external") or {}
                    if not (ext.get("metric") or {}).get("query"):
                        return "the query should not be empty"
                    if (ext.get("target") or {}).get("value") in (None, ""):
                        return "the target threshold value should not be empty"
                elif m.get("type") != "Resource":
                    return f"unknown KEDA metric type {m.get('type')}"
        return None
    # any other name (Knative, or a name this version does not know) goes to the KPA checks
    if ann.get("autoscaling.knative.dev/class") == "hpa.autoscaling.knative.dev":
        return None
    if pred.get("deploymentStrategy"):
        return "customizing deploymentStrategy is only supported for raw deployment mode"
    metric = pred.get("scaleMetric", "concurrency")
    if metric not in KPA_METRICS:
        return f"[{metric}] is not a supported metric"
    if metric == "rps" and pred.get("scaleTarget") is not None and pred["scaleTarget"] < 1:
        return "the target for rps should be greater than 1"
    return None


@pytest.mark.parametrize("version", KSERVE_VERSIONS)
@pytest.mark.parametrize("case", kserve_cases())
def test_kserve_webhook_accepts_the_autoscaling(case, version):
    isvc = isvc_of(objects(case, version))
    assert webhook_autoscaling_error(isvc, version) is None


def hpa_metrics_kserve_creates(pred: dict) -> list[tuple[str, str, object]]:
    """kserve/kserve pkg/controller/v1beta1/inferenceservice/reconcilers/hpa/hpa_reconciler.go
    getHPAMetrics (v0.15.2, v0.16.0): (resource, target type, target) of the HPA KServe creates.
    The shorthand scaleMetric memory + scaleTarget becomes a *Utilization* percentage."""
    out = []
    metrics = (pred.get("autoScaling") or {}).get("metrics")
    if metrics:
        for m in metrics:
            r = m.get("resource")
            if not r:
                continue
            t = r["target"]
            if r["name"] == "cpu":
                out.append(("cpu", "Utilization", t.get("averageUtilization", 80)))
            elif r["name"] == "memory":
                out.append(("memory", t["type"], t.get("averageUtilization") if t["type"] == "Utilization"
                            else str(t.get("averageValue"))))
        return out
    metric = pred.get("scaleMetric", "cpu")
    if metric == "cpu":
        out.append(("cpu", "Utilization", pred.get("scaleTarget", 80)))
    elif metric == "memory" and "scaleTarget" in pred:
        out.append(("memory", "Utilization", pred["scaleTarget"]))
    return out


def kserve_hpa_cases():
    out = []
    for c in kserve_cases():
        v = values_of(c)
        if v["autoscaling"]["enabled"] and v["autoscaling"]["class"] == "hpa" and v["deploymentMode"] == "Standard":
            out.append(c)
    return out


@pytest.mark.parametrize("version", KSERVE_VERSIONS)
@pytest.mark.parametrize("case", kserve_hpa_cases())
def test_kserve_hpa_targets_what_the_values_say(case, version):
    a = values_of(case)["autoscaling"]
    pred = isvc_of(objects(case, version))["spec"]["predictor"]
    # values.yaml: cpu target = utilisation percent, memory target = MiB per pod
    want = ("cpu", "Utilization", a["target"]) if a["metric"] == "cpu" else ("memory", "AverageValue", f"{a['target']}Mi")
    assert hpa_metrics_kserve_creates(pred) == [want]


# --------------------------------------------------------------------------------------------
# 3. fixed replicas


def replicas_kserve_runs(isvc: dict) -> tuple[int, int]:
    """(min, max) pods KServe's Standard mode runs.
    kserve/kserve .../reconcilers/deployment/deployment_reconciler.go (v0.15.2, v0.16.0): replicas are
    set from minReplicas only for autoscalerClass none; for every other class they are left to an
    autoscaler (hpa/keda: KServe makes one; external: nobody until the user does), so a fresh
    Deployment runs the Kubernetes default of 1."""
    pred = isvc["spec"]["predictor"]
    cls = isvc["metadata"]["annotations"].get("serving.kserve.io/autoscalerClass", "hpa")
    lo = pred.get("minReplicas", 1)
    if cls == "none":
        return lo, lo
    if cls in ("hpa", "keda"):
        return lo, pred.get("maxReplicas", lo)
    return 1, 1


@pytest.mark.parametrize("version", KSERVE_VERSIONS)
@pytest.mark.parametrize("case", [c for c in kserve_cases() if not values_of(c)["autoscaling"]["enabled"]
                                  and intended_mode(c) == "Standard"])
def test_fixed_replicas_are_what_kserve_runs(case, version):
    v = values_of(case)
    objs = objects(case, version)
    lo, hi = replicas_kserve_runs(isvc_of(objs))
    assert (lo, hi) == (v["replicaCount"], v["replicaCount"])
    # a PodDisruptionBudget with minAvailable 1 over one pod would block every node drain
    if of_kind(objs, "PodDisruptionBudget"):
        assert hi > 1


@pytest.mark.parametrize("version", KSERVE_VERSIONS)
def test_three_fixed_replicas(version):
    isvc = isvc_of(objects("no-autoscaling", version, "--set", "replicaCount=3"))
    assert replicas_kserve_runs(isvc) == (3, 3)


# --------------------------------------------------------------------------------------------
# 4. Knative pod spec under Knative's default feature flags

# KServe hands the predictor's pod fields to the Knative Service unchanged:
# kserve/kserve pkg/controller/v1beta1/inferenceservice/reconcilers/knative/ksvc_reconciler.go (v0.16.0).
# Fields of the predictor that are KServe's own (ComponentExtensionSpec, PredictorSpec extras), not pod fields:
KSERVE_PREDICTOR_FIELDS = {"minReplicas", "maxReplicas", "scaleMetric", "scaleMetricType", "scaleTarget",
                           "containerConcurrency", "timeout", "canaryTrafficPercent", "logger", "batcher",
                           "labels", "annotations", "deploymentStrategy", "autoScaling", "model", "workerSpec",
                           "storageUris", "storageContainerName"}
# knative/serving pkg/apis/serving/fieldmask.go PodSpecMask with pkg/apis/config/features.go
# defaultFeaturesConfig (knative-v1.15.2, same on main): only these pod fields pass with default flags;
# affinity, nodeSelector, tolerations, topologySpreadConstraints, priorityClassName, securityContext
# (PodSpecSecurityContext and SecurePodDefaults both Disabled), initContainers need a flag;
# terminationGracePeriodSeconds never passes.
KNATIVE_POD_FIELDS = {"serviceAccountName", "containers", "volumes", "imagePullSecrets", "enableServiceLinks",
                      "automountServiceAccountToken"}
FLAG_FIELDS = {"affinity": "kubernetes.podspec-affinity", "nodeSelector": "kubernetes.podspec-nodeselector",
               "tolerations": "kubernetes.podspec-tolerations",
               "topologySpreadConstraints": "kubernetes.podspec-topologyspreadconstraints",
               "priorityClassName": "kubernetes.podspec-priorityclassname",
               "securityContext": "kubernetes.podspec-securitycontext",
               "initContainers": "kubernetes.podspec-init-containers"}
# fieldmask.go ContainerMask / SecurityContextMask / CapabilitiesMask
KNATIVE_CONTAINER_FIELDS = {"name", "args", "command", "env", "workingDir", "envFrom", "image", "imagePullPolicy",
                            "livenessProbe", "ports", "readinessProbe", "resources", "securityContext",
                            "startupProbe", "terminationMessagePath", "terminationMessagePolicy", "volumeMounts"}
KNATIVE_SC_FIELDS = {"capabilities", "readOnlyRootFilesystem", "runAsUser", "runAsGroup", "runAsNonRoot",
                     "allowPrivilegeEscalation", "seccompProfile"}
# pkg/apis/serving/k8s_validation.go: reservedPorts (pkg/networking/constants.go 8012, 8013, 8022, 9090,
# 9091 and knative.dev/pkg/profiling 8008), reservedPaths, reservedEnvVars, the allowed port names
RESERVED_PORTS = {8012, 8013, 8022, 9090, 9091, 8008}
RESERVED_PATHS = {"/", "/dev", "/dev/log"}
RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}
KNATIVE_VOLUME_SOURCES = {"secret", "configMap", "projected", "emptyDir"}


def knative_violations(pred: dict, features: set[str] = frozenset()) -> list[str]:
    v = []
    allowed = KNATIVE_POD_FIELDS | {f for f, flag in FLAG_FIELDS.items() if flag in features}
    for field in sorted(set(pred) - KSERVE_PREDICTOR_FIELDS):
        if field not in allowed:
            v.append(f"must not set the field(s): {field}")
    if pred.get("automountServiceAccountToken") is True:
        v.append("automountServiceAccountToken may only be false")
    containers = pred.get("containers") or []
    ports = [p for c in containers for p in c.get("ports") or []]
    if len(ports) > 1:
        v.append("more than one container port")
    for c in containers:
        for field in sorted(set(c) - KNATIVE_CONTAINER_FIELDS):
            v.append(f"{c['name']}: must not set {field}")
        sc = c.get("securityContext") or {}
        for field in sorted(set(sc) - KNATIVE_SC_FIELDS):
            v.append(f"{c['name']}: must not set securityContext.{field}")
        if (sc.get("capabilities") or {}).get("add") and "kubernetes.containerspec-addcapabilities" not in features:
            v.append(f"{c['name']}: must not set capabilities.add")
        for p in c.get("ports") or []:
            if p.get("name", "") not in ("", "h2c", "http1"):
                v.append(f"{c['name']}: port name {p['name']!r} must be h2c or http1")
            if p["containerPort"] in RESERVED_PORTS:
                v.append(f"{c['name']}: port {p['containerPort']} is reserved")
        for m in c.get("volumeMounts") or []:
            if m["mountPath"].rstrip("/") in RESERVED_PATHS or m["mountPath"] == "/":
                v.append(f"{c['name']}: mountPath {m['mountPath']} is reserved")
        for e in c.get("env") or []:
            if e["name"] in RESERVED_ENV:
                v.append(f"{c['name']}: env {e['name']} is reserved")
    for vol in pred.get("volumes") or []:
        kinds = set(vol) - {"name"}
        ok = KNATIVE_VOLUME_SOURCES | ({"persistentVolumeClaim"}
                                      if "kubernetes.podspec-persistent-volume-claim" in features else set())
        if kinds - ok:
            v.append(f"volume {vol['name']}: {sorted(kinds - ok)} not allowed")
    return v


def knative_cases():
    return [c for c in kserve_cases() if intended_mode(c) == "Knative"]


@pytest.mark.parametrize("version", KSERVE_VERSIONS)
@pytest.mark.parametrize("case", knative_cases())
def test_knative_webhook_accepts_the_pod_spec(case, version):
    pred = isvc_of(objects(case, version))["spec"]["predictor"]
    assert knative_violations(pred) == []
    # with the pod-level fields gone the pod still runs as the chart promises: the settings sit on the container
    c = pred["containers"][0]["securityContext"]
    assert c["runAsNonRoot"] is True and c["runAsUser"] == 10001 and c["runAsGroup"] == 10001
    assert c["seccompProfile"] == {"type": "RuntimeDefault"}


def test_knative_rule_catches_the_pod_fields():
    """The mask check is not vacuous: the Standard-mode pod spec (pod securityContext, grace period)
    would be refused by Knative."""
    pred = isvc_of(objects("default", "0.16"))["spec"]["predictor"]
    found = knative_violations(pred)
    assert "must not set the field(s): securityContext" in found
    assert "must not set the field(s): terminationGracePeriodSeconds" in found


def test_knative_pod_security_context_with_its_flag():
    flag = "kubernetes.podspec-securitycontext"
    pred = isvc_of(objects("knative", "0.16", "--set-json", f'knative.enabledFeatures=["{flag}"]'))["spec"]["predictor"]
    assert pred["securityContext"]["fsGroup"] == 10001
    assert knative_violations(pred, {flag}) == []


# --------------------------------------------------------------------------------------------
# 5. NetworkPolicy, evaluated as Kubernetes does


def _selector_matches(sel: dict | None, labels: dict) -> bool:
    sel = sel or {}
    for k, val in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != val:
            return False
    for expr in sel.get("matchExpressions") or []:
        k, op, vals = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(k) not in vals:
            return False
        if op == "NotIn" and k in labels and labels[k] in vals:
            return False
        if op == "Exists" and k not in labels:
            return False
        if op == "DoesNotExist" and k in labels:
            return False
    return True


def np_admits(np: dict, src_ns: tuple[str, dict], src_pod_labels: dict, port: int) -> bool:
    """networking.k8s.io/v1 semantics: a peer with only podSelector means the policy's namespace; with
    namespaceSelector it is ANDed with podSelector; namespaces carry kubernetes.io/metadata.name.
    src_ns is (name, labels)."""
    src_ns, ns_labels = src_ns[0], {**src_ns[1], "kubernetes.io/metadata.name": src_ns[0]}
    for rule in np["spec"].get("ingress") or []:
        ports = rule.get("ports")
        if ports and not any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports):
            continue
        peers = rule.get("from")
        if not peers:
            return True
        for peer in peers:
            if "namespaceSelector" in peer:
                ns_ok = _selector_matches(peer["namespaceSelector"], ns_labels)
            else:
                ns_ok = src_ns == np["metadata"]["namespace"]
            pod_ok = _selector_matches(peer.get("podSelector"), src_pod_labels) if "podSelector" in peer else True
            if "ipBlock" in peer:
                continue
            if ns_ok and pod_ok:
                return True
    return False


def np_cases():
    return [c for c in CASES if values_of(c)["networkPolicy"]["enabled"]]


def _ns(selector: dict) -> tuple[str, dict]:
    """A namespace (name, labels) that the selector picks."""
    labels = dict(selector.get("matchLabels") or {})
    return labels.get("kubernetes.io/metadata.name", "selected-namespace"), labels


@pytest.mark.parametrize("case", np_cases())
def test_network_policy_admits_what_the_mode_needs(case):
    v = values_of(case)
    # the predictor's own policy (the forecast loop, when enabled, adds its own)
    (np,) = [o for o in of_kind(objects(case, "0.16"), "NetworkPolicy") if "forecast-loop" not in o["metadata"]["name"]]
    ns = np["metadata"]["namespace"]
    prom_ns = _ns(v["networkPolicy"]["metricsNamespaceSelector"])
    prom_labels = (v["networkPolicy"]["metricsPodSelector"] or {}).get("matchLabels", {})
    # Prometheus scrapes /metrics on the user container's 8080 (ServiceMonitor targetPort, PodMonitor port)
    assert np_admits(np, prom_ns, prom_labels, 8080)
    stranger = (("stranger-namespace", {}), {"app": "stranger"})
    knative = v["workload"] == "inferenceService" and v["deploymentMode"] == "Knative"
    if knative:
        system_ns = _ns(v["networkPolicy"]["knative"]["systemNamespaceSelector"])
        gateway_ns = _ns(v["networkPolicy"]["knative"]["ingressNamespaceSelector"])
        # knative/serving pkg/networking/constants.go (knative-v1.15.2, main): the queue-proxy takes
        # requests on BackendHTTPPort 8012 / BackendHTTP2Port 8013; pkg/reconciler/serverlessservice/
        # resources/services.go points the private Service (which the activator's endpoints come
        # from, pkg/activator/net/helpers.go) at them, and the ingress gateway targets the same pods.
        for port in (8012, 8013):
            assert np_admits(np, system_ns, {"app": "activator"}, port), f"activator -> {port}"
            assert np_admits(np, gateway_ns, {"app": "gateway"}, port), f"ingress gateway -> {port}"
        # pkg/autoscaler/metrics/stats_scraper.go scrapes AutoscalingQueueMetricsPort 9090
        assert np_admits(np, system_ns, {"app": "autoscaler"}, 9090), "autoscaler -> 9090"
        assert not np_admits(np, *stranger, 8012)
    else:
        client_ns = _ns(v["networkPolicy"]["clientNamespaceSelector"]) if v["networkPolicy"][
            "clientNamespaceSelector"] else (ns, {})
        for port in (8080, 8081):
            assert np_admits(np, client_ns, {"app": "client"}, port)
        assert not np_admits(np, *stranger, 8080)


# --------------------------------------------------------------------------------------------
# 6. the storage initializer KServe injects, under the restricted Pod Security Standard


def strategic_merge_container(base: dict, patch: dict) -> dict:
    """corev1.Container strategic merge as KServe's mergeContainerSpecs uses it
    (kserve/kserve pkg/webhook/admission/pod/storage_initializer_injector.go, v0.15.2 and v0.16.0):
    nested structs merge field by field, env/volumeMounts merge by their key, other lists replace."""
    keys = {"env": "name", "volumeMounts": "mountPath", "ports": "containerPort"}

    def merge(b, p, field=None):
        if isinstance(b, dict) and isinstance(p, dict):
            out = dict(b)
            for k, val in p.items():
                out[k] = merge(b.get(k), val, k) if k in b else copy.deepcopy(val)
            return out
        if isinstance(b, list) and isinstance(p, list) and field in keys:
            key = keys[field]
            out = [dict(x) for x in b]
            for item in p:
                for i, x in enumerate(out):
                    if x.get(key) == item.get(key):
                        out[i] = merge(x, item)
                        break
                else:
                    out.append(copy.deepcopy(item))
            return out
        return copy.deepcopy(p)

    return merge(base, patch)


def json_merge_patch(target, patch):
    """RFC 7386, what `kubectl patch --type merge` does."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, val in patch.items():
        if val is None:
            out.pop(k, None)
        else:
            out[k] = json_merge_patch(out.get(k), val)
    return out


def pod_with_storage_initializer(pod_spec: dict, storage_uri: str, csc_container: dict) -> dict:
    """The pod after KServe's injection: init container + the model emptyDir."""
    base = copy.deepcopy(STORAGE_FIXTURE["base_init_container"])
    base["args"] = [storage_uri, "/mnt/models"]
    init = strategic_merge_container(base, csc_container)
    pod = copy.deepcopy(pod_spec)
    pod.setdefault("initContainers", []).append(init)
    pod.setdefault("volumes", []).append({"name": "kserve-provision-location", "emptyDir": {}})
    return pod


def patched(install: str) -> dict:
    csc = {"spec": {"container": STORAGE_FIXTURE["installs"][install]}}
    return json_merge_patch(csc, yaml.safe_load(CSC_PATCH.read_text()))["spec"]["container"]


def storage_cases():
    return [c for c in kserve_cases() if values_of(c)["model"]["storageUri"]]


def _predictor_pod(objs, knative: bool) -> dict:
    spec = next(s for label, s in pod_specs(objs) if label.startswith("InferenceService/"))
    pod = {k: v for k, v in spec.items() if k not in KSERVE_PREDICTOR_FIELDS}
    if knative:
        # knative/serving pkg/reconciler/revision/resources/queue.go queueSecurityContext: Knative's own
        # sidecar is restricted-compliant; the pod spec is otherwise the one the chart renders
        pod["containers"] = pod["containers"] + [{
            "name": "queue-proxy", "securityContext": {
                "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}]
    return pod


def effective_home(pod: dict, container: dict) -> str:
    """HOME the runtime gives the container: an explicit env wins; else the passwd entry of its UID.
    The initializer image knows only UID 1000 (python/storage-initializer.Dockerfile); for any other
    UID the container runtime sets HOME=/ (root-owned, not writable)."""
    for e in container.get("env") or []:
        if e["name"] == "HOME":
            return e["value"]
    uid = (container.get("securityContext") or {}).get("runAsUser",
                                                       (pod.get("securityContext") or {}).get("runAsUser"))
    return STORAGE_FIXTURE["image"]["home"] if uid in (None, STORAGE_FIXTURE["image"]["user"]) else "/"


@pytest.mark.parametrize("install", sorted(STORAGE_FIXTURE["installs"]))
@pytest.mark.parametrize("case", storage_cases())
def test_storage_initializer_passes_restricted_with_the_patch(case, install):
    assert CSC_PATCH.exists(), "files/storage-initializer-restricted-patch.yaml is missing"
    v = values_of(case)
    for version in KSERVE_VERSIONS:
        pod = pod_with_storage_initializer(_predictor_pod(objects(case, version), v["deploymentMode"] == "Knative"),
                                           v["model"]["storageUri"], patched(install))
        assert restricted_violations(pod) == [], f"KServe {version}, {install} install"
        init = pod["initContainers"][0]
        home = effective_home(pod, init)
        assert any(home == w or home.startswith(w + "/") for w in STORAGE_FIXTURE["image"]["writable_for_any_uid"]), (
            f"storage initializer HOME {home!r} is not writable as its UID")


def test_storage_initializer_rule_catches_unpatched_installs():
    """Without the patch: KServe's kustomize `default` fails anywhere, its Helm `default` fails in
    Knative mode (no pod-level seccompProfile), and HOME is `/` for UID 10001."""
    std = _predictor_pod(objects("storage-uri", "0.16"), False)
    kn = _predictor_pod(objects("knative-storage-uri", "0.16"), True)
    uri = "s3://models/m"
    kustomize = pod_with_storage_initializer(std, uri, STORAGE_FIXTURE["installs"]["kustomize"])
    assert any("allowPrivilegeEscalation" in x for x in restricted_violations(kustomize))
    helm_kn = pod_with_storage_initializer(kn, uri, STORAGE_FIXTURE["installs"]["helm"])
    assert any("seccompProfile" in x for x in restricted_violations(helm_kn))
    helm_std = pod_with_storage_initializer(std, uri, STORAGE_FIXTURE["installs"]["helm"])
    assert restricted_violations(helm_std) == []
    assert effective_home(helm_std, helm_std["initContainers"][0]) == "/"


# --------------------------------------------------------------------------------------------
# 7. KEDA query and the monitors it depends on


def keda_cases():
    return [c for c in kserve_cases() if values_of(c)["autoscaling"]["enabled"]
            and values_of(c)["autoscaling"]["class"] == "keda"]


def monitor_covers_pods(objs, isvc, knative: bool) -> list[str]:
    """Names of the ServiceMonitor/PodMonitor objects that scrape the predictor's /metrics."""
    ns = isvc["metadata"]["namespace"]
    pod_labels = isvc["spec"]["predictor"]["labels"]
    c = isvc["spec"]["predictor"]["containers"][0]
    # Knative renames the container port in the pods it makes: knative/serving
    # pkg/reconciler/revision/resources/deploy.go buildContainerPorts, UserPortName "user-port"
    port_names = {"user-port"} if knative else {p["name"] for p in c.get("ports") or []}
    found = []
    for pm in of_kind(objs, "PodMonitor"):
        if ns not in pm["spec"]["namespaceSelector"].get("matchNames", []):
            continue
        if not _selector_matches(pm["spec"]["selector"], pod_labels):
            continue
        for ep in pm["spec"]["podMetricsEndpoints"]:
            if ep.get("path") == "/metrics" and ep.get("port") in port_names:
                found.append(pm["metadata"]["name"])
    # the labels KServe puts on the predictor's objects, its Service included: kserve/kserve
    # pkg/controller/v1beta1/inferenceservice/components/predictor.go with pkg/constants/constants.go
    # InferenceServicePodLabelKey and KServiceComponentLabel (v0.15.2, v0.16.0)
    service_labels = {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"], "component": "predictor"}
    for sm in of_kind(objs, "ServiceMonitor"):
        if ns in sm["spec"]["namespaceSelector"].get("matchNames", []) and \
                _selector_matches(sm["spec"]["selector"], service_labels) and \
                any(ep.get("targetPort") == 8080 for ep in sm["spec"]["endpoints"]):
            found.append(sm["metadata"]["name"])
    return found


@pytest.mark.parametrize("version", KSERVE_VERSIONS)
@pytest.mark.parametrize("case", keda_cases())
def test_keda_query_reads_series_that_are_scraped(case, version):
    for extra in ((), ("--set", "namespaceOverride=forecasts")):
        objs = objects(case, version, *extra)
        isvc = isvc_of(objs)
        query = isvc["spec"]["predictor"]["autoScaling"]["metrics"][0]["external"]["metric"]["query"]
        # prometheus-operator sets `namespace` on every scraped series to the target's namespace, which
        # is the InferenceService's (namespaceOverride included)
        assert re.search(r'namespace="([^"]+)"', query).group(1) == isvc["metadata"]["namespace"], query
        assert monitor_covers_pods(objs, isvc, False), "no ServiceMonitor/PodMonitor scrapes the series the query reads"


@pytest.mark.parametrize("case", [c for c in CASES if values_of(c)["monitoring"]["podMonitor"]["enabled"]
                                  or values_of(c)["monitoring"]["serviceMonitor"]["enabled"]])
def test_monitors_scrape_the_running_pods(case):
    """prometheus-operator pkg/apis/monitoring/v1/podmonitor_types.go: `portNumber` exists only from
    v0.79.0 (an older operator drops the unknown field and scrapes every port); `port` (a name) works
    on all, and it must name a port the running pod has."""
    objs = objects(case, "0.16")
    for pm in of_kind(objs, "PodMonitor"):
        for ep in pm["spec"]["podMetricsEndpoints"]:
            assert "portNumber" not in ep
    isvc = isvc_of(objs)
    if isvc is not None:
        assert monitor_covers_pods(objs, isvc, values_of(case)["deploymentMode"] == "Knative")


def test_knative_accepts_the_token_secret():
    """auth.enabled in Knative mode: a secret volume (allowed by Knative's mask) mounted outside its
    reserved paths; with no pod securityContext there is no fsGroup, so the files are world-readable
    (0444) for the container's non-root user."""
    pred = isvc_of(objects("knative", "0.16", "--set", "auth.enabled=true", "--set", "auth.existingSecret=tokens"))[
        "spec"]["predictor"]
    assert knative_violations(pred) == []
    (volume,) = [v for v in pred["volumes"] if v["name"] == "auth-tokens"]
    assert volume["secret"]["defaultMode"] == 0o444

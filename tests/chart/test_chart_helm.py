"""helm lint --strict and helm template, with Helm 3 and Helm 4, for the default
values and every ci/*-values.yaml; and the kinds each of them renders."""

from __future__ import annotations

from collections import Counter

import pytest

from chartlib import CASES, CHART, NAMESPACE, RELEASE, case_args, render_case, run_helm

# What each values file must render (kind -> count). A new ci file needs an entry here.
EXPECTED_KINDS = {
    "default": {"InferenceService": 1, "PodDisruptionBudget": 1, "Pod": 1},
    "auth": {"InferenceService": 1, "PodDisruptionBudget": 1, "Pod": 1, "Secret": 1, "Deployment": 1, "Service": 1,
             "ConfigMap": 1},
    "deployment": {"Deployment": 1, "Service": 1, "HorizontalPodAutoscaler": 1, "PodDisruptionBudget": 1, "Pod": 1},
    "deployment-fixed": {"Deployment": 1, "Service": 1, "PodDisruptionBudget": 1, "Pod": 1},
    "deployment-service-monitor": {"Deployment": 1, "Service": 1, "HorizontalPodAutoscaler": 1,
                                   "PodDisruptionBudget": 1, "ServiceMonitor": 1, "Pod": 1},
    "everything": {"Deployment": 1, "Service": 1, "HorizontalPodAutoscaler": 1, "PodDisruptionBudget": 1,
                   "ServiceAccount": 1, "NetworkPolicy": 1, "PodMonitor": 1, "PrometheusRule": 1,
                   "ConfigMap": 1, "Pod": 1},
    "forecast-loop": {"InferenceService": 1, "PodDisruptionBudget": 1, "Pod": 1, "Deployment": 1, "Service": 1,
                      "ConfigMap": 3, "NetworkPolicy": 3, "ServiceMonitor": 1, "PrometheusRule": 1},
    "forecast-loop-scaling-external": {"InferenceService": 1, "PodDisruptionBudget": 1, "Pod": 1, "Deployment": 1,
                                       "Service": 1, "ConfigMap": 1, "NetworkPolicy": 3, "ScaledObject": 1},
    "forecast-loop-scaling-prometheus": {"InferenceService": 1, "PodDisruptionBudget": 1, "Pod": 1, "Deployment": 1,
                                         "Service": 1, "ConfigMap": 1, "ScaledObject": 1},
    "grafana-dashboard": {"InferenceService": 1, "PodDisruptionBudget": 1, "ConfigMap": 1, "Pod": 1},
    "hpa-memory": {"InferenceService": 1, "PodDisruptionBudget": 1, "Pod": 1},
    "fixed-replicas": {"InferenceService": 1, "PodDisruptionBudget": 1, "Pod": 1},
    "keda": {"InferenceService": 1, "PodDisruptionBudget": 1, "PodMonitor": 1, "Pod": 1},
    "knative": {"InferenceService": 1, "PodDisruptionBudget": 1, "PodMonitor": 1, "Pod": 1},
    "knative-concurrency": {"InferenceService": 1, "PodDisruptionBudget": 1, "Pod": 1},
    "knative-network-policy": {"InferenceService": 1, "PodDisruptionBudget": 1, "NetworkPolicy": 1,
                               "PodMonitor": 1, "Pod": 1},
    "knative-storage-uri": {"InferenceService": 1, "PodDisruptionBudget": 1, "Pod": 1},
    "network-policy": {"InferenceService": 1, "PodDisruptionBudget": 1, "NetworkPolicy": 1, "Pod": 1},
    "no-autoscaling": {"InferenceService": 1, "Pod": 1},
    "pod-monitor": {"InferenceService": 1, "PodDisruptionBudget": 1, "PodMonitor": 1, "Pod": 1},
    "prometheus-rule": {"InferenceService": 1, "PodDisruptionBudget": 1, "PrometheusRule": 1, "Pod": 1},
    "service-account": {"InferenceService": 1, "PodDisruptionBudget": 1, "ServiceAccount": 1, "Pod": 1},
    "service-monitor": {"InferenceService": 1, "PodDisruptionBudget": 1, "ServiceMonitor": 1, "Pod": 1},
    "storage-uri": {"InferenceService": 1, "PodDisruptionBudget": 1, "Pod": 1},
}


@pytest.mark.parametrize("case", CASES)
def test_lint_strict(helm, case):
    proc = run_helm(helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, *case_args(case))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("case", CASES)
def test_template_renders(helm, case):
    objs = render_case(helm, case)
    assert objs, "nothing rendered"
    for o in objs:
        assert o.get("apiVersion") and o.get("kind"), o
        assert o["metadata"]["name"]
        # every object carries the chart's standard labels (defined once in _helpers.tpl)
        labels = o["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/instance") == RELEASE, o["metadata"]
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", o["metadata"]


@pytest.mark.parametrize("case", CASES)
def test_expected_kinds(case):
    assert case in EXPECTED_KINDS, f"add the kinds ci/{case}-values.yaml renders to EXPECTED_KINDS"
    kinds = Counter(o["kind"] for o in render_case("helm3", case))
    assert dict(kinds) == EXPECTED_KINDS[case]


@pytest.mark.parametrize("case", CASES)
def test_helm3_and_helm4_agree(case):
    assert render_case("helm3", case) == render_case("helm4", case)


def test_every_ci_file_is_exercised():
    assert set(EXPECTED_KINDS) == set(CASES), "EXPECTED_KINDS and ci/*-values.yaml are out of step"


def test_chart_metadata(helm):
    proc = run_helm(helm, "show", "chart", str(CHART), check=True)
    import yaml

    meta = yaml.safe_load(proc.stdout)
    assert meta["apiVersion"] == "v2"
    assert meta["kubeVersion"].startswith(">=1.29")


def test_kube_version_enforced(helm):
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--kube-version", "1.27.0")
    assert proc.returncode != 0
    assert "kubeVersion" in proc.stderr or "incompatible" in proc.stderr.lower(), proc.stderr


@pytest.mark.parametrize("case", CASES)
def test_notes_render(case, tmp_path):
    """NOTES.txt renders for every values file (Helm 4's client-side dry run needs no cluster;
    Helm 3's still wants a kubeconfig, so only Helm 4 runs this)."""
    proc = run_helm("helm4", "install", RELEASE, str(CHART), "--namespace", NAMESPACE,
                    "--dry-run=client", *case_args(case), extra_env={"KUBECONFIG": str(tmp_path / "none")})
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert f"helm test {RELEASE}" in notes
    assert "/v2/models/perf-predictor/ready" in notes

"""manifests/: the committed rendered YAML is exactly what `make render-manifests`
(manifests/render.sh) produces from the chart now, and the kind/e2e scripts are
well-formed and honestly labelled as not run in this project's CI."""

from __future__ import annotations

import os
import re
import subprocess

import yaml

from chartlib import REPO, helm_path, render, run_helm

RENDERED = REPO / "manifests" / "rendered" / "perf-predictor.yaml"


def test_rendered_manifests_are_in_sync(tmp_path):
    out = tmp_path / "perf-predictor.yaml"
    env = dict(os.environ, HELM=str(helm_path("helm3")), OUT=str(out))
    proc = subprocess.run(["bash", str(REPO / "manifests" / "render.sh")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert RENDERED.exists(), "manifests/rendered/perf-predictor.yaml is missing: run `make render-manifests`"
    assert out.read_text() == RENDERED.read_text(), (
        "manifests/rendered/perf-predictor.yaml is stale: run `make render-manifests` and commit it")


def test_rendered_manifests_match_helm4_too():
    committed = [d for d in yaml.safe_load_all(RENDERED.read_text()) if d]
    proc = run_helm("helm4", "template", "perf-predictor", str(REPO / "charts" / "perf-predictor"),
                    "--namespace", "perf-predictor", "--no-hooks", check=True)
    assert committed == [d for d in yaml.safe_load_all(proc.stdout) if d]
    kinds = sorted(d["kind"] for d in committed)
    assert kinds == ["InferenceService", "PodDisruptionBudget"]  # no helm test pod for kubectl users
    assert committed == render("helm3", "--no-hooks")


def test_scripts_parse_and_say_they_are_not_run_in_ci():
    for name in ("render.sh", "kind-up.sh", "install-prereqs.sh", "e2e-kind.sh"):
        path = REPO / "manifests" / name
        subprocess.run(["bash", "-n", str(path)], check=True)
        if name != "render.sh":
            assert "NOT run in this project" in path.read_text(), name
    workflow = REPO / ".github" / "workflows" / "e2e-kind.yml"
    text = workflow.read_text()
    assert "NOT run in this project" in text
    doc = yaml.safe_load(text)
    triggers = doc.get("on", doc.get(True))  # PyYAML reads the bare key `on` as True
    assert set(triggers) == {"workflow_dispatch"}, "the e2e workflow must only run on demand"


def test_kind_config_is_a_kind_cluster():
    cfg = yaml.safe_load((REPO / "manifests" / "kind-config.yaml").read_text())
    assert cfg["kind"] == "Cluster" and cfg["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert any(n["role"] == "control-plane" for n in cfg["nodes"])


def test_prereqs_are_pinned():
    """Pins of releases that exist (checked against the projects' tags when they were set:
    kserve/kserve v0.16.0 and v0.15.2 (v0.16.1 does not exist), cert-manager v1.17.2, kedacore/charts
    v2.14.2, prometheus-community/helm-charts kube-prometheus-stack-72.9.1, knative/serving
    knative-v1.15.2, knative-extensions/net-kourier knative-v1.15.1)."""
    text = (REPO / "manifests" / "install-prereqs.sh").read_text()
    for needle in ('CERT_MANAGER_VERSION="${CERT_MANAGER_VERSION:-v1.17.2}"',
                   'KSERVE_VERSION="${KSERVE_VERSION:-v0.16.0}"',
                   'KEDA_CHART_VERSION="${KEDA_CHART_VERSION:-2.14.2}"',
                   'KUBE_PROMETHEUS_STACK_VERSION="${KUBE_PROMETHEUS_STACK_VERSION:-72.9.1}"',
                   'KNATIVE_SERVING_VERSION="${KNATIVE_SERVING_VERSION:-knative-v1.15.2}"',
                   'KOURIER_VERSION="${KOURIER_VERSION:-knative-v1.15.1}"',
                   "oci://ghcr.io/kserve/charts/kserve-crd", "oci://ghcr.io/kserve/charts/kserve "):
        assert needle in text, needle


def test_e2e_matrix_runs_every_mode():
    """The workflow's matrix runs each MODE e2e-kind.sh knows, KServe Standard mode on both supported
    KServe versions, and every ci values file the script uses exists."""
    script = (REPO / "manifests" / "e2e-kind.sh").read_text()
    modes = set(re.findall(r"^  ([a-z-]+)\)$", script, re.M))
    assert modes == {"standard-hpa", "standard-keda", "knative", "deployment", "storage-uri-restricted"}
    doc = yaml.safe_load((REPO / ".github" / "workflows" / "e2e-kind.yml").read_text())
    matrix = doc["jobs"]["e2e"]["strategy"]["matrix"]["include"]
    assert {m["mode"] for m in matrix} == modes
    assert {m["kserve"] for m in matrix if m["mode"] == "standard-hpa"} == {"v0.16.0", "v0.15.2"}
    for name in re.findall(r'\$CI/([a-z-]+-values\.yaml)', script):
        assert (REPO / "charts" / "perf-predictor" / "ci" / name).exists(), name

"""skaffold.yaml: valid against Skaffold's v4beta13 JSON schema (from ../shared), and the things a schema
cannot check: the chart path exists, the image values are templated from the built artifact, the
deployment/kserve/dev profiles exist and patch paths that exist, ports 8080/8081 are forwarded, and the
file sync of predictor/**/*.py goes where the Dockerfile's dev target serves from."""
from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SKAFFOLD = REPO / "skaffold.yaml"


def shared_dir() -> Path:
    return Path(os.environ.get("PERF_PREDICTOR_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(SKAFFOLD.read_text())


@pytest.fixture(scope="module")
def profiles(config) -> dict:
    return {p["name"]: p for p in config.get("profiles", [])}


def test_validates_against_the_v4beta13_schema(config):
    jsonschema = pytest.importorskip("jsonschema")
    schema_path = shared_dir() / "schemas" / "skaffold-v4beta13.json"
    if not schema_path.exists():
        pytest.skip(f"{schema_path} absent (set PERF_PREDICTOR_SHARED to the shared/ folder)")
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = list(validator.iter_errors(config))
    if errors:  # anyOf everywhere: report the deepest leaf failures, where a typo actually is
        def leaves(error):
            return [leaf for sub in error.context for leaf in leaves(sub)] if error.context else [error]
        found = sorted({(len(e.absolute_path), "/".join(map(str, e.absolute_path)), e.message[:200])
                        for err in errors for e in leaves(err)}, reverse=True)
        pytest.fail("skaffold.yaml does not validate:\n" + "\n".join(f"  /{p}: {m}" for _, p, m in found[:5]))
    # The schema rejects unknown keys everywhere (additionalProperties: false), so a typo fails above.
    assert schema["definitions"]["SkaffoldConfig"]["additionalProperties"] is False


def test_api_version_and_single_local_docker_artifact(config):
    assert config["apiVersion"] == "skaffold/v4beta13" and config["kind"] == "Config"
    build = config["build"]
    assert build["local"]["push"] is False
    (artifact,) = build["artifacts"]
    assert artifact["image"] == "perf-predictor"
    assert (REPO / artifact.get("context", ".") / artifact["docker"].get("dockerfile", "Dockerfile")).is_file()
    stages = re.findall(r"^FROM \S+ AS (\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert artifact["docker"]["target"] in stages


def test_helm_release_uses_the_chart_and_templated_image(config):
    (release,) = config["deploy"]["helm"]["releases"]
    chart = REPO / release["chartPath"]
    assert (chart / "Chart.yaml").is_file(), f"chart {chart} missing"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    templates = release["setValueTemplates"]
    # Skaffold's names for the artifact `perf-predictor` ('-' and '/' become '_' in template keys).
    assert templates["image.repository"] == "{{.IMAGE_REPO_perf_predictor}}"
    assert templates["image.tag"] == "{{.IMAGE_TAG_perf_predictor}}"
    assert {"repository", "tag"} <= set(values["image"])
    # Every value the release sets is a key the chart has (its values.schema.json rejects unknown keys).
    for key in [*templates, *release.get("setValues", {})]:
        node = values
        for part in key.split("."):
            assert isinstance(node, dict) and part in node, f"{key} is not a value of the chart"
            node = node[part]
    assert release["setValues"]["workload"] == "deployment", "a bare kind cluster has no KServe"


def apply_patches(config: dict, patches: list[dict]) -> dict:
    """The JSON-patch subset used here (add/replace), failing on a path that does not exist."""
    doc = copy.deepcopy(config)
    for patch in patches:
        *parents, last = [p for p in patch["path"].split("/") if p]
        node = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            index = int(last)
            assert patch["op"] == "replace" and index < len(node), patch
            node[index] = patch["value"]
        else:
            assert patch["op"] in ("add", "replace"), patch
            if patch["op"] == "replace":
                assert last in node, f"{patch['path']} does not exist"
            node[last] = patch["value"]
    return doc


def effective(config: dict, profile: dict) -> dict:
    return apply_patches(config, profile.get("patches", []))


def test_profiles_for_both_workloads_and_the_dev_image(config, profiles):
    assert {"deployment", "kserve", "dev"} <= set(profiles)
    deployment = effective(config, profiles["deployment"])
    assert deployment["deploy"]["helm"]["releases"][0]["setValues"]["workload"] == "deployment"
    kserve = effective(config, profiles["kserve"])
    assert kserve["deploy"]["helm"]["releases"][0]["setValues"]["workload"] == "inferenceService"
    chart_values = yaml.safe_load((REPO / config["deploy"]["helm"]["releases"][0]["chartPath"]
                                   / "values.yaml").read_text())
    assert {"deployment", "inferenceService"} >= {deployment["deploy"]["helm"]["releases"][0]["setValues"]
                                                  ["workload"], chart_values["workload"]}
    # KServe (Standard mode) names the predictor Deployment <name>-predictor; port-forward follows it.
    assert {f["resourceName"] for f in kserve["portForward"]} == {"perf-predictor-predictor"}
    dev = profiles["dev"]
    assert {"command": "dev"} in dev["activation"], "`skaffold dev` switches to the dev image by itself"
    assert effective(config, dev)["build"]["artifacts"][0]["docker"]["target"] == "dev"


def test_port_forward_8080_and_8081(config):
    forwards = config["portForward"]
    assert sorted(int(f["port"]) for f in forwards) == [8080, 8081]
    assert {f["resourceName"] for f in forwards} == {config["deploy"]["helm"]["releases"][0]["name"]}
    assert all(f["resourceType"] == "deployment" for f in forwards)


def test_sync_targets_predictor_python_files_in_the_dev_image(config):
    (artifact,) = config["build"]["artifacts"]
    rules = artifact["sync"]["manual"]
    assert [r["src"] for r in rules] == ["predictor/**/*.py"]
    (rule,) = rules
    files = [p.relative_to(REPO).as_posix() for p in (REPO / "predictor").rglob("*.py")]
    assert files and all(fnmatch.fnmatch(f, rule["src"].replace("**/", "*")) for f in files)
    # The dev target copies predictor/ to <dest>/predictor and serves from <dest>: the synced
    # predictor/x.py (no strip) lands at <dest>/predictor/x.py, the file the server imports.
    assert "strip" not in rule
    dockerfile = (REPO / "Dockerfile").read_text()
    dev_stage = dockerfile.split("AS dev", 1)[1].split("\nFROM ", 1)[0]
    dest = rule["dest"].rstrip("/")
    assert dest.startswith("/tmp/"), "only /tmp is writable under the chart's read-only root filesystem"
    assert f"cd {dest}" in dev_stage and "watchfiles" in dev_stage and f"{dest}/predictor" in dev_stage


def helm_binary() -> str | None:
    """A Helm 3+ binary: PERF_PREDICTOR_HELM3, the one the chart tests cache, or helm on PATH."""
    tools = Path(os.environ.get("PERF_PREDICTOR_TOOLS", REPO / ".cache" / "tools"))
    for candidate in (os.environ.get("PERF_PREDICTOR_HELM3"), tools / "helm3" / "helm", tools / "helm4" / "helm",
                      shutil.which("helm")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def render(config: dict, profile: str | None, profiles: dict) -> list[dict]:
    """`helm template` with the values Skaffold would pass for `profile` (image as Skaffold would set it)."""
    helm = helm_binary()
    if helm is None:
        pytest.skip("no helm binary (the chart tests cache one under .cache/tools; or set PERF_PREDICTOR_HELM3)")
    doc = effective(config, profiles[profile]) if profile else config
    (release,) = doc["deploy"]["helm"]["releases"]
    fake = {"{{.IMAGE_REPO_perf_predictor}}": "perf-predictor", "{{.IMAGE_TAG_perf_predictor}}": "0123abc"}
    sets = [f"{k}={fake.get(v, v)}" for k, v in release["setValueTemplates"].items()]
    sets += [f"{k}={v}" for k, v in release["setValues"].items()]
    args = [helm, "template", release["name"], str(REPO / release["chartPath"]),
            "--namespace", release["namespace"]]
    for s in sets:
        args += ["--set", s]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def predictor_container(pod_spec: dict) -> dict:
    (container,) = [c for c in pod_spec["containers"] if c["name"] == "kserve-container"]
    return container


@pytest.mark.parametrize("profile", [None, "deployment"])
def test_chart_renders_what_port_forward_and_sync_expect_deployment(config, profiles, profile):
    docs = render(config, profile, profiles)
    doc = effective(config, profiles[profile]) if profile else config
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert {f["resourceName"] for f in doc["portForward"]} <= set(deployments)
    pod = deployments[doc["portForward"][0]["resourceName"]]["spec"]["template"]["spec"]
    container = predictor_container(pod)
    assert container["image"] == "perf-predictor:0123abc"
    assert {p["containerPort"] for p in container["ports"]} >= {8080, 8081}
    assert "command" not in container, "the chart must keep the image's ENTRYPOINT (the dev target swaps it)"
    assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, "sync lands in a writable /tmp"
    assert not any(d["kind"] == "InferenceService" for d in docs)


def test_chart_renders_an_inferenceservice_for_the_kserve_profile(config, profiles):
    docs = render(config, "kserve", profiles)
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    assert not any(d["kind"] == "Deployment" for d in docs)
    # KServe names the predictor Deployment <isvc>-predictor: that is what port-forward targets.
    doc = effective(config, profiles["kserve"])
    assert {f["resourceName"] for f in doc["portForward"]} == {f"{isvc['metadata']['name']}-predictor"}
    container = predictor_container(isvc["spec"]["predictor"])
    assert container["image"] == "perf-predictor:0123abc"
    assert "command" not in container

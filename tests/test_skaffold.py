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
    assert f"cd {dest}" in dev_stage and f"watchfiles" in dev_stage and f"{dest}/predictor" in dev_stage

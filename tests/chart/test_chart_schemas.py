"""Every rendered object validated against real schemas:
core objects with kubernetes-validate (strict) for Kubernetes 1.29 and the newest
version the package ships; custom resources with jsonschema against their CRD's
openAPIV3Schema from ../shared/crds (made strict: unknown fields are errors)."""

from __future__ import annotations

import copy
import re

import jsonschema
import kubernetes_validate
import pytest

from chartlib import CASES, load_yaml, render_case

K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
CRD_FILES = {
    "serving.kserve.io": ["serving.kserve.io_inferenceservices.yaml"],
    "monitoring.coreos.com": ["monitoring.coreos.com_servicemonitors.yaml",
                              "monitoring.coreos.com_podmonitors.yaml",
                              "monitoring.coreos.com_prometheusrules.yaml"],
    "keda.sh": ["keda.sh_scaledobjects.yaml"],
}
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def is_custom(obj) -> bool:
    group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
    return group in CRD_FILES


def test_newest_version_is_newer_than_1_29():
    assert tuple(int(x) for x in K8S_VERSIONS[1].split(".")[:2]) > (1, 29)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("case", CASES)
def test_core_objects_validate_strictly(case, version):
    checked = 0
    for obj in render_case("helm3", case):
        if is_custom(obj):
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: "
                        f"{exc.message} at {'/'.join(str(p) for p in exc.path)}")
        checked += 1
    assert checked, "no core object rendered"


def strictify(schema):
    """Copy of a CRD structural schema where objects reject unknown fields,
    as the API server does with `kubectl apply --validate=strict`."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if ("properties" in node and "additionalProperties" not in node
                    and not node.get("x-kubernetes-preserve-unknown-fields")):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


@pytest.fixture(scope="module")
def crd_schemas(shared_dir):
    schemas = {}
    for files in CRD_FILES.values():
        for name in files:
            crd = load_yaml(shared_dir / "crds" / name)
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for ver in crd["spec"]["versions"]:
                if ver.get("served", True):
                    schemas[(f"{group}/{ver['name']}", kind)] = strictify(ver["schema"]["openAPIV3Schema"])
    return schemas


def crd_errors(obj, crd_schemas):
    key = (obj["apiVersion"], obj["kind"])
    assert key in crd_schemas, f"no CRD schema for {key}"
    schema = copy.deepcopy(crd_schemas[key])
    # metadata is not described by the CRD; check it as ObjectMeta basics
    schema["properties"].pop("metadata", None)
    body = {k: v for k, v in obj.items() if k != "metadata"}
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(str(p) for p in e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
    meta = obj["metadata"]
    if not DNS1123_SUBDOMAIN.match(meta["name"]) or len(meta["name"]) > 253:
        errors.append(f"metadata.name {meta['name']!r} is not a DNS-1123 subdomain")
    for field in ("labels", "annotations"):
        for k, v in (meta.get(field) or {}).items():
            if not isinstance(v, str):
                errors.append(f"metadata.{field}.{k} is not a string")
    return errors


@pytest.mark.parametrize("case", CASES)
def test_custom_resources_match_crds(case, crd_schemas):
    for obj in render_case("helm3", case):
        if not is_custom(obj):
            continue
        errors = crd_errors(obj, crd_schemas)
        assert not errors, f"{obj['kind']}/{obj['metadata']['name']}: " + "; ".join(errors[:10])
        if obj["kind"] == "InferenceService":
            # KServe requires a DNS-1035 label for the InferenceService name
            assert DNS1035_LABEL.match(obj["metadata"]["name"])


def test_crd_check_catches_a_bad_field(crd_schemas):
    """The CRD validation is able to fail: an unknown field and a wrong enum are reported."""
    isvc = next(o for o in render_case("helm3", "default") if o["kind"] == "InferenceService")
    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"]["scaleMetric"] = "gpu"
    bad["spec"]["predictor"]["replicas"] = 3
    errors = crd_errors(bad, crd_schemas)
    assert any("scaleMetric" in e for e in errors), errors
    assert any("replicas" in e for e in errors), errors


def test_core_check_catches_a_bad_field():
    dep = next(o for o in render_case("helm3", "deployment") if o["kind"] == "Deployment")
    dep = copy.deepcopy(dep)
    dep["spec"]["template"]["spec"]["containers"][0]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, K8S_VERSIONS[0], strict=True)

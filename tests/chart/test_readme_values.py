"""The README's Helm values blocks render, and what they render passes the real schemas.

A fenced ```yaml block in README.md whose first line is `# values-<name>.yaml` is a values file a user
is told to pass with `-f`; each one is rendered with helm and every object checked: core objects with
kubernetes-validate (strict), custom resources against their CRDs from ../shared (strict). The
autoscaling block must render a KEDA ScaledObject (issue: the README's steps render one that passes the
CRD schema)."""
from __future__ import annotations

import re

import kubernetes_validate
import pytest

from chartlib import REPO, render
from test_chart_schemas import K8S_VERSIONS, crd_errors, crd_schemas, is_custom  # noqa: F401 (fixture)

BLOCK = re.compile(r"^```yaml\n(# (values-[\w-]+\.yaml)[^\n]*\n.*?)^```", re.S | re.M)


def readme_values() -> dict[str, str]:
    return {name: text for text, name in BLOCK.findall((REPO / "README.md").read_text())}


def test_the_readme_has_its_values_blocks():
    assert {"values-autoscaling.yaml"} <= set(readme_values())


@pytest.mark.parametrize("name", sorted(readme_values()))
def test_a_readme_values_block_renders_valid_objects(name, tmp_path, crd_schemas):  # noqa: F811
    values = tmp_path / name
    values.write_text(readme_values()[name])
    objs = render("helm3", "-f", str(values))
    for obj in objs:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if is_custom(obj):
            errors = crd_errors(obj, crd_schemas)
            assert not errors, f"{where}: " + "; ".join(errors[:10])
        else:
            try:
                kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where}: {exc.message}")
    if name == "values-autoscaling.yaml":
        kinds = {o["kind"] for o in objs}
        assert "ScaledObject" in kinds, kinds

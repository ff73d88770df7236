"""The real image, built by scripts/build-image.sh and run hardened (read-only root, /tmp tmpfs, UID 10001,
no capabilities, no-new-privileges): it becomes ready, answers v2 REST and gRPC inference through
tritonclient, runs as non-root, and exits 0 within 10 s of SIGTERM. Skipped without a Docker engine."""
from __future__ import annotations

import io
import json
import re
import subprocess
import tarfile
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from .conftest import MODEL_NAME, READY_TIMEOUT, UID, docker, start_container

OUTPUTS = ("p10", "p50", "p90")
STOP_LIMIT = 10.0


def histories(batch: int, window: int) -> np.ndarray:
    t = np.arange(window, dtype=np.float32)
    rows = [50 + 10 * np.sin(2 * np.pi * (t + 7 * i) / 288) + i for i in range(batch)]
    return np.stack(rows).astype(np.float32)


def check_forecast(outputs: dict[str, np.ndarray], batch: int, horizon: int) -> None:
    assert set(outputs) == set(OUTPUTS)
    for name in OUTPUTS:
        assert outputs[name].shape == (batch, horizon), name
        assert outputs[name].dtype == np.float32, name
        assert np.isfinite(outputs[name]).all(), name


def test_metadata_declares_the_contract(metadata, window, horizon):
    assert metadata["name"] == MODEL_NAME
    assert [(t["name"], t["datatype"]) for t in metadata["inputs"]] == [("history", "FP32")]
    assert metadata["inputs"][0]["shape"] == [-1, window] and window > 0
    assert sorted(t["name"] for t in metadata["outputs"]) == sorted(OUTPUTS)
    for t in metadata["outputs"]:
        assert t["datatype"] == "FP32" and t["shape"] == [-1, horizon]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_rest_v2_inference(container, window, horizon, binary):
    client = httpclient.InferenceServerClient(container.http_host, network_timeout=60)
    assert client.is_server_live() and client.is_model_ready(MODEL_NAME)
    inp = httpclient.InferInput("history", [1, window], "FP32")
    inp.set_data_from_numpy(histories(1, window), binary_data=binary)
    outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in OUTPUTS]
    result = client.infer(MODEL_NAME, [inp], outputs=outs)
    check_forecast({n: result.as_numpy(n) for n in OUTPUTS}, 1, horizon)


def test_grpc_v2_inference(container, window, horizon):
    client = grpcclient.InferenceServerClient(container.grpc_host)
    assert client.is_server_ready() and client.is_model_ready(MODEL_NAME)
    inp = grpcclient.InferInput("history", [1, window], "FP32")
    inp.set_data_from_numpy(histories(1, window))
    result = client.infer(MODEL_NAME, [inp], client_timeout=60)
    check_forecast({n: result.as_numpy(n) for n in OUTPUTS}, 1, horizon)
    batch = histories(3, window)
    inp = grpcclient.InferInput("history", list(batch.shape), "FP32")
    inp.set_data_from_numpy(batch)
    check_forecast({n: r for n, r in ((n, client.infer(MODEL_NAME, [inp]).as_numpy(n)) for n in OUTPUTS)},
                   3, horizon)
    assert "(libnghttp2)" in container.logs(), "the image has libnghttp2: gRPC served in process, not by the grpcio fallback"


def test_runs_as_non_root_on_a_read_only_root(container, image):
    # The image's own default user (what a cluster without runAsUser gets) is the numeric 10001 too.
    assert docker("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip() == f"{UID}:{UID}"
    status = docker("exec", container.name, "cat", "/proc/1/status").stdout
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    gids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Gid:"))
    assert uids == [str(UID)] * 4 and gids == [str(UID)] * 4
    cap_eff = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
    assert int(cap_eff, 16) == 0
    assert docker("exec", container.name, "id", "-u").stdout.strip() == str(UID)
    cmdline = docker("exec", container.name, "cat", "/proc/1/cmdline").stdout.split("\0")
    assert cmdline[1:3] == ["-m", "predictor"], cmdline  # exec-form ENTRYPOINT: python is PID 1
    # Nothing outside /tmp is writable, and the server still answers (it wrote nothing elsewhere).
    denied = docker("exec", container.name, "touch", "/opt/venv/probe", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert docker("exec", container.name, "touch", "/tmp/probe", check=False).returncode == 0
    assert container.ready()


def cache_files(container, path: str) -> str:
    return docker("exec", container.name, "sh", "-c", f"cd {path} && find . -type f | sort | xargs sha256sum").stdout


def test_two_workers_start_from_the_compiled_cache(image, metrics, window, horizon):
    """--workers 2: ready, both workers up, and the numba cache compiled at build (the read-only seed,
    copied to /tmp at start) served start-up as it is: nothing had to be compiled and added."""
    container = start_container(image, args=("--workers", "2"))
    try:
        metrics["start_to_ready_seconds_2_workers"] = round(container.ready_seconds, 2)
        deadline = time.monotonic() + READY_TIMEOUT
        while container.logs().count("Application startup complete") < 2:
            assert time.monotonic() < deadline, container.logs()[-4000:]
            time.sleep(0.1)
        metrics["start_to_all_workers_seconds_2_workers"] = round(time.monotonic() - container.started, 2)
        seed = cache_files(container, "/opt/jit-cache")
        assert seed.count(".nbc") >= 2, seed
        assert cache_files(container, "/tmp/jit-cache") == seed
        client = httpclient.InferenceServerClient(container.http_host)
        tensor = httpclient.InferInput("history", [2, window], "FP32")
        tensor.set_data_from_numpy(histories(2, window))
        result = client.infer(MODEL_NAME, [tensor])
        check_forecast({name: result.as_numpy(name) for name in OUTPUTS}, 2, horizon)
    finally:
        container.remove()


def test_sigterm_exits_zero_within_10s(container, metrics):
    """Last in this module: it stops the shared container."""
    assert container.state()["Running"]
    t0 = time.monotonic()
    docker("kill", "--signal", "TERM", container.name)
    try:
        code = docker("wait", container.name, timeout=STOP_LIMIT).stdout.strip()
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {STOP_LIMIT:.0f}s after SIGTERM:\n{container.logs()[-3000:]}", pytrace=False)
    seconds = time.monotonic() - t0
    metrics["sigterm_to_exit_seconds"] = round(seconds, 2)
    state = container.state()
    assert code == "0" and state["ExitCode"] == 0, container.logs()[-3000:]
    assert not state["OOMKilled"]
    assert seconds < STOP_LIMIT


def test_dev_target_reloads_a_synced_file(dev_image, metrics):
    """What `skaffold dev` does: sync predictor/**/*.py into /tmp/dev with `tar x` through exec (as the
    container user, root filesystem read-only); watchfiles restarts the server on the new code."""
    container = start_container(dev_image)
    try:
        metrics["dev_start_to_ready_seconds"] = round(container.ready_seconds, 2)
        original = docker("exec", container.name, "cat", "/tmp/dev/predictor/__init__.py").stdout
        marker = f"perf-predictor dev reload {time.time_ns()}"
        changed = original + f"\nprint({marker!r}, flush=True)\n"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("tmp/dev/predictor/__init__.py")
            info.size, info.mtime, info.mode = len(changed.encode()), time.time(), 0o644
            tar.addfile(info, io.BytesIO(changed.encode()))
        t0 = time.monotonic()
        subprocess.run(["docker", "exec", "-i", container.name, "tar", "xmf", "-", "-C", "/", "--no-same-owner"],
                       input=buf.getvalue(), check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 60
        while marker not in container.logs():
            if time.monotonic() > deadline:
                pytest.fail(f"no restart on the synced change within 60s:\n{container.logs()[-3000:]}",
                            pytrace=False)
            time.sleep(0.2)
        reload_seconds = container.wait_ready(timeout=120, since=t0)
        metrics["dev_sync_to_ready_seconds"] = round(reload_seconds, 2)
        # The reloaded server still serves, under the same hardening.
        window = json.loads(docker("exec", container.name, "python", "-c",
                                   "import json, urllib.request; print(urllib.request.urlopen("
                                   f"'http://127.0.0.1:8080/v2/models/{MODEL_NAME}').read().decode())").stdout
                            )["inputs"][0]["shape"][1]
        client = httpclient.InferenceServerClient(container.http_host, network_timeout=60)
        inp = httpclient.InferInput("history", [1, window], "FP32")
        inp.set_data_from_numpy(histories(1, window))
        assert client.infer(MODEL_NAME, [inp]).as_numpy("p50").shape[0] == 1
        docker("kill", "--signal", "TERM", container.name)
        code = docker("wait", container.name, timeout=STOP_LIMIT + 5).stdout.strip()
        assert code == "0", container.logs()[-3000:]
    finally:
        container.remove()


LOOP_CONFIG = """\
prometheus: {url: "http://127.0.0.1:9", timeout: 1s}
model: {url: "http://127.0.0.1:8080", name: perf-predictor}
interval: 2s
listen: "127.0.0.1:9400"
targets:
  - {name: requests, query: "sum(rate(http_requests_total[5m]))", step: 5m}
"""
SCRAPE_LOOP = ("import urllib.request; "
               "print(urllib.request.urlopen('http://127.0.0.1:9400/metrics', timeout=5).read().decode())")


def test_forecast_loop_runs_in_the_image(image):
    """The same image runs the forecast loop (`python -m forecast_loop`, the chart's forecastLoop command)
    as UID 10001 on the read-only root: a config is checked, a bad key is refused with exit 2, and the
    loop serves /metrics, counting an unreachable Prometheus by reason while it keeps running."""
    container = start_container(image)
    try:
        write = ["exec", "-i", container.name, "sh", "-c"]
        subprocess.run(["docker", *write, "cat > /tmp/loop.yaml"], input=LOOP_CONFIG, text=True, check=True)
        checked = docker("exec", container.name, "python", "-m", "forecast_loop", "--config", "/tmp/loop.yaml", "--check")
        assert "1 target" in checked.stdout
        bad = LOOP_CONFIG.replace("interval:", "intervall:")
        subprocess.run(["docker", *write, "cat > /tmp/bad.yaml"], input=bad, text=True, check=True)
        refused = docker("exec", container.name, "python", "-m", "forecast_loop", "--config", "/tmp/bad.yaml", check=False)
        assert refused.returncode == 2 and "intervall" in refused.stderr, refused.stderr

        docker("exec", "-d", container.name, "python", "-m", "forecast_loop", "--config", "/tmp/loop.yaml")
        deadline = time.monotonic() + 30
        text = ""
        while time.monotonic() < deadline:
            scraped = docker("exec", container.name, "python", "-c", SCRAPE_LOOP, check=False)
            text = scraped.stdout
            if 'reason="prometheus_unreachable"' in text:
                break
            time.sleep(0.5)
        counted = re.search(r'^perf_predictor_forecast_errors_total\{(?=[^}]*reason="prometheus_unreachable")'
                            r'(?=[^}]*target="requests")[^}]*\} ([0-9.e+]+)$', text, re.MULTILINE)
        assert counted and float(counted.group(1)) >= 1, text[-2000:]
        assert container.ready()
    finally:
        container.remove()

"""Metrics and logs of the real server: exact counts summed over 2 worker processes, and quiet logs."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from .conftest import MODEL_NAME, REPO, start_server, stop_server, wait_ready
from .test_serving import histories, post

REST_OK, REST_BAD_SHORT, REST_BAD_NAME, GRPC_OK, GRPC_BAD = 40, 3, 2, 7, 2


def scrape(server) -> dict[tuple, float]:
    """{(sample name, sorted label items): value} of one /metrics scrape."""
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, items), v in samples.items() if n == name and want <= set(items))


def wait_for_count(read, expected: float, timeout: float = 10.0) -> float:
    """`read()` until it gives `expected` or the deadline passes; the last value. A call is counted after
    its reply is written, so a scrape right after the last reply (by another worker) can miss it."""
    deadline = time.monotonic() + timeout
    while (got := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def wait_for_workers(srv, n: int, timeout: float) -> None:
    """Ready answers once one worker is up; KServe starts the others one after another."""
    deadline = time.monotonic() + timeout
    while True:
        up = set(re.findall(r"^\S+ \S+ (\d+) uvicorn.error INFO Application startup complete", srv.log(), re.M))
        if len(up) >= n:
            return
        assert time.monotonic() < deadline, f"only {len(up)} of {n} workers started:\n{srv.log()}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def two_workers(model_dir, tmp_path_factory):
    """A 2-worker server whose metrics directory we can see, with a stale file from a "previous run"."""
    metrics_dir = tmp_path_factory.mktemp("metrics")
    (metrics_dir / "counter_99999.db").write_bytes(b"stale")
    srv = start_server(model_dir, tmp_path_factory.mktemp("logs") / "two-workers.log", "--workers", "2",
                       env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    try:
        wait_ready(srv, timeout=120)
        wait_for_workers(srv, 2, timeout=120)
        yield srv, metrics_dir
    finally:
        stop_server(srv)


@pytest.fixture(scope="module")
def known_load(two_workers, window):
    """Exactly known traffic: concurrent REST requests (spread over both workers), gRPC, and bad ones."""
    srv, _ = two_workers
    body = json.dumps({"inputs": [{"name": "history", "datatype": "FP32", "shape": [1, window],
                                   "data": histories(1, window).ravel().tolist()}]}).encode()
    statuses: list[int] = []

    def send(n: int) -> None:
        for _ in range(n):
            statuses.append(post(srv, f"/v2/models/{MODEL_NAME}/infer", body)[0])

    threads = [threading.Thread(target=send, args=(REST_OK // 8,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * REST_OK
    short = json.dumps({"inputs": [{"name": "history", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]})
    renamed = json.dumps({"inputs": [{"name": "load", "datatype": "FP32", "shape": [1, 1], "data": [1]}]})
    for payload, n in ((short, REST_BAD_SHORT), (renamed, REST_BAD_NAME)):
        for _ in range(n):
            assert post(srv, f"/v2/models/{MODEL_NAME}/infer", payload.encode())[0] == 400
    client = grpcclient.InferenceServerClient(srv.grpc_host)
    for _ in range(GRPC_OK):
        tensor = grpcclient.InferInput("history", [3, window], "FP32")
        tensor.set_data_from_numpy(histories(3, window))
        client.infer(MODEL_NAME, [tensor])
    for _ in range(GRPC_BAD):
        tensor = grpcclient.InferInput("history", [1, 5], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 5), dtype=np.float32))
        with pytest.raises(InferenceServerException):
            client.infer(MODEL_NAME, [tensor])
    for protocol, calls in (("grpc", GRPC_OK + GRPC_BAD), ("rest", REST_OK + REST_BAD_SHORT + REST_BAD_NAME)):
        wait_for_count(lambda p=protocol: value(scrape(srv), "perf_predictor_requests_total", protocol=p), calls)
    return srv


@pytest.fixture(scope="module")
def window(model_dir) -> int:
    from forecaster import artifact
    return artifact.read_card(model_dir)["window"]


def test_every_scrape_sums_both_workers(known_load, two_workers):
    _, metrics_dir = two_workers
    rest_writers = {p.name for p in metrics_dir.glob("counter_*.db")}
    assert "counter_99999.db" not in rest_writers, "the metrics directory was not emptied at start-up"
    assert len(rest_writers) >= 2, f"requests did not reach both workers: {rest_writers}"
    for _ in range(6):  # each scrape may be answered by either worker; all must agree
        samples = scrape(known_load)
        rest = {"model": MODEL_NAME, "protocol": "rest", "endpoint": "v2_infer"}
        assert value(samples, "perf_predictor_requests_total", status_class="2xx", **rest) == REST_OK
        assert value(samples, "perf_predictor_requests_total", status_class="4xx", **rest) == REST_BAD_SHORT + REST_BAD_NAME
        grpc = {"model": MODEL_NAME, "protocol": "grpc"}
        assert value(samples, "perf_predictor_requests_total", status_class="2xx", **grpc) == GRPC_OK
        assert value(samples, "perf_predictor_requests_total", status_class="4xx", **grpc) == GRPC_BAD
        assert value(samples, "perf_predictor_client_errors_total", reason="too_short") == REST_BAD_SHORT + GRPC_BAD
        assert value(samples, "perf_predictor_client_errors_total", reason="unknown_input") == REST_BAD_NAME
        assert value(samples, "perf_predictor_request_duration_seconds_count", **rest) == REST_OK + REST_BAD_SHORT + REST_BAD_NAME
        assert value(samples, "perf_predictor_batch_size_count") == REST_OK + GRPC_OK
        assert value(samples, "perf_predictor_series_forecast_total") == REST_OK + 3 * GRPC_OK
        assert value(samples, "perf_predictor_requests_in_flight") == 0
        assert value(samples, "perf_predictor_model_info", model=MODEL_NAME) == 1
        assert value(samples, "perf_predictor_model_load_seconds") > 0
        # KServe's own histogram keeps counting every call that reached the model
        assert value(samples, "request_predict_seconds_count") >= REST_OK + GRPC_OK


def test_model_info_carries_the_card(known_load, model_dir):
    from forecaster import artifact
    card = artifact.read_card(model_dir)
    (labels,) = [dict(items) for (name, items) in scrape(known_load) if name == "perf_predictor_model_info"]
    assert labels["version"] == card["version"] and labels["horizon"] == str(card["horizon"])
    assert labels["quantiles"] == "0.1,0.5,0.9" and labels["trained_at"] == card["created_at"]


def grpc_writers(metrics_dir) -> dict[int, float]:
    """pid -> the gRPC requests that process counted, from each process's own counter file."""
    from prometheus_client.mmap_dict import MmapedDict

    counts: dict[int, float] = {}
    for path in metrics_dir.glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for key, count, _timestamp, _pos in MmapedDict.read_all_values_from_file(str(path)):
            _, name, labels, _help = json.loads(key)
            if name == "perf_predictor_requests_total" and labels.get("protocol") == "grpc":
                counts[pid] = counts.get(pid, 0) + count
    return counts


def test_every_worker_serves_grpc(known_load, two_workers, window):
    """gRPC's forecasts are computed in the workers, never the parent: each worker serves the gRPC port
    (SO_REUSEPORT), and the kernel hands the clients' connections to the workers."""
    srv, metrics_dir = two_workers
    before = sum(grpc_writers(metrics_dir).values())
    tensor = grpcclient.InferInput("history", [1, window], "FP32")
    tensor.set_data_from_numpy(histories(1, window))
    start = threading.Barrier(16)

    def caller(_):  # 16 clients with their own connections, calling at once
        client = grpcclient.InferenceServerClient(srv.grpc_host, channel_args=[("grpc.use_local_subchannel_pool", 1)])
        start.wait()
        for _ in range(10):
            client.infer(MODEL_NAME, [tensor])
        client.close()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(caller, range(16)))
    wait_for_count(lambda: sum(grpc_writers(metrics_dir).values()), before + 160)
    writers = grpc_writers(metrics_dir)
    assert sum(writers.values()) == before + 160
    assert srv.process.pid not in writers, "the parent process should not serve gRPC"
    assert len([pid for pid, n in writers.items() if n > 0]) == 2, f"gRPC reached only {writers}"
    # the other RPCs (KServe's servicer, in the workers) answer too
    client = grpcclient.InferenceServerClient(srv.grpc_host)
    assert client.is_server_ready() and client.is_model_ready(MODEL_NAME)
    assert client.get_model_metadata(MODEL_NAME).inputs[0].name == "history"


def test_dead_worker_leaves_counts_and_drops_its_live_gauges(known_load, two_workers):
    srv, metrics_dir = two_workers
    workers = sorted(int(p.stem.rsplit("_", 1)[1]) for p in metrics_dir.glob("gauge_livesum_*.db"))
    victim = next(pid for pid in workers if pid != srv.process.pid)  # the parent holds the gRPC gauges
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:  # until the parent has reaped the worker and a scrape has noticed
        try:
            samples = scrape(known_load)
            if not (metrics_dir / f"gauge_livesum_{victim}.db").exists():
                break
        except OSError:  # the killed worker may have held the connection
            pass
        assert time.monotonic() < deadline, "the dead worker's live gauge file was never removed"
        time.sleep(0.5)
    assert value(samples, "perf_predictor_requests_total", protocol="rest", status_class="2xx") == REST_OK
    assert (metrics_dir / f"counter_{victim}.db").exists(), "a dead worker's counts must stay"


def test_text_logs_have_no_request_lines_or_tracebacks(server, window):
    before = server.log()
    for _ in range(5):
        post(server, f"/v2/models/{MODEL_NAME}/infer",
             json.dumps({"inputs": [{"name": "history", "datatype": "FP32", "shape": [1, window],
                                     "data": [1.0] * window}]}).encode())
    post(server, f"/v2/models/{MODEL_NAME}/infer", b'{"inputs": []}')
    time.sleep(0.5)
    new = server.log()[len(before):]
    assert "POST /v2/models" not in new and "predict_ms" not in new, new
    assert "Traceback" not in new and "rejected request: the request has no inputs" in new, new


def test_json_logs_with_request_lines(model_dir, tmp_path, window):
    srv = start_server(model_dir, tmp_path / "json.log", "--log_format", "json", "--request_log", "true")
    try:
        wait_ready(srv)
        post(srv, f"/v2/models/{MODEL_NAME}/infer", json.dumps(
            {"inputs": [{"name": "history", "datatype": "FP32", "shape": [1, window], "data": [1.0] * window}]}).encode())
        post(srv, f"/v2/models/{MODEL_NAME}/infer", b'{"inputs": []}')
        time.sleep(0.5)
    finally:
        stop_server(srv)
    records = []
    for line in srv.log().splitlines():
        if line.strip() and not line.startswith(("/", "  ")):  # Python warnings are not log records
            records.append(json.loads(line))
    assert all({"time", "level", "logger", "message", "pid"} <= set(r) for r in records)
    messages = [r["message"] for r in records]
    assert any("POST /v2/models/perf-predictor/infer" in m for m in messages), messages
    assert any("rejected request" in m for m in messages)
    assert any(r["logger"] == "perf_predictor" and "loaded model" in r["message"] for r in records)


REFUSALS_CHECK = """
import asyncio, os, sys
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from predictor import metrics

def rejected(registry=REGISTRY):
    labels = {"model": "m", "protocol": "grpc", "reason": "overload"}
    return registry.get_sample_value("perf_predictor_rejected_total", labels) or 0.0

async def refuse(n):
    for _ in range(n):
        metrics.record_refusal("m", "grpc")

async def main():
    await refuse(1000)
    assert rejected() == 1.0  # not one counter update per refusal
    metrics.exposition()  # a scrape of this process counts them first
    assert rejected() == 1001.0, rejected()
    await refuse(5)
    await asyncio.sleep(metrics.REFUSALS_FLUSH_S + 0.3)  # and they are counted within REFUSALS_FLUSH_S anyway
    assert rejected() == 1006.0, rejected()
    await refuse(7)  # counted on the way out, before the next flush is due

if sys.argv[1] == "refuse":
    metrics.record_refusal("m", "grpc")  # no event loop: counted at once
    assert rejected() == 1.0
    asyncio.run(main())
else:  # what the files of the process before say, as a scrape of a multiprocess server reads them
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, os.environ["PROMETHEUS_MULTIPROC_DIR"])
    print(rejected(registry))
"""


def test_refusals_are_counted_in_bulk_and_none_are_lost(tmp_path):
    """Refusals for overload come by the thousand a second: they are added to perf_predictor_rejected_total
    in bulk, before a scrape of the process, every REFUSALS_FLUSH_S, and at exit (in a process of its
    own, with prometheus-client's multiprocess files as a served process has them)."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    refused = subprocess.run([sys.executable, "-c", REFUSALS_CHECK, "refuse"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 0, refused.stderr[-2000:]
    counted = subprocess.run([sys.executable, "-c", REFUSALS_CHECK, "read"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=120)
    assert counted.returncode == 0, counted.stderr[-2000:]
    assert float(counted.stdout.strip()) == 1 + 1000 + 5 + 7

"""SIGTERM under REST and gRPC load (issue 21 item 8). The approach of test_grpc_front's
test_sigterm_moves_grpc_clients_away_before_stopping, with load: every request sent gets its reply,
readiness turns false first, keep-alive REST clients get `Connection: close` on their next reply during
the drain (never a reset), and the process exits 0 within the chart's terminationGracePeriodSeconds."""
from __future__ import annotations

import http.client
import json
import signal
import threading
import time

import numpy as np
import tritonclient.grpc as grpcclient
import yaml

from .conftest import MODEL_NAME, REPO, start_server, stop_server, wait_ready
from .test_serving import card, histories, window  # noqa: F401 (fixtures)

DRAIN_S = 3
REST_CLIENTS, GRPC_CLIENTS = 8, 4


def grace_period() -> int:
    values = yaml.safe_load((REPO / "charts" / "perf-predictor" / "values.yaml").read_text())
    return int(values["terminationGracePeriodSeconds"])


class RestClient(threading.Thread):
    """One keep-alive connection in a loop until a reply says Connection: close (a client would then
    open its next connection through the Service, to another pod)."""

    def __init__(self, port: int, body: bytes):
        super().__init__(daemon=True)
        self.port, self.body = port, body
        self.replies: list[tuple[float, int, bool]] = []  # (sent at, status, connection: close)
        self.failures: list[str] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.connect()
        while True:
            sent = time.monotonic()
            try:
                conn.request("POST", f"/v2/models/{MODEL_NAME}/infer", self.body, {"content-type": "application/json"})
                resp = conn.getresponse()
                resp.read()
            except Exception as exc:  # a reset or an unanswered request on an open connection: lost
                self.failures.append(f"{type(exc).__name__}: {exc} (sent {sent:.3f})")
                return
            closing = (resp.getheader("connection") or "").lower() == "close"
            self.replies.append((sent, resp.status, closing))
            if closing:
                return


class GrpcClient(threading.Thread):
    """Calls in a loop until `stop_at` (before the drain ends and the port closes)."""

    def __init__(self, host: str, history: np.ndarray, stop_at: list):
        super().__init__(daemon=True)
        self.client = grpcclient.InferenceServerClient(host)
        self.tensor = grpcclient.InferInput("history", list(history.shape), "FP32")
        self.tensor.set_data_from_numpy(history)
        self.stop_at = stop_at
        self.calls, self.failures = 0, []

    def run(self) -> None:
        while time.monotonic() < self.stop_at[0]:
            try:
                self.client.infer(MODEL_NAME, [self.tensor])
                self.calls += 1
            except Exception as exc:
                self.failures.append(str(exc))
                return


def test_sigterm_under_rest_and_grpc_load_loses_nothing(model_dir, tmp_path, window):
    history = histories(4, window)
    body = json.dumps({"inputs": [{"name": "history", "datatype": "FP32", "shape": list(history.shape),
                                   "data": history.ravel().tolist()}]}).encode()
    srv = start_server(model_dir, tmp_path / "server.log", "--drain_seconds", str(DRAIN_S))
    try:
        wait_ready(srv)
        stop_at = [float("inf")]
        rest = [RestClient(srv.http_port, body) for _ in range(REST_CLIENTS)]
        grpc = [GrpcClient(srv.grpc_host, history, stop_at) for _ in range(GRPC_CLIENTS)]
        ready: list[tuple[float, int]] = []
        polling = threading.Event()

        def poll_readiness() -> None:
            while not polling.is_set():
                conn = http.client.HTTPConnection("127.0.0.1", srv.http_port, timeout=10)
                try:
                    conn.request("GET", f"/v2/models/{MODEL_NAME}/ready")
                    ready.append((time.monotonic(), conn.getresponse().status))
                except OSError:
                    ready.append((time.monotonic(), 0))  # refused: the port is closed
                finally:
                    conn.close()
                time.sleep(0.05)

        poller = threading.Thread(target=poll_readiness, daemon=True)
        for thread in (*rest, *grpc, poller):
            thread.start()
        time.sleep(2)  # under load
        assert all(r.replies for r in rest) and [f for r in rest for f in r.failures] == []
        sigterm = time.monotonic()
        stop_at[0] = sigterm + DRAIN_S - 1
        srv.process.send_signal(signal.SIGTERM)
        code = srv.process.wait(timeout=grace_period())
        exited = time.monotonic()
        polling.set()
        for thread in (*rest, *grpc, poller):
            thread.join(timeout=30)

        assert code == 0, srv.log()[-3000:]
        assert [f for r in rest for f in r.failures] == [], ("REST requests lost", sigterm, [(r.failures, r.replies[-3:]) for r in rest if r.failures])
        assert [f for g in grpc for f in g.failures] == [], "gRPC calls lost"
        assert {status for r in rest for _, status, _ in r.replies} == {200}
        assert sum(g.calls for g in grpc) > 0
        # every keep-alive client was told to close on a reply after SIGTERM (its last), none before
        for r in rest:
            assert r.replies[-1][2], "no Connection: close after SIGTERM"
            assert not any(closing for sent, _, closing in r.replies if sent < sigterm - 0.5)
        # readiness: 200 before SIGTERM, then 503 while the port still answers, and only then refused
        first_not_ready = next(t for t, status in ready if t > sigterm and status == 503)
        refused = [t for t, status in ready if status == 0]
        assert {status for t, status in ready if t < sigterm} == {200}
        assert first_not_ready - sigterm < 1.0
        assert not refused or refused[0] > first_not_ready
        print(f"exit {exited - sigterm:.2f}s after SIGTERM (grace {grace_period()}s); "
              f"{sum(len(r.replies) for r in rest)} REST replies, {sum(g.calls for g in grpc)} gRPC calls")
    finally:
        stop_server(srv)

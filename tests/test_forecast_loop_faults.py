"""The forecast loop when its dependencies fail, against real processes stopped, paused and restarted.

Prometheus (the `history` fixture's) and a predictor of this module's own are stopped and started
again on the same port, or paused with SIGSTOP (slower than any timeout); a small fake upstream is
used only for answers a real server does not give (5xx from Prometheus, malformed JSON, a model that
is not ready or answers garbage), and relays to the real server otherwise. Each time the loop must
keep running, count the error by reason, log once per change of state, mark the target stale and
withdraw its forecasts, and recover by itself. SIGTERM ends it within 2 s with status 0.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from .conftest import REPO, start_server, stop_server, wait_ready
from .forecast_loop_fixtures import LoopProcess, history, loop_config  # noqa: F401 (fixture)

FAST = {"interval": "0.5s"}


def fast_config(prom_url: str, model_url: str, **model) -> dict:
    config = loop_config(prom_url, model_url, **FAST)
    config["prometheus"]["timeout"] = "1s"
    config["model"].update({"timeout": "5s", **model})  # a predictor's first calls can be slow here
    config["targets"] = config["targets"][:1]  # tweets
    return config


def errors(loop: LoopProcess, reason: str) -> float:
    return loop.value("perf_predictor_forecast_errors_total", target="tweets", reason=reason) or 0


def forecasting(loop: LoopProcess) -> bool:
    return (loop.value("perf_predictor_forecast_stale", target="tweets") == 0
            and len(loop.samples("perf_predictor_forecast", target="tweets")) == 18)


def stale_and_withdrawn(loop: LoopProcess) -> bool:
    return (loop.value("perf_predictor_forecast_stale", target="tweets") == 1
            and not loop.samples("perf_predictor_forecast", target="tweets"))


def assert_fails_then_recovers(loop: LoopProcess, reason: str, break_it, fix_it) -> None:
    loop.wait_until(lambda: forecasting(loop), what="first forecasts")
    break_it()
    loop.wait_until(lambda: errors(loop, reason) >= 4 and stale_and_withdrawn(loop), timeout=60,
                    what=f"{reason} counted and the target stale")
    assert loop.log().count(f"({reason})") == 1, "one log line per change of state, not one per interval"
    failed_at = loop.log().index(f"({reason})")
    fix_it()
    loop.wait_until(lambda: forecasting(loop), timeout=60, what=f"recovery from {reason}")
    assert "forecasting 2 series again (was " in loop.log()[failed_at:]  # (a restarted model may time out once)
    assert loop.proc.poll() is None


class FakeUpstream:
    """Relays to `upstream`, or answers `mode` for the paths in `paths` (a status and a body)."""

    def __init__(self, upstream: str):
        self.upstream, self.answer, self.paths = upstream, None, ()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                if fake.answer is not None and any(p in self.path for p in fake.paths):
                    status, payload = fake.answer
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                request = urllib.request.Request(fake.upstream + self.path, data=body, method=self.command,
                                                 headers=headers)
                try:
                    with urllib.request.urlopen(request, timeout=10) as resp:
                        status, reply_headers, payload = resp.status, resp.headers, resp.read()
                except urllib.error.HTTPError as exc:
                    status, reply_headers, payload = exc.code, exc.headers, exc.read()
                self.send_response(status)
                for k, v in reply_headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def fake_answers_then_relays(tmp_path, upstream: str, paths: tuple, answer: tuple, reason: str, config) -> None:
    """The loop behind a FakeUpstream (`config(fake_url)`): it answers `answer` on `paths`, then relays."""
    fake = FakeUpstream(upstream)
    fake.paths = paths
    loop = LoopProcess(tmp_path, config(fake.url))
    try:
        assert_fails_then_recovers(loop, reason, lambda: setattr(fake, "answer", answer),
                                   lambda: setattr(fake, "answer", None))
    finally:
        loop.stop()
        fake.close()


@pytest.fixture
def own_server(model_dir, tmp_path):
    srv = start_server(model_dir, tmp_path / "predictor.log")
    wait_ready(srv)
    yield srv
    stop_server(srv)


def test_prometheus_down_then_back(history, server, tmp_path):
    prom = history["prometheus"]
    loop = LoopProcess(tmp_path, fast_config(prom.url, server.http_url))
    try:
        assert_fails_then_recovers(loop, "prometheus_unreachable", prom.stop, prom.start)
    finally:
        loop.stop()
        if prom.proc.poll() is not None:
            prom.start()


def test_prometheus_slower_than_the_timeout_then_sigterm_while_waiting(history, server, tmp_path):
    prom = history["prometheus"]
    loop = LoopProcess(tmp_path, fast_config(prom.url, server.http_url))
    try:
        assert_fails_then_recovers(loop, "prometheus_timeout", lambda: prom.proc.send_signal(signal.SIGSTOP),
                                   lambda: prom.proc.send_signal(signal.SIGCONT))
        prom.proc.send_signal(signal.SIGSTOP)  # an iteration stuck in a query must not hold up SIGTERM
        loop.wait_until(lambda: errors(loop, "prometheus_timeout") >= 6, what="stuck again")
        code, seconds = loop.terminate()
        assert code == 0 and seconds < 2, (code, seconds, loop.log())
        assert "Traceback" not in loop.log()
    finally:
        prom.proc.send_signal(signal.SIGCONT)
        loop.stop()


@pytest.mark.parametrize("answer, reason", [
    ((503, b'{"status":"error","error":"overloaded"}'), "prometheus_http_5xx"),
    ((200, b'{"status":"success","data":{"resultType":"matr'), "prometheus_malformed"),
    ((200, b'[1, 2, 3]'), "prometheus_malformed"),
    ((200, b'{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"a":"b"},"values":7}]}}'),
     "prometheus_malformed"),
])
def test_prometheus_answering_errors_or_garbage(history, server, tmp_path, answer, reason):
    fake_answers_then_relays(tmp_path, history["prometheus"].url, ("/api/v1/query_range",), answer, reason,
                             lambda fake_url: fast_config(fake_url, server.http_url))


def test_model_down_then_back(history, own_server, model_dir, tmp_path):
    loop = LoopProcess(tmp_path, fast_config(history["prometheus"].url, own_server.http_url))
    ports = (own_server.http_port, own_server.grpc_port)

    def restart():
        own_server.process = start_server(model_dir, own_server.log_path, ports=ports).process
        wait_ready(own_server)

    try:
        assert_fails_then_recovers(loop, "model_unreachable", lambda: stop_server(own_server), restart)
    finally:
        loop.stop()


def test_model_paused_is_a_timeout(history, own_server, tmp_path):
    loop = LoopProcess(tmp_path, fast_config(history["prometheus"].url, own_server.http_url))
    try:
        assert_fails_then_recovers(loop, "model_timeout", lambda: own_server.process.send_signal(signal.SIGSTOP),
                                   lambda: own_server.process.send_signal(signal.SIGCONT))
    finally:
        own_server.process.send_signal(signal.SIGCONT)
        loop.stop()


@pytest.mark.parametrize("paths, answer, reason", [
    (("/ready", "/infer"), (503, b"loading"), "model_not_ready"),
    (("/infer",), (500, b'{"error": "boom"}'), "model_error"),
    (("/infer",), (200, b'{"outputs": [{"name": "p10", "shape": [2, 12], "datatype": "FP32", "data": [1]}]}'),
     "model_malformed"),
    (("/infer",), (200, b"\x00\x01 not json"), "model_malformed"),
])
def test_model_not_ready_or_answering_errors_or_garbage(history, server, tmp_path, paths, answer, reason):
    fake_answers_then_relays(tmp_path, server.http_url, paths, answer, reason,
                             lambda fake_url: fast_config(history["prometheus"].url, fake_url))


def test_unknown_model_is_counted_and_the_loop_keeps_running(history, server, tmp_path):
    loop = LoopProcess(tmp_path, fast_config(history["prometheus"].url, server.http_url, name="no-such-model"))
    try:
        loop.wait_until(lambda: errors(loop, "model_error") >= 3 and stale_and_withdrawn(loop), what="model_error")
        assert loop.log().count("(model_error)") == 1
        code, seconds = loop.terminate()
        assert code == 0 and seconds < 2, (code, seconds)
    finally:
        loop.stop()


def test_bad_config_exits_2_naming_the_file_and_key(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("prometheus: {url: 'http://p:9090'}\nmodel: {url: 'http://m', name: m}\n"
                    "targets:\n  - {name: a, query: up, max_seires: 3}\n")
    proc = subprocess.run([sys.executable, "-m", "forecast_loop", "--config", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert f"{path}: targets[0].max_seires: unknown key" in proc.stderr

"""The helm test hook's script (files/helm-test.py), run against a fake KServe v2
server built from the standard library: it passes on a conforming reply and fails
on wrong output names, wrong shapes and a model that never becomes ready."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from chartlib import CHART

SCRIPT = (CHART / "files" / "helm-test.py").read_text()
W, H = 48, 12


def make_server(mode: str):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _json(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/v2/models/pp/ready":
                return self._json(503 if mode == "never-ready" else 200, {})
            if self.path == "/v2/models/pp":
                return self._json(200, {
                    "name": "pp", "platform": "", "versions": ["1"],
                    "inputs": [{"name": "history", "datatype": "FP32", "shape": [-1, W]}],
                    "outputs": [{"name": n, "datatype": "FP32", "shape": [-1, H]} for n in ("p10", "p50", "p90")],
                })
            self._json(404, {"error": "not found"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            inp = body["inputs"][0]
            if inp["name"] != "history" or inp["shape"] != [1, W] or len(inp["data"]) != W:
                return self._json(400, {"error": "bad input"})
            names = ("p10", "p50", "p90") if mode != "wrong-names" else ("q10", "q50", "q90")
            h = H if mode != "wrong-shape" else H - 1
            shape = [1, h] if mode != "flat" else [h]
            outputs = [{"name": n, "datatype": "FP32", "shape": shape, "data": [1.0] * h} for n in names]
            self._json(200, {"model_name": "pp", "id": body.get("id"), "outputs": outputs})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run_script(mode: str) -> subprocess.CompletedProcess:
    server = make_server(mode)
    try:
        env = dict(os.environ, BASE_URL=f"http://127.0.0.1:{server.server_address[1]}",
                   MODEL_NAME="pp", TIMEOUT_SECONDS="3")
        return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    finally:
        server.shutdown()


def test_passes_on_a_conforming_server():
    proc = run_script("ok")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"window {W}, horizon {H}" in proc.stdout


@pytest.mark.parametrize("mode, message", [
    ("wrong-names", "outputs should be p10, p50, p90"),
    ("wrong-shape", "differs from metadata"),
    ("flat", "shape should be [1, H]"),
    ("never-ready", "not ready"),
])
def test_fails_on_a_broken_server(mode, message):
    proc = run_script(mode)
    assert proc.returncode != 0
    assert message in proc.stdout, proc.stdout + proc.stderr

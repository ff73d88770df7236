"""Start-to-ready time and single-series v2 REST latency of `python -m predictor`, measured from outside.

    python benchmarks/single_request.py --model_dir models/default [--requests 500]

Sequential requests over one keep-alive connection, JSON body, one series of W points.
"""
from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_dir", default=str(REPO / "models" / "default"))
    p.add_argument("--requests", type=int, default=500)
    args = p.parse_args()
    port, grpc_port = free_port(), free_port()
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "predictor", "--model_dir", args.model_dir,
                               "--http_port", str(port), "--grpc_port", str(grpc_port),
                               "--enable_latency_logging", "false"],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/v2/models/perf-predictor/ready")
                ready = conn.getresponse()
                ready.read()
                if ready.status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None:
                sys.exit(f"server exited with {server.returncode}")
            time.sleep(0.05)
        ready_s = time.perf_counter() - started
        conn.request("GET", "/v2/models/perf-predictor")
        window = json.loads(conn.getresponse().read())["inputs"][0]["shape"][1]
        body = json.dumps({"inputs": [{"name": "history", "datatype": "FP32", "shape": [1, window],
                                       "data": [100.0 + (i % 288) for i in range(window)]}]})
        headers = {"Content-Type": "application/json"}
        latencies = []
        for i in range(args.requests + 20):
            t0 = time.perf_counter()
            conn.request("POST", "/v2/models/perf-predictor/infer", body, headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                sys.exit(f"request failed with {resp.status}")
            if i >= 20:  # warm-up excluded
                latencies.append((time.perf_counter() - t0) * 1000)
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(round(0.99 * len(latencies))) - 1)]
        print(json.dumps({"start_to_ready_s": round(ready_s, 2), "requests": len(latencies),
                          "p50_ms": round(statistics.median(latencies), 2), "p99_ms": round(p99, 2),
                          "mean_ms": round(statistics.fmean(latencies), 2)}))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()

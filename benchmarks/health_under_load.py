"""How fast health answers while the server takes the largest request it accepts.

    .venv/bin/python benchmarks/health_under_load.py [--model_dir DIR] [--requests 10] [--interval_ms 5]

Starts `python -m predictor` (1 worker, default limits) and sends, one after another, v2 JSON requests
as large as the default --max_body_bytes allows: --max_batch_series series of W numbers, each written
as wide as the limit's rule assumes (`-1.2345678901234567e+02, `), so each body is within a few bytes
of the limit. Meanwhile another connection asks GET /v2/health/ready every `interval_ms` and records
how long each answer took. Prints the big requests' times and the health latencies measured while a
big request was in flight (p50, p99, max), as a markdown row and one JSON line, and writes them to
`--out` for benchmarks/report.py. The target: p99 < 50 ms.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (run.py sets the thread policy and sys.path)

from forecaster import artifact  # noqa: E402
from predictor.model import default_max_body_bytes  # noqa: E402

MODEL = "perf-predictor"
MAX_BATCH_SERIES = 4096  # the server's default --max_batch_series


def widest_body(card: dict, series: int, limit: int) -> bytes:
    """series x W numbers of 26 bytes each (with the separator), the v2 JSON the limit is sized for."""
    window = card["window"]
    history = bench.workload(window, series, seed=5)
    numbers = ", ".join(f"{-float(v):.16e}" for v in history.ravel())  # "-1.2345678901234567e+02"
    head = f'{{"inputs": [{{"name": "history", "datatype": "FP64", "shape": [{series}, {window}], "data": ['
    body = (head + numbers + "]}]}").encode()
    if len(body) > limit:
        raise SystemExit(f"the body ({len(body)} bytes) is over the limit ({limit}): the rule in model.py is wrong")
    return body


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", type=Path, help="model directory (default: train .cache/bench/model)")
    ap.add_argument("--requests", type=int, default=10, help="largest requests to send, one after another")
    ap.add_argument("--interval_ms", type=float, default=5.0, help="pause between two health requests")
    ap.add_argument("--out", type=Path, default=bench.REPO / ".cache" / "limits" / "health-under-load.json",
                    help="the figures, for benchmarks/report.py")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="health-bench-"))
    model_dir = bench.ensure_model(args.model_dir, bench.REPO / ".cache" / "bench", retrain=False)
    card = artifact.read_card(model_dir)
    limit = default_max_body_bytes(MAX_BATCH_SERIES, card["window"])
    body = widest_body(card, MAX_BATCH_SERIES, limit)
    bench.log(f"largest request: {MAX_BATCH_SERIES} series x {card['window']}, {len(body):,} bytes "
              f"(limit {limit:,}, {len(body) / limit:.1%})")
    hp, gp = bench.free_port(), bench.free_port()
    server = bench.Server(MODEL, "project", MODEL, [sys.executable, "-m", "predictor", "--model_dir", str(model_dir),
                                                    "--http_port", str(hp), "--grpc_port", str(gp)], hp, gp)
    proc = bench.start(server, work)
    busy = threading.Event()
    stop = threading.Event()
    during: list[float] = []
    idle: list[float] = []

    def probe() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", hp, timeout=30)
        while not stop.is_set():
            in_flight = busy.is_set()
            started = time.perf_counter()
            conn.request("GET", "/v2/health/ready")
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter() - started
            if response.status != 200:
                raise RuntimeError(f"health answered {response.status}")
            if in_flight and busy.is_set():
                during.append(elapsed)
            elif not in_flight and not busy.is_set():
                idle.append(elapsed)
            time.sleep(args.interval_ms / 1000)
        conn.close()

    big_s: list[float] = []
    prober = threading.Thread(target=probe, daemon=True)
    try:
        prober.start()
        time.sleep(1.0)
        conn = http.client.HTTPConnection("127.0.0.1", hp, timeout=300)
        for _ in range(args.requests):
            busy.set()
            started = time.perf_counter()
            conn.request("POST", f"/v2/models/{MODEL}/infer", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            reply = response.read()
            big_s.append(time.perf_counter() - started)
            busy.clear()
            if response.status != 200:
                raise RuntimeError(f"the largest request got {response.status}: {reply[:300]!r}")
            time.sleep(0.5)
        stop.set()
        prober.join(timeout=30)
    finally:
        stop.set()
        bench.stop(proc)
    ms = sorted(1000 * s for s in during)
    figures = {"body_bytes": len(body), "limit_bytes": limit, "requests": len(big_s),
               "request_s_median": float(np.median(big_s)), "health_samples": len(ms),
               "health_p50_ms": bench.percentile(ms, 50), "health_p99_ms": bench.percentile(ms, 99),
               "health_max_ms": ms[-1], "idle_health_p50_ms": bench.percentile(sorted(1000 * s for s in idle), 50),
               "what": "Health under the largest request", "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "load_average": " / ".join(f"{x:.1f}" for x in os.getloadavg())}
    print("| body | request (median) | health samples during | p50 ms | p99 ms | max ms | idle p50 ms |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {len(body) / 2**20:.1f} MiB, {MAX_BATCH_SERIES} x {card['window']} | {figures['request_s_median']:.2f} s | "
          f"{len(ms)} | {figures['health_p50_ms']:.1f} | {figures['health_p99_ms']:.1f} | {figures['health_max_ms']:.1f} | "
          f"{figures['idle_health_p50_ms']:.1f} |")
    print(json.dumps(figures))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Forecast loop benchmark: one iteration for one target returning 1,000 label sets, and the loop's memory.

    .venv/bin/python benchmarks/forecast_loop.py [--series 1000] [--iterations 10] [--model_dir DIR]

Real parts, one machine: a real Prometheus (Debian `prometheus`) holding 1,000 label sets of
`../shared/data/nab-tweets` history (each series a tweets series at its own offset and scale, W + 6
steps and a day more at 5 minutes, backfilled with promtool to end now), the real predictor
(`python -m predictor`, model trained with `python -m training` into .cache/bench/loop-model unless
--model_dir), and `python -m forecast_loop` as its own process with one target whose query returns
every label set (max_series 1000).

An iteration is what the loop times itself (`perf_predictor_forecast_loop_duration_seconds`, read
after each one): the paged range query, the gap policy for every label set, the v2 calls, building
the published view (rendered to text) and the accuracy bookkeeping. Publishing is then a scrape of its
/metrics (9,000 forecast samples and 7,000 more), timed by this script after each iteration. Memory:
the loop process's resident set (VmRSS) after the last iteration and its peak (VmHWM), from /proc.
Targets (issue 16): iteration + scrape <= 2 s, RSS < 200 MB.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO)]

from training.sources.csv_files import read_csv  # noqa: E402

STEP = 300
MODEL = "perf-predictor"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{proc.args[0]} exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    sys.exit(f"{url} not ready after {timeout}s:\n{log.read_text()[-3000:]}")


def backfill(root: Path, n_series: int, points: int) -> Path:
    shared = Path(os.environ.get("PERF_PREDICTOR_SHARED", REPO.parent / "shared")) / "data" / "nab-tweets"
    sources = [read_csv(p)[-1].values for p in sorted(shared.glob("*.csv"))]
    if not sources:
        sys.exit(f"no NAB tweets under {shared} (set PERF_PREDICTOR_SHARED)")
    last = int(time.time()) // STEP * STEP
    stamps = last - STEP * np.arange(points)[::-1]
    lines = ["# HELP bench_tweets NAB tweets, many label sets.", "# TYPE bench_tweets gauge"]
    rng = np.random.default_rng(0)
    for i in range(n_series):
        src = sources[i % len(sources)]
        offset = int(rng.integers(0, len(src) - points))
        values = src[offset: offset + points] * float(rng.uniform(0.5, 2.0))
        lines += [f'bench_tweets{{service="svc-{i:04d}",zone="z{i % 3}"}} {v:.3f} {t}' for t, v in zip(stamps, values)]
    lines.append("# EOF")
    (root / "history.om").write_text("\n".join(lines) + "\n")
    data = root / "data"
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=24h",
                    str(root / "history.om"), str(data)], check=True, capture_output=True)
    (root / "history.om").unlink()
    return data


def ensure_model(model_dir: Path | None) -> Path:
    if model_dir is not None:
        return model_dir
    model_dir = REPO / ".cache" / "bench" / "loop-model"
    if not (model_dir / "model-card.json").exists():
        print("training the model (python -m training) ...", flush=True)
        subprocess.run([sys.executable, "-m", "training", "--out", str(model_dir)], check=True, cwd=REPO)
    return model_dir


def scrape(port: int) -> tuple[float, str]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return time.perf_counter() - started, text


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def proc_kib(pid: int, field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M).group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--model_dir", type=Path)
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "forecast-loop.json")
    args = parser.parse_args()
    if not shutil.which("prometheus") or not shutil.which("promtool"):
        sys.exit("needs prometheus and promtool (apt-get install -y prometheus)")
    model_dir = ensure_model(args.model_dir)
    window = json.loads((model_dir / "model-card.json").read_text())["window"]
    root = Path(tempfile.mkdtemp(prefix="forecast-loop-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        print(f"backfilling {args.series} label sets ...", flush=True)
        data = backfill(root, args.series, window + 6 + 288)
        prom_port = free_port()
        (root / "prometheus.yml").write_text("global: {scrape_interval: 1m}\n")
        prom_log = root / "prometheus.log"
        procs.append(subprocess.Popen(
            ["prometheus", f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--storage.tsdb.retention.time=30d"],
            stdout=prom_log.open("w"), stderr=subprocess.STDOUT, cwd=root))
        wait_http(f"http://127.0.0.1:{prom_port}/-/ready", procs[-1], prom_log)

        http_port, grpc_port = free_port(), free_port()
        pred_log = root / "predictor.log"
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "predictor", "--model_dir", str(model_dir), "--http_port", str(http_port),
             "--grpc_port", str(grpc_port)], cwd=REPO, stdout=pred_log.open("w"), stderr=subprocess.STDOUT))
        wait_http(f"http://127.0.0.1:{http_port}/v2/models/{MODEL}/ready", procs[-1], pred_log)

        interval = 8.0
        config = {
            "prometheus": {"url": f"http://127.0.0.1:{prom_port}", "timeout": "30s"},
            "model": {"url": f"http://127.0.0.1:{http_port}", "name": MODEL, "timeout": "30s"},
            "interval": f"{interval:g}s",
            "targets": [{"name": "bench", "query": "bench_tweets", "step": "5m", "max_series": args.series}],
        }
        (root / "loop.yaml").write_text(json.dumps(config))  # JSON is YAML
        loop_log = root / "loop.log"
        loop = subprocess.Popen([sys.executable, "-m", "forecast_loop", "--config", str(root / "loop.yaml"),
                                 "--listen", "127.0.0.1:0"], cwd=REPO, stdout=loop_log.open("w"),
                                stderr=subprocess.STDOUT)
        procs.append(loop)
        deadline = time.monotonic() + 60
        while not (m := re.search(r"serving /metrics on http://[\d.]+:(\d+)", loop_log.read_text())):
            if loop.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the loop did not start:\n{loop_log.read_text()}")
            time.sleep(0.1)
        loop_port = int(m.group(1))

        load_start = os.getloadavg()[0]  # the machine is shared: say how busy it was
        iterations, scrapes, seen = [], [], (0.0, 0.0)
        deadline = time.monotonic() + (args.iterations + 3) * interval + 120
        while len(iterations) < args.iterations + 1 and time.monotonic() < deadline:
            seconds, text = scrape(loop_port)
            count = metric(text, "perf_predictor_forecast_loop_duration_seconds_count")
            total = metric(text, "perf_predictor_forecast_loop_duration_seconds_sum")
            if count == seen[0] + 1:
                series = metric(text, 'perf_predictor_forecast_series{target="bench"}')
                if series != args.series:
                    sys.exit(f"iteration forecast {series:g} series, expected {args.series}:\n{loop_log.read_text()}")
                iterations.append(total - seen[1])
                scrapes.append(seconds)
            elif count > seen[0] + 1:
                sys.exit("missed an iteration: the loop ran two between polls")
            seen = (count, total)
            time.sleep(0.3)
        iterations, scrapes = iterations[1:], scrapes[1:]  # the first carries the loop's warm-up
        if len(iterations) < args.iterations:
            sys.exit(f"only {len(iterations)} iterations:\n{loop_log.read_text()}")
        rss, peak = proc_kib(loop.pid, "VmRSS") / 1024, proc_kib(loop.pid, "VmHWM") / 1024
        samples = sum(1 for line in text.splitlines() if line.startswith("perf_predictor_forecast{"))
        total = [i + s for i, s in zip(iterations, scrapes)]
        result = {
            "series": args.series, "window": window, "iterations": len(iterations), "forecast_samples": samples,
            "iteration_seconds": {"median": float(np.median(iterations)), "max": float(np.max(iterations))},
            "scrape_seconds": {"median": float(np.median(scrapes)), "max": float(np.max(scrapes))},
            "iteration_plus_scrape_seconds": {"median": float(np.median(total)), "max": float(np.max(total))},
            "rss_mib": round(rss, 1), "peak_rss_mib": round(peak, 1),
            "targets": {"iteration_plus_scrape_max_s": 2.0, "rss_mib": 200},
            "cpus": os.cpu_count(),
            "load_average_1m": {"start": load_start, "end": os.getloadavg()[0]},
        }
        result["pass"] = result["iteration_plus_scrape_seconds"]["max"] <= 2.0 and peak < 200
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        code, started = None, time.monotonic()
        loop.send_signal(signal.SIGTERM)
        code = loop.wait(timeout=10)
        print(f"SIGTERM: exit status {code} after {time.monotonic() - started:.2f}s")
        return 0 if result["pass"] else 1
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

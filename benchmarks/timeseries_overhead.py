"""What KServe's time-series API costs against v2 REST JSON: one series, one server, one run.

    .venv/bin/python benchmarks/timeseries_overhead.py [--model_dir DIR] [--duration 5] [--rounds 3]

Starts `python -m predictor` (1 worker), checks that POST /v1/timeseries/forecast (a ForecastRequest
built with KServe's types: one series of W points, horizon H, every quantile) and POST
/v2/models/<name>/infer (JSON, the same window) give the same forecast, then loads each with wrk
(benchmarks/wrk_post.lua) at c=1 and c=16. The two endpoints alternate in `rounds` rounds, so drift on
a shared machine hits both; each row is the median over rounds, and the ratios compare rows of the
same run. Prints a markdown table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (run.py sets the thread policy and sys.path)

from kserve.protocol.rest.timeseries.types import (  # noqa: E402
    ForecastOptions, ForecastRequest, ForecastResponse, Frequency, TimeSeriesInput, TimeSeriesType)

from forecaster import artifact  # noqa: E402

MODEL = "perf-predictor"
ENDPOINTS = {"v2 JSON": f"/v2/models/{MODEL}/infer", "timeseries": "/v1/timeseries/forecast"}


def bodies(history: np.ndarray, card: dict, work: Path) -> dict[str, Path]:
    files = bench.write_bodies(work, history[None, :])
    unit, step = ("minute", card["step_seconds"] // 60) if card["step_seconds"] % 60 == 0 else ("second", card["step_seconds"])
    request = ForecastRequest(model=MODEL, options=ForecastOptions(horizon=card["horizon"]), inputs=[TimeSeriesInput(
        type=TimeSeriesType.UNIVARIATE, name="requests", series=[float(v) for v in history], frequency=Frequency(unit),
        start_timestamp="2026-01-01T00:00:00Z", step=step)])
    timeseries = work / "timeseries-1.json"
    timeseries.write_text(request.model_dump_json())
    return {"v2 JSON": files["json"], "timeseries": timeseries}


def check_same_forecast(port: int, files: dict[str, Path], card: dict) -> None:
    status, headers, body = bench.http_request(port, "POST", ENDPOINTS["v2 JSON"], files["v2 JSON"].read_bytes(),
                                               {"Content-Type": "application/json"})
    assert status == 200, body[:300]
    v2 = bench.decode_rest(headers, body)
    status, _, body = bench.http_request(port, "POST", ENDPOINTS["timeseries"], files["timeseries"].read_bytes(),
                                         {"Content-Type": "application/json"})
    assert status == 200, body[:300]
    content = ForecastResponse.model_validate_json(body).outputs[0].content[0]
    for q, name in zip(card["quantiles"], card["output_names"]):
        np.testing.assert_array_equal(np.float32(content.quantiles[str(q)]), v2[name]["data"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", type=Path, help="model directory (default: train .cache/bench/model)")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,16")
    args = ap.parse_args()
    wrk = bench.ensure_tool("wrk", "wrk", install=True)
    work = Path(tempfile.mkdtemp(prefix="timeseries-bench-"))
    model_dir = bench.ensure_model(args.model_dir, bench.REPO / ".cache" / "bench", retrain=False)
    card = artifact.read_card(model_dir)
    files = bodies(bench.workload(card["window"], 1, seed=11)[0], card, work)
    hp, gp = bench.free_port(), bench.free_port()
    server = bench.Server(MODEL, "project", MODEL, [sys.executable, "-m", "predictor", "--model_dir", str(model_dir),
                                                    "--http_port", str(hp), "--grpc_port", str(gp)], hp, gp)
    proc = bench.start(server, work)
    try:
        check_same_forecast(hp, files, card)
        runs: dict[tuple[str, int], list[dict]] = {}
        for rnd in range(args.rounds):
            for c in (int(x) for x in args.concurrency.split(",")):
                for name, path in ENDPOINTS.items():
                    r = bench.run_wrk(wrk, f"http://127.0.0.1:{hp}{path}", files[name], "application/json", None, c,
                                      args.duration, args.warmup)
                    if r["errors"]:
                        raise RuntimeError(f"{name} c={c}: {r['errors']} errors (see {proc.log_path})")
                    runs.setdefault((name, c), []).append(r)
                    bench.log(f"round {rnd + 1} {name} c={c}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.2f} ms, "
                              f"p99 {r['p99_ms']:.2f} ms")
    finally:
        bench.stop(proc)
    rows = {key: {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_ms", "p99_ms")}
            for key, rs in runs.items()}
    print(f"| endpoint (1 series, W={card['window']}, H={card['horizon']}) | c | req/s | p50 ms | p99 ms |"
          " req/s vs v2 | p50 vs v2 |")
    print("|---|---|---|---|---|---|---|")
    for (name, c), row in rows.items():
        base = rows[("v2 JSON", c)]
        print(f"| {name} | {c} | {row['rps']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
              f"{row['rps'] / base['rps']:.2f} | {row['p50_ms'] / base['p50_ms']:.2f} |")
    print(json.dumps({"rounds": args.rounds, "duration_s": args.duration,
                      "rows": [{"endpoint": n, "concurrency": c, **row} for (n, c), row in rows.items()]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Soak (issue 21 item 5): `python -m predictor --workers 2` under a steady closed-loop load, REST and gRPC
mixed, for a long time: every request must succeed and no process's resident memory may keep growing.

    .venv/bin/python benchmarks/soak.py                       # 10 minutes at concurrency 64 (32 REST, 32 gRPC)
    .venv/bin/python benchmarks/soak.py --seconds 60 --warmup 20   # the short version tests/test_soak.py runs

RSS of every server process (the parent and each worker) is sampled every --sample seconds. Growth is
measured from the mean of the first three samples after --warmup to the mean of the last three, per
process; the run passes with 0 errors and every process's growth under --max_growth (10%). Prints a
JSON summary (and writes it to --json); exits 1 if it fails.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402


async def sample_rss(pids: list[int], until: float, every: float, samples: list) -> None:
    while time.monotonic() < until:
        samples.append((time.monotonic(), loadgen.rss_bytes(pids)))
        await asyncio.sleep(every)


async def soak(args, server: loadgen.Server, window: int) -> tuple[loadgen.Outcomes, list, list[int]]:
    pids = server.pids()
    outcomes, samples = loadgen.Outcomes(), []
    until = time.monotonic() + args.seconds
    rest = args.concurrency // 2
    await asyncio.gather(
        loadgen.closed_loop(outcomes, until, rest, args.concurrency - rest, server.http_port, server.grpc_port,
                            window, args.series),
        sample_rss(pids, until, args.sample, samples))
    return outcomes, samples, pids


def growth(samples: list, started: float, warmup: float, pids: list[int]) -> dict:
    after = [rss for t, rss in samples if t - started >= warmup]
    if len(after) < 6:
        raise SystemExit(f"only {len(after)} RSS samples after the warm-up: run longer or sample more often")
    out = {}
    for pid in pids:
        first = np.mean([s[pid] for s in after[:3] if pid in s])
        last = np.mean([s[pid] for s in after[-3:] if pid in s])
        peak = max(rss.get(pid, 0) for _, rss in samples)
        out[str(pid)] = {"rss_after_warmup_mb": round(first / 2**20, 1), "rss_end_mb": round(last / 2**20, 1),
                         "rss_peak_mb": round(peak / 2**20, 1), "growth": round(float(last / first - 1), 4)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--warmup", type=float, default=60, help="seconds before RSS growth is measured")
    parser.add_argument("--concurrency", type=int, default=64, help="clients, half REST and half gRPC")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--series", type=int, default=4, help="series per request")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--max_growth", type=float, default=0.10)
    parser.add_argument("--model_dir", type=Path)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="perf-predictor-soak-"))
    model_dir = loadgen.ensure_model(args.model_dir, work)
    server = loadgen.Server.start(model_dir, work / "server.log", "--workers", str(args.workers))
    try:
        server.wait_ready(args.workers)
        load_before = loadgen.load_average()
        started = time.monotonic()
        outcomes, samples, pids = asyncio.run(soak(args, server, loadgen.window_of(model_dir)))
        load_after = loadgen.load_average()
        sent, seconds, status, protocol = outcomes.arrays()
        still_ready = True
        try:
            server.wait_ready(timeout=10)
        except RuntimeError:
            still_ready = False
    finally:
        exit_code = server.stop()
    per_process = growth(samples, started, args.warmup, pids)
    errors = int((status != 200).sum())
    summary = {
        "seconds": args.seconds, "concurrency": args.concurrency, "workers": args.workers, "series": args.series,
        "requests": len(status), "rest": int((protocol == "rest").sum()), "grpc": int((protocol == "grpc").sum()),
        "errors": errors, "first_errors": outcomes.errors[:5],
        "throughput_rps": round(len(status) / args.seconds, 1),
        "p50_ms": loadgen.percentile_ms(seconds, 50), "p99_ms": loadgen.percentile_ms(seconds, 99),
        "rss": per_process, "max_growth": max(p["growth"] for p in per_process.values()),
        "load_average_before": load_before, "load_average_after": load_after,
        "still_ready": still_ready, "exit_code_on_sigterm": exit_code,
    }
    summary["passed"] = bool(errors == 0 and summary["max_growth"] < args.max_growth and still_ready
                             and exit_code == 0)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

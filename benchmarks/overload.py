"""Overload (issue 21 item 4): REST offered at 4x the capacity measured in the same run, against one
process with its default bound (--max_requests_held 64, predictor/admission.py).

    .venv/bin/python benchmarks/overload.py                  # ~1.5 minutes
    .venv/bin/python benchmarks/overload.py --factor 4 --seconds 20 --series 16 --server_flags="--max_requests_held 64"

Phases, one server, one run:
1. light: 1 closed-loop client (the latency of a server with nothing else to do);
2. capacity: as many closed-loop clients as the bound (in flight never passes it, so nothing is refused):
   its throughput is the capacity, its latency the latency at capacity;
3. overload: an open loop at --factor x capacity (requests sent on schedule, whatever the replies), over
   up to --connections keep-alive connections. Accepted requests' p99 is compared with phases 1 and 2;
   refused ones (503) must come back in under 5 ms; RSS of the server is sampled throughout.
The server must still be ready afterwards and exit 0 on SIGTERM. Prints a JSON summary (--json too).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402


async def open_loop(outcomes: loadgen.Outcomes, rate: float, seconds: float, port: int, request: bytes,
                    max_connections: int) -> int:
    """Sends `rate` requests a second for `seconds`, each on an idle connection (a new one while fewer
    than `max_connections` are open); the number not sent because all were busy."""
    idle: list[loadgen.RestConnection] = []
    opened, sent, not_sent = 0, 0, 0
    pending: set[asyncio.Task] = set()

    async def one(conn: loadgen.RestConnection) -> None:
        status, _ = await loadgen.timed(outcomes, "rest", lambda: conn.call(request))
        if status == 0:
            conn.close()
        idle.append(conn)

    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        for _ in range(int(elapsed * rate) - sent):
            sent += 1
            if idle:
                conn = idle.pop()
            elif opened < max_connections:
                conn, opened = loadgen.RestConnection(port), opened + 1
            else:
                not_sent += 1
                continue
            task = asyncio.get_running_loop().create_task(one(conn))
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.sleep(0.001)
    await asyncio.gather(*pending)
    for conn in idle:
        conn.close()
    return not_sent


async def sample_rss(pids: list[int], done: asyncio.Event, samples: list) -> None:
    while not done.is_set():
        samples.append(sum(loadgen.rss_bytes(pids).values()))
        await asyncio.sleep(0.5)


def closed(server: loadgen.Server, clients: int, seconds: float, window: int, series: int) -> loadgen.Outcomes:
    outcomes = loadgen.Outcomes()
    asyncio.run(loadgen.closed_loop(outcomes, time.monotonic() + seconds, clients, 0, server.http_port, 0, window,
                                    series))
    return outcomes


async def overload_phase(server, rate, seconds, window, series, max_connections):
    outcomes, samples, done = loadgen.Outcomes(), [], asyncio.Event()
    sampler = asyncio.get_running_loop().create_task(sample_rss(server.pids(), done, samples))
    not_sent = await open_loop(outcomes, rate, seconds, server.http_port, loadgen.rest_request(window, series),
                               max_connections)
    done.set()
    await sampler
    return outcomes, samples, not_sent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factor", type=float, default=4.0, help="offered load, as a multiple of capacity")
    parser.add_argument("--seconds", type=float, default=20, help="length of the capacity and overload phases")
    parser.add_argument("--series", type=int, default=16, help="series per request")
    parser.add_argument("--bound", type=int, default=64, help="the server's --max_requests_held (its default)")
    parser.add_argument("--connections", type=int, default=512, help="most connections the open loop opens")
    parser.add_argument("--server_flags", default="", help="more flags for python -m predictor")
    parser.add_argument("--model_dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="perf-predictor-overload-"))
    model_dir = loadgen.ensure_model(args.model_dir, work)
    window = loadgen.window_of(model_dir)
    server = loadgen.Server.start(model_dir, work / "server.log", "--max_requests_held", str(args.bound),
                                  *shlex.split(args.server_flags))
    try:
        server.wait_ready()
        load_before = loadgen.load_average()
        closed(server, 4, 3, window, args.series)  # warm-up
        rss_before = sum(loadgen.rss_bytes(server.pids()).values())
        light = closed(server, 1, min(10.0, args.seconds), window, args.series)
        at_capacity = closed(server, args.bound, args.seconds, window, args.series)
        _, light_s, light_status, _ = light.arrays()
        _, cap_s, cap_status, _ = at_capacity.arrays()
        capacity = len(cap_s) / args.seconds
        offered = args.factor * capacity
        outcomes, rss, not_sent = asyncio.run(overload_phase(server, offered, args.seconds, window, args.series,
                                                             args.connections))
        _, seconds, status, _ = outcomes.arrays()
        still_ready = True
        try:
            server.wait_ready(timeout=10)
        except RuntimeError:
            still_ready = False
        load_after = loadgen.load_average()
    finally:
        exit_code = server.stop()
    accepted, refused = seconds[status == 200], seconds[status == 503]
    other = int(((status != 200) & (status != 503)).sum())
    p99_light, p99_cap = loadgen.percentile_ms(light_s, 99), loadgen.percentile_ms(cap_s, 99)
    p99_accepted = loadgen.percentile_ms(accepted, 99)
    summary = {
        "series_per_request": args.series, "bound": args.bound, "factor": args.factor,
        "light": {"requests": len(light_s), "p50_ms": loadgen.percentile_ms(light_s, 50), "p99_ms": p99_light,
                  "errors": int((light_status != 200).sum())},
        "capacity": {"clients": args.bound, "rps": round(capacity, 1), "p50_ms": loadgen.percentile_ms(cap_s, 50),
                     "p99_ms": p99_cap, "errors": int((cap_status != 200).sum())},
        "overload": {
            "offered_rps": round(offered, 1), "sent": len(status), "not_sent_all_connections_busy": not_sent,
            "accepted": len(accepted), "accepted_rps": round(len(accepted) / args.seconds, 1),
            "accepted_p50_ms": loadgen.percentile_ms(accepted, 50), "accepted_p99_ms": p99_accepted,
            "refused": len(refused), "refused_p50_ms": loadgen.percentile_ms(refused, 50),
            "refused_p99_ms": loadgen.percentile_ms(refused, 99),
            "refused_max_ms": round(float(refused.max()) * 1000, 2) if len(refused) else None,
            "other_outcomes": other, "first_errors": outcomes.errors[:5],
        },
        "accepted_p99_over_capacity_p99": round(p99_accepted / p99_cap, 2),
        "accepted_p99_over_light_p99": round(p99_accepted / p99_light, 2),
        "rss_mb": {"before": round(rss_before / 2**20, 1), "peak_under_overload": round(max(rss) / 2**20, 1)},
        "still_ready": still_ready, "exit_code_on_sigterm": exit_code,
        "load_average_before": load_before, "load_average_after": load_after,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

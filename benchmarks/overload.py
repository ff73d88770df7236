"""Overload (issue 21 item 4): REST and gRPC offered at 4x the capacity measured in the same run, against one
process with its default bound (--max_requests_held 64, predictor/admission.py).

    .venv/bin/python benchmarks/overload.py                  # ~2 minutes
    .venv/bin/python benchmarks/overload.py --factor 4 --seconds 20 --series 16 --server_flags="--max_requests_held 64"

Load from C clients with a per-request log: h2load for REST (HTTP/1.1 keep-alive) and h2grpc.c for gRPC
(the native front; the same semantics, with each call's grpc-status). Phases, one server, one run:
1. light: 1 closed-loop REST client (the latency of a server with nothing else to do);
2. capacity, REST then gRPC: as many closed-loop connections as the bound (in flight never passes it, so
   nothing is refused): its throughput is the capacity, its latency the latency at capacity;
3. overload, REST then gRPC: --factor x that protocol's capacity offered by --connections connections,
   each at its share of the rate and waiting for its reply before its next request (open loop, so a
   refusal's latency is the server's, not a client queue's). Accepted requests' p99 is compared with the
   capacity phase's; refused ones (503, UNAVAILABLE) must come back in under 5 ms; RSS is sampled.
The capacity phases come first: after an overload the bound may still be lowered (admission.py), and
closed-loop clients that retry at once would be measuring that. The server must still be ready
afterwards and exit 0 on SIGTERM. Prints a JSON summary (--json too).
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import h2grpc  # noqa: E402
import loadgen  # noqa: E402


@dataclass
class Requests:
    """Every request of one phase: its status, its latency (s), when it started (s after the first did), and
    the seconds from the first start to the last end (h2load and h2grpc run until they have sent their
    count, which may take longer than asked when replies are slow)."""

    status: np.ndarray
    seconds: np.ndarray
    started: np.ndarray
    span: float

    @classmethod
    def of(cls, start: np.ndarray, status: np.ndarray, seconds: np.ndarray) -> Requests:
        """From each request's start (any clock, seconds), status and latency (seconds)."""
        started = start - start.min()
        return cls(status, seconds, started, float((started + seconds).max()))


def h2load(server: loadgen.Server, body: Path, work: Path, name: str, clients: int, seconds: float,
           rps_per_client: float | None = None) -> Requests:
    """HTTP/1.1 keep-alive load from h2load (C, so the load generator does not take the server's core):
    `clients` connections, one request in flight each, sent back to back or `rps_per_client` a second
    each. Every request, from h2load's per-request log."""
    log = work / f"{name}.tsv"
    log.unlink(missing_ok=True)  # h2load appends
    cmd = ["h2load", "--h1", "-c", str(clients), "-m", "1", "-t", "1", "-D", f"{seconds:g}", "-d", str(body),
           "-H", "content-type: application/json", "--log-file", str(log),
           f"http://127.0.0.1:{server.http_port}/v2/models/{loadgen.MODEL_NAME}/infer"]
    if rps_per_client:
        # open loop: h2load times each connection's requests from when it connects, so connections all
        # made at once send in lockstep (bursts of `clients` requests). Made a few each millisecond over
        # one request interval instead, their requests arrive spread out, as independent clients' do.
        per_ms = max(1, math.ceil(clients * rps_per_client / 1000))
        at = cmd.index("-D")
        cmd[at:at + 2] = ["--rps", f"{rps_per_client:g}", "-r", str(per_ms), "--rate-period", "1ms",
                          "-n", str(max(clients, round(clients * rps_per_client * seconds)))]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120)
    if run.returncode != 0 or not log.exists():
        raise RuntimeError(f"h2load failed: {run.stdout[-800:]} {run.stderr[-500:]}")
    rows = np.loadtxt(log, dtype=np.int64, ndmin=2)
    return Requests.of(rows[:, 0] / 1e6, rows[:, 1], rows[:, 2] / 1e6)


def grpc_load(binary: Path, server: loadgen.Server, body: Path, work: Path, name: str, connections: int,
              seconds: float, rps_per_connection: float = 0.0) -> Requests:
    """h2grpc's calls, as h2load() gives requests (status: grpc-status)."""
    calls = h2grpc.calls(binary, server.grpc_port, body, connections, rps_per_connection, seconds, work / f"{name}.tsv")
    return Requests.of(calls.start, calls.status, calls.seconds)


def outcome(phase: Requests, ok: int, refused: int, warm_up: float) -> dict:
    """Accepted (`ok`) and refused (`refused`) requests of an overload phase: rates and latencies, over the
    whole phase and over what started after its first `warm_up` seconds (connections being opened, and
    the requests admitted before the bound follows the loop's delay, admission.py)."""
    accepted, refusals = phase.status == ok, phase.status == refused
    later = phase.started >= warm_up
    return {"sent": len(phase.status), "sent_rps": round(len(phase.status) / phase.span, 1),
            "seconds": round(phase.span, 1), "accepted": int(accepted.sum()),
            "accepted_rps": round(accepted.sum() / phase.span, 1),
            "accepted_p50_ms": loadgen.percentile_ms(phase.seconds[accepted], 50),
            "accepted_p99_ms": loadgen.percentile_ms(phase.seconds[accepted], 99),
            "accepted_p99_after_warm_up_ms": loadgen.percentile_ms(phase.seconds[accepted & later], 99),
            "refused": int(refusals.sum()), "refused_p50_ms": loadgen.percentile_ms(phase.seconds[refusals], 50),
            "refused_p99_ms": loadgen.percentile_ms(phase.seconds[refusals], 99),
            "refused_p50_after_warm_up_ms": loadgen.percentile_ms(phase.seconds[refusals & later], 50),
            "refused_max_ms": round(float(phase.seconds[refusals].max()) * 1000, 2) if refusals.any() else None,
            "other_outcomes": int((~accepted & ~refusals).sum())}


def settle() -> None:
    """Between phases: the requests the last phase's clients left in the server when they stopped are
    answered, and the bound is the full one again (admission.py), before the next phase starts."""
    time.sleep(2)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the server's processes (every thread) so far."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def held_bound(server: loadgen.Server) -> float | None:
    """The bound the server has now (perf_predictor_requests_held_bound, from /metrics; never refused)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=5) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith("perf_predictor_requests_held_bound{"):
                    return float(line.rsplit(" ", 1)[1])
    except OSError:
        pass
    return None


def sample(server: loadgen.Server, done: threading.Event, rss: list, bounds: list) -> None:
    """Every half second: the server's RSS, and its bound with the time it was read."""
    pids = server.pids()
    while not done.is_set():
        rss.append(sum(loadgen.rss_bytes(pids).values()))
        bounds.append((time.monotonic(), held_bound(server)))
        time.sleep(0.5)


def bound_during(bounds: list, start: float, end: float) -> dict:
    seen = [b for t, b in bounds if start <= t <= end and b is not None]
    return {"min": min(seen), "median": float(np.median(seen)), "max": max(seen)} if seen else {}


def pin(server_pids: list[int]) -> None:
    """Every thread of the server (its predict threads included, started later from pinned threads) on CPU 0;
    this process, and the h2load and gRPC callers it starts from now on, on the others."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs at least 2 CPUs")
    for pid in server_pids:
        for task in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(task), {cpus[0]})
    for task in os.listdir(f"/proc/{os.getpid()}/task"):
        os.sched_setaffinity(int(task), set(cpus[1:]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factor", type=float, default=4.0, help="offered load, as a multiple of capacity")
    parser.add_argument("--seconds", type=float, default=20, help="length of the capacity and overload phases")
    parser.add_argument("--series", type=int, default=16, help="series per request")
    parser.add_argument("--bound", type=int, default=64, help="the server's --max_requests_held (its default)")
    parser.add_argument("--connections", type=int, default=256,
                        help="connections of the overload phase, each sending at its share of the offered rate")
    parser.add_argument("--grpc_seconds", type=float, default=15,
                        help="length of each gRPC phase (0: none; needs a C compiler and libnghttp2.so.14)")
    parser.add_argument("--warm_up", type=float, default=1.0,
                        help="seconds at the start of each overload phase also reported apart (connections opening, "
                             "the bound adapting)")
    parser.add_argument("--server_flags", default="", help="more flags for python -m predictor")
    parser.add_argument("--model_dir", type=Path)
    parser.add_argument("--pin", action="store_true",
                        help="the server's threads on CPU 0, this script and its load generators on the other CPUs, "
                             "so every phase measures a server with one whole core")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    if shutil.which("h2load") is None:
        raise SystemExit("needs h2load (Debian nghttp2-client)")
    work = Path(tempfile.mkdtemp(prefix="perf-predictor-overload-"))
    model_dir = loadgen.ensure_model(args.model_dir, work)
    body = work / "request.json"
    body.write_bytes(loadgen.rest_request(loadgen.window_of(model_dir), args.series).split(b"\r\n\r\n", 1)[1])
    server = loadgen.Server.start(model_dir, work / "server.log", "--max_requests_held", str(args.bound),
                                  *shlex.split(args.server_flags))
    try:
        server.wait_ready()
        if args.pin:
            pin(server.pids())
        load_before = loadgen.load_average()
        grpc_on = args.grpc_seconds > 0
        if grpc_on:
            binary = h2grpc.build(work)
            grpc_body = h2grpc.write_body(work / "request.grpc", loadgen.window_of(model_dir), args.series)
        h2load(server, body, work, "warm-up", 4, 3)
        rss_before = sum(loadgen.rss_bytes(server.pids()).values())
        light = h2load(server, body, work, "light", 1, min(10.0, args.seconds))
        cap = h2load(server, body, work, "capacity", args.bound, args.seconds)
        capacity = len(cap.status) / cap.span
        if grpc_on:
            settle()
            g_cap = grpc_load(binary, server, grpc_body, work, "grpc-capacity", args.bound, args.grpc_seconds)
            g_capacity = len(g_cap.status) / g_cap.span
        rss, bounds, done = [], [], threading.Event()
        sampler = threading.Thread(target=sample, args=(server, done, rss, bounds))
        sampler.start()
        try:
            # where the machine's cores went during the overload phase: the server, and h2load (a child)
            settle()
            server_cpu, children = cpu_seconds(server.pids()), resource.getrusage(resource.RUSAGE_CHILDREN)
            rest_start = time.monotonic()
            overload = h2load(server, body, work, "overload", args.connections, args.seconds,
                              args.factor * capacity / args.connections)
            rest_end = time.monotonic()
            wall = rest_end - rest_start
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cores = {"server": round((cpu_seconds(server.pids()) - server_cpu) / wall, 2),
                     "h2load": round((after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime) / wall, 2),
                     "machine": os.cpu_count()}
            rss_rest = max(rss)
            grpc = {}
            if grpc_on:
                settle()
                grpc_start = time.monotonic()
                g_over = grpc_load(binary, server, grpc_body, work, "grpc-overload", args.connections,
                                   args.grpc_seconds, args.factor * g_capacity / args.connections)
                p99 = loadgen.percentile_ms(g_cap.seconds, 99)
                grpc = {
                    "capacity": {"connections": args.bound, "rps": round(g_capacity, 1),
                                 "p50_ms": loadgen.percentile_ms(g_cap.seconds, 50), "p99_ms": p99,
                                 "errors": int((g_cap.status != 0).sum())},
                    "overload": {"offered_rps": round(args.factor * g_capacity, 1), "connections": args.connections,
                                 **outcome(g_over, ok=0, refused=14, warm_up=args.warm_up),
                                 "bound": bound_during(bounds, grpc_start, time.monotonic())},
                }
                grpc["accepted_p99_over_capacity_p99"] = round(grpc["overload"]["accepted_p99_ms"] / p99, 2)
                grpc["after_warm_up_over_capacity_p99"] = round(
                    grpc["overload"]["accepted_p99_after_warm_up_ms"] / p99, 2)
        finally:
            done.set()
            sampler.join()
        still_ready = True
        try:
            server.wait_ready(timeout=10)
        except RuntimeError:
            still_ready = False
        load_after = loadgen.load_average()
    finally:
        exit_code = server.stop()
    p99_light, p99_cap = loadgen.percentile_ms(light.seconds, 99), loadgen.percentile_ms(cap.seconds, 99)
    rest = outcome(overload, ok=200, refused=503, warm_up=args.warm_up)
    summary = {
        "series_per_request": args.series, "bound": args.bound, "factor": args.factor, "pinned": args.pin,
        "server_flags": args.server_flags, "git": loadgen.git_commit(),
        "light": {"requests": len(light.status), "p50_ms": loadgen.percentile_ms(light.seconds, 50),
                  "p99_ms": p99_light, "errors": int((light.status != 200).sum())},
        "capacity": {"clients": args.bound, "rps": round(capacity, 1),
                     "p50_ms": loadgen.percentile_ms(cap.seconds, 50), "p99_ms": p99_cap,
                     "errors": int((cap.status != 200).sum())},
        "overload": {"offered_rps": round(args.factor * capacity, 1), "connections": args.connections, **rest,
                     "cpu_cores_used": cores, "bound": bound_during(bounds, rest_start, rest_end)},
        "accepted_p99_over_capacity_p99": round(rest["accepted_p99_ms"] / p99_cap, 2),
        "after_warm_up_over_capacity_p99": round(rest["accepted_p99_after_warm_up_ms"] / p99_cap, 2),
        "accepted_p99_over_light_p99": round(rest["accepted_p99_ms"] / p99_light, 2),
        "grpc": grpc,
        "rss_mb": {"before": round(rss_before / 2**20, 1), "peak_under_rest_overload": round(rss_rest / 2**20, 1),
                   "peak_to_the_end": round(max(rss) / 2**20, 1)},
        "still_ready": still_ready, "exit_code_on_sigterm": exit_code,
        "load_average_before": load_before, "load_average_after": load_after,
        "what": "Overload", "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    loadgen.publish(summary, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

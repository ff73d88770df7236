"""What a refusal for overload costs the server: its CPU time per refused request, REST and gRPC.

    .venv/bin/python benchmarks/refusal_cost.py                 # ~1 minute
    .venv/bin/python benchmarks/refusal_cost.py --rate 4096 --seconds 12 --json .cache/limits/refusal-cost.json

One process with one place (--max_requests_held 1), taken for the whole run by a REST request that
announces a large body and sends it a byte a second, so every other inference request is refused.
The server is pinned to CPU 0; h2load (REST, keep-alive) and then h2grpc (gRPC) offer --rate requests
a second on --connections connections from the other CPUs, with the overload benchmark's request
(16 series). The figure is the server's CPU time over each phase (every thread, from /proc) divided
by the requests refused in it. The rate is below what the process can refuse, so each read is
mostly one request; at saturation reads batch up and a refusal costs less (benchmarks/overload.py).
"""
from __future__ import annotations

import argparse
import shlex
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import h2grpc  # noqa: E402
import loadgen  # noqa: E402
import overload  # noqa: E402

UNAVAILABLE = 14  # grpc-status
HELD_BODY = 8 << 20  # announced; large enough that the place is taken as the body starts (predictor/offload.py)


def hold_the_place(server: loadgen.Server, stop: threading.Event) -> threading.Thread:
    """A request that holds the server's one place until `stop`: its body, a byte a second."""
    sock = socket.create_connection(("127.0.0.1", server.http_port))
    sock.sendall(f"POST /v2/models/{loadgen.MODEL_NAME}/infer HTTP/1.1\r\nhost: localhost\r\n"
                 f"content-type: application/json\r\ncontent-length: {HELD_BODY}\r\n\r\n{{".encode())

    def trickle() -> None:
        with sock:
            while not stop.wait(1.0):
                sock.sendall(b" ")

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    return thread


def phase(server: loadgen.Server, run, refused_status: int) -> dict:
    before = overload.cpu_seconds(server.pids())
    requests = run()
    cpu = overload.cpu_seconds(server.pids()) - before
    refused = int((requests.status == refused_status).sum())
    return {"offered_rps": round(len(requests.status) / requests.span, 1), "requests": len(requests.status),
            "refused": refused, "other_outcomes": len(requests.status) - refused, "server_cpu_seconds": round(cpu, 2),
            "us_per_refusal": round(1e6 * cpu / refused, 1) if refused else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=4096, help="requests a second offered, each protocol")
    parser.add_argument("--seconds", type=float, default=12, help="length of each protocol's phase")
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--series", type=int, default=16, help="series per request")
    parser.add_argument("--server_flags", default="", help="more flags for python -m predictor")
    parser.add_argument("--model_dir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="perf-predictor-refusal-cost-"))
    model_dir = loadgen.ensure_model(args.model_dir, work)
    window = loadgen.window_of(model_dir)
    body = work / "request.json"
    body.write_bytes(loadgen.rest_request(window, args.series).split(b"\r\n\r\n", 1)[1])
    grpc_body = h2grpc.write_body(work / "request.grpc", window, args.series)
    binary = h2grpc.build(work)
    server = loadgen.Server.start(model_dir, work / "server.log", "--max_requests_held", "1",
                                  *shlex.split(args.server_flags))
    stop, holder = threading.Event(), None
    per_connection = args.rate / args.connections
    try:
        server.wait_ready()
        overload.pin(server.pids())
        load_before = loadgen.load_average()
        holder = hold_the_place(server, stop)
        time.sleep(1)  # its headers read and its place taken
        rest = phase(server, lambda: overload.h2load(server, body, work, "rest", args.connections, args.seconds,
                                                     per_connection), 503)
        grpc = phase(server, lambda: overload.grpc_load(binary, server, grpc_body, work, "grpc", args.connections,
                                                        args.seconds, per_connection), UNAVAILABLE)
    finally:
        stop.set()  # the held request's connection closes before the server is asked to stop
        if holder is not None:
            holder.join(timeout=5)
        exit_code = server.stop()
    summary = {"what": "Refusal cost", "series_per_request": args.series, "connections": args.connections,
               "server_flags": args.server_flags, "rest": rest, "grpc": grpc, "exit_code_on_sigterm": exit_code,
               "git": loadgen.git_commit(), "load_average_before": load_before,
               "load_average_after": loadgen.load_average(),
               "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    loadgen.publish(summary, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())

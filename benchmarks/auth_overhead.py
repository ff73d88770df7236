"""What bearer-token authentication costs: the same single-series call, REST (wrk, v2 JSON) and gRPC
(h2load), against servers started alternately with authentication off and on, and optionally a
baseline checkout (the code before authentication existed).

    python benchmarks/auth_overhead.py --model_dir DIR [--baseline SRC_DIR] [--rounds 3] [--duration 10]
    python benchmarks/auth_overhead.py --micro      # the gate's own CPU time per call, in this process

Rounds interleave the servers (off, on[, baseline], off, on, ...) so the shared machine's drift falls
on all of them; the median over rounds is printed as one JSON line per server and protocol. Each
server runs alone, one process, OMP_NUM_THREADS=1; the token file holds two tokens and calls send the
second (every token is compared anyway).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
import run  # noqa: E402 (benchmarks/run.py: the wrk and h2load drivers)

TOKENS = ("tok-first-" + "a" * 32, "tok-second-" + "b" * 32)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, src: Path, model_dir: Path, extra: list[str], log: Path):
        self.name, self.model_name = name, "perf-predictor"
        self.http_port, self.grpc_port = free_port(), free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(src)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "predictor", "--model_dir", str(model_dir), "--http_port", str(self.http_port),
             "--grpc_port", str(self.grpc_port), *extra], cwd=src, env=env, stdout=log.open("w"),
            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.process.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/models/perf-predictor/ready",
                                            timeout=2):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"{name} not ready:\n{log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def micro(calls: int = 200_000) -> None:
    """Microseconds per call of what a REST call and a gRPC call pass through (predictor/auth.py), off
    and on; the whole call costs hundreds (benchmarks/README.md). Best of 5, one core."""
    import timeit

    from predictor import auth

    work = Path(tempfile.mkdtemp(prefix="auth-micro-"))
    token_file = work / "tokens"
    token_file.write_text("".join(t + "\n" for t in TOKENS))
    good = [(b"content-type", b"application/json"), (b"authorization", f"Bearer {TOKENS[1]}".encode())]
    scope = {"type": "http", "method": "POST", "path": "/v2/models/perf-predictor/infer", "headers": good}
    path, value = b"/inference.GRPCInferenceService/ModelInfer", [f"Bearer {TOKENS[1]}".encode()]
    gates = {"off": auth.Gate(auth.Policy()), "on": auth.Gate(auth.Policy(str(token_file)))}
    for name, gate in gates.items():
        rest = min(timeit.repeat(lambda g=gate: g.rest_refusal(scope), number=calls, repeat=5)) / calls * 1e6
        grpc = (min(timeit.repeat(lambda g=gate: g.grpc_refusal(path, value), number=calls, repeat=5)) / calls * 1e6
                if gate.tokens is not None else 0.0)  # off: the native server holds no gate at all
        print(json.dumps({"auth": name, "rest_gate_us": round(rest, 3), "grpc_gate_us": round(grpc, 3)}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--micro", action="store_true", help="only the gate's CPU time per call")
    p.add_argument("--model_dir", type=Path)
    p.add_argument("--baseline", type=Path, help="a source tree to compare (e.g. `git worktree add` of main), auth off")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=10)
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args()
    if args.micro:
        micro()
        return 0
    if args.model_dir is None:
        p.error("--model_dir is needed for the load measurement")
    work = Path(tempfile.mkdtemp(prefix="auth-overhead-"))
    token_file = work / "tokens"
    token_file.write_text("".join(t + "\n" for t in TOKENS))
    header = f"authorization: Bearer {TOKENS[1]}"
    card = json.loads((args.model_dir / "model-card.json").read_text())
    window = int(card["window"])
    history = (100 + 10 * np.sin(np.arange(window) / 12)).astype(np.float32)[None, :]
    npy = work / "single.npy"
    np.save(npy, history)
    body = work / "single.json"
    body.write_text(json.dumps({"inputs": [{"name": "history", "datatype": "FP32", "shape": list(history.shape),
                                            "data": history.ravel().tolist()}]}))
    servers = [("off", REPO, []), ("on", REPO, ["--auth_token_file", str(token_file)])]
    if args.baseline:
        servers.append(("baseline", args.baseline.resolve(), []))
    results: dict[tuple[str, str], list[dict]] = {}
    reply_bytes = None  # of one answered call, from the first server (auth off): h2load counts replies by bytes
    for _ in range(args.rounds):
        for name, src, extra in servers:
            server = Server(name, src, args.model_dir, extra, work / f"{name}.log")
            try:
                if reply_bytes is None:
                    verify = subprocess.run([sys.executable, str(BENCH / "grpc_load.py"), "--target",
                                             f"127.0.0.1:{server.grpc_port}", "--model", server.model_name,
                                             "--input", str(npy), "--verify"], capture_output=True, text=True,
                                            check=True, timeout=300)
                    reply_bytes = json.loads(verify.stdout.strip().splitlines()[-1])["reply_bytes"]
                sent = header if name == "on" else None
                rest = run.run_wrk(tool_sending("wrk", sent, work),
                                   f"http://127.0.0.1:{server.http_port}/v2/models/perf-predictor/infer", body,
                                   "application/json", None, args.concurrency, args.duration, 3)
                grpc = run.run_h2load(tool_sending("h2load", sent, work), server, npy, reply_bytes,
                                      args.concurrency, args.duration, 3, work)
            finally:
                server.stop()
            results.setdefault((name, "rest"), []).append(rest)
            results.setdefault((name, "grpc"), []).append(grpc)
    for (name, protocol), runs in results.items():
        print(json.dumps({"server": name, "protocol": protocol, "concurrency": args.concurrency,
                          "rps_median": round(statistics.median(r["rps"] for r in runs), 1),
                          "rps_each": [round(r["rps"], 1) for r in runs],
                          "p50_ms_median": round(statistics.median(r["p50_ms"] for r in runs), 3),
                          "errors": sum(r["errors"] for r in runs)}))
    return 0


def tool_sending(tool: str, header: str | None, work: Path) -> str:
    """`tool` (wrk or h2load, for benchmarks/run.py's drivers), or a wrapper that adds `-H header`."""
    if header is None:
        return tool
    wrapper = work / f"{tool}-with-token"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which(tool)} -H {shlex.quote(header)} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


if __name__ == "__main__":
    sys.exit(main())

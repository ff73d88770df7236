"""How many requests/s the serving stacks themselves allow on this machine, with no model at all.

    .venv/bin/python benchmarks/framework_ceiling.py [--duration 5]

Starts, one at a time, a uvicorn ASGI app, a grpc.aio server (both on uvloop, as perf-predictor runs),
and perf-predictor's native gRPC server (predictor/grpc_server.py: libnghttp2 in the process; skipped
where predictor._h2 is not built), whose handlers return a fixed 240-byte reply, and loads them as
`make bench` loads the real servers: wrk for REST, h2load for gRPC, single-series request bodies,
concurrency 1 and 16. The gaps between the rows are the per-call costs of the frameworks, the part of
"gRPC at least as fast as REST JSON" no model or codec work can close for small requests.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

REPLY = b"x" * 240


async def asgi_app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    body, content_type = REPLY, b"application/json"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def serve_grpc(port: int) -> None:
    import grpc
    import uvloop

    async def handler(_request: bytes, _context) -> bytes:
        return REPLY

    async def main() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "inference.GRPCInferenceService", {"ModelInfer": grpc.unary_unary_rpc_method_handler(handler)}),))
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    uvloop.run(main())


def native_available() -> bool:
    return importlib.util.find_spec("predictor._h2") is not None


def serve_native(port: int) -> None:
    import uvloop

    from predictor import grpc_server
    from predictor.grpc_infer import Reply, framed

    class FixedReply(grpc_server.NativeGRPCServer):
        def call(self, connection: grpc_server.Connection, stream_id: int, stream: grpc_server.Stream) -> None:
            connection.reply(stream_id, Reply(0, "", framed(REPLY)))  # the front's own work only

    uvloop.run(FixedReply(port).start())


def serve_asgi(port: int) -> None:
    import uvicorn

    uvicorn.run(asgi_app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning",
                access_log=False)


def wait_port(port: int, timeout: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listening on {port}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--serve", choices=["grpc", "asgi", "native"], help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        {"grpc": serve_grpc, "asgi": serve_asgi, "native": serve_native}[args.serve](args.port)
        return 0
    sys.path.insert(0, str(BENCH))
    import run

    wrk, h2load = shutil.which("wrk"), shutil.which("h2load")
    if not (wrk and h2load):
        sys.exit("needs wrk and h2load (apt-get install wrk nghttp2-client)")
    work = Path(tempfile.mkdtemp(prefix="ceiling-"))
    history = run.workload(336, 1, seed=1001)
    files = run.write_bodies(work, history)
    port = run.free_port()
    print("| stack | load | c=1 req/s | c=16 req/s |\n|---|---|---:|---:|")
    grpc_load = "h2load, gRPC ModelInfer body"
    stacks = {  # stack: (name, load, server command)
        "asgi": ("uvicorn + httptools, uvloop", "wrk, REST JSON body", [__file__, "--serve", "asgi"]),
        "grpc": ("grpc.aio, uvloop", grpc_load, [__file__, "--serve", "grpc"]),
        "native": ("native gRPC front: libnghttp2 in the process (predictor/_h2.c), uvloop", grpc_load,
                   [__file__, "--serve", "native"]),
    }
    for stack, (name, load, command) in stacks.items():
        if stack == "native" and not native_available():
            print(f"| {name} | skipped: predictor._h2 is not built (see setup.py) | – | – |")
            continue
        proc = subprocess.Popen([sys.executable, *command, "--port", str(port)],
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            wait_port(port)
            rates = []
            for c in (1, 16):
                if stack == "asgi":
                    r = run.run_wrk(wrk, f"http://127.0.0.1:{port}/", files["json"], "application/json", None, c,
                                    args.duration, 1)
                else:
                    server = run.Server("ceiling", "project", "ceiling", [], 0, port)
                    r = run.run_h2load(h2load, server, files["npy"], len(REPLY), c, args.duration, 1, work)
                rates.append(r["rps"])
            print(f"| {name} | {load} | {rates[0]:,.0f} | {rates[1]:,.0f} |")
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

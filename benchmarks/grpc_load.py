"""Separate-process gRPC load generator for `inference.GRPCInferenceService/ModelInfer`.

    python benchmarks/grpc_load.py --target 127.0.0.1:8081 --model perf-predictor --input FILE.npy \
        --concurrency 16 --duration 10 --warmup 3          # prints one JSON line
    python benchmarks/grpc_load.py ... --verify              # one request; prints the decoded outputs
    python benchmarks/grpc_load.py ... --frame FILE          # writes the request as a gRPC frame (for h2load)

The request (FP32 `history`, data in raw_input_contents) is serialized once; N asyncio tasks send
those bytes back to back without decoding the replies, so the client costs as little as Python
allows. Like wrk's connections, each task has its own channel (HTTP/2 connection) unless
`--connections` says fewer, so a server with several worker processes behind one port (SO_REUSEPORT)
sees its connections spread over them. It shares the machine with the server: its own CPU time is
reported (`client_cpu_s`).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time

import grpc
import numpy as np
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

METHOD = "/inference.GRPCInferenceService/ModelInfer"
OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]


def request_bytes(model: str, history: np.ndarray) -> bytes:
    history = np.ascontiguousarray(history, dtype="<f4")
    req = pb.ModelInferRequest(model_name=model)
    req.inputs.add(name="history", datatype="FP32", shape=list(history.shape))
    req.raw_input_contents.append(history.tobytes())
    return req.SerializeToString()


def decode(reply: bytes) -> dict:
    resp = pb.ModelInferResponse.FromString(reply)
    out = {}
    for i, o in enumerate(resp.outputs):
        if resp.raw_output_contents:
            data = np.frombuffer(resp.raw_output_contents[i], dtype="<f4")
        else:
            data = np.asarray(o.contents.fp32_contents, dtype=np.float32)
        out[o.name] = {"datatype": o.datatype, "shape": list(o.shape), "data": data.tolist()}
    return out


def percentile(sorted_ms: list[float], q: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[min(len(sorted_ms) - 1, max(0, int(np.ceil(q / 100 * len(sorted_ms))) - 1))]


async def load(target: str, body: bytes, concurrency: int, duration: float, warmup: float, timeout: float,
               connections: int) -> dict:
    # a private subchannel pool per channel: otherwise channels to one target share one connection
    channels = [grpc.aio.insecure_channel(target, options=OPTIONS + [("grpc.use_local_subchannel_pool", 1)])
                for _ in range(max(1, min(connections, concurrency)))]
    try:
        calls = [channel.unary_unary(METHOD) for channel in channels]  # bytes in, bytes out
        latencies: list[float] = []
        counts = {"ok": 0, "errors": 0}
        codes: dict[str, int] = {}
        phase = {"measuring": False}

        async def worker(deadline: float, call) -> None:
            while True:
                t0 = time.perf_counter()
                if t0 >= deadline:
                    return
                try:
                    await call(body, timeout=timeout)
                    ok = True
                except grpc.aio.AioRpcError as exc:
                    ok = False
                    if phase["measuring"]:
                        codes[exc.code().name] = codes.get(exc.code().name, 0) + 1
                if phase["measuring"]:
                    if ok:
                        counts["ok"] += 1
                        latencies.append((time.perf_counter() - t0) * 1000)
                    else:
                        counts["errors"] += 1

        if warmup > 0:
            end = time.perf_counter() + warmup
            await asyncio.gather(*(worker(end, calls[i % len(calls)]) for i in range(concurrency)))
        phase["measuring"] = True
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        await asyncio.gather(*(worker(start + duration, calls[i % len(calls)]) for i in range(concurrency)))
        elapsed = time.perf_counter() - start  # includes the calls still in flight at the deadline
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        for channel in channels:
            await channel.close()
    latencies.sort()
    return {"requests": counts["ok"] + counts["errors"], "ok": counts["ok"], "errors": counts["errors"],
            "error_codes": codes, "duration_s": elapsed, "rps": counts["ok"] / elapsed,
            "p50_ms": percentile(latencies, 50), "p90_ms": percentile(latencies, 90),
            "p99_ms": percentile(latencies, 99), "max_ms": latencies[-1] if latencies else float("nan"),
            "client_cpu_s": (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True, help=".npy file holding the [n, W] history")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--connections", type=int, help="channels (HTTP/2 connections); default: one per task")
    ap.add_argument("--verify", action="store_true")
    ap.add_argument("--frame", help="write the length-prefixed request message here and exit")
    args = ap.parse_args()
    body = request_bytes(args.model, np.load(args.input))
    if args.frame:
        with open(args.frame, "wb") as f:
            f.write(b"\x00" + len(body).to_bytes(4, "big") + body)  # uncompressed, 4-byte big-endian length
        return
    if args.verify:
        with grpc.insecure_channel(args.target, options=OPTIONS) as channel:
            try:
                reply = channel.unary_unary(METHOD)(body, timeout=args.timeout)
                print(json.dumps({"ok": True, "outputs": decode(reply), "reply_bytes": len(reply)}))
            except grpc.RpcError as exc:
                print(json.dumps({"ok": False, "code": exc.code().name, "details": exc.details()}))
        return
    print(json.dumps(asyncio.run(load(args.target, body, args.concurrency, args.duration, args.warmup,
                                      args.timeout, args.connections or args.concurrency))))


if __name__ == "__main__":
    main()

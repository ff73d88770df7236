"""What benchmarks/soak.py and benchmarks/overload.py share: a `python -m predictor` on free loopback
ports, the resident memory of each of its processes, and asyncio clients that record the outcome and
latency of every request: REST v2 JSON over raw HTTP/1.1 keep-alive connections, gRPC ModelInfer
through grpc.aio. The clients run in the benchmark's own process, apart from the server's."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
MODEL_NAME = "perf-predictor"


def git_commit() -> str:
    """The commit the benchmark ran, "+dirty" when tracked files differ from it."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return commit + ("+dirty" if dirty else "")


def publish(summary: dict, path: Path | None) -> None:
    """A benchmark's summary: printed as JSON, and written to `path` if given."""
    text = json.dumps(summary, indent=2)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_model(model_dir: Path | None, work: Path) -> Path:
    """The given model directory, or a quick one from the built-in synthetic workload (as the tests train)."""
    if model_dir is not None:
        return model_dir
    out = work / "model"
    if not (out / "model-card.json").exists():
        subprocess.run([sys.executable, "-m", "training", "--out", str(out), "--max-iter", "20", "--stride", "12"],
                       check=True, cwd=REPO, capture_output=True)
    return out


@dataclass
class Server:
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    log_path: Path

    @classmethod
    def start(cls, model_dir: Path, log_path: Path, *flags: str) -> Server:
        http_port, grpc_port = free_port(), free_port()
        log = log_path.open("w")
        process = subprocess.Popen([sys.executable, "-m", "predictor", "--model_dir", str(model_dir), "--http_port",
                                    str(http_port), "--grpc_port", str(grpc_port), *flags],
                                   cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        return cls(process, http_port, grpc_port, log_path)

    def wait_ready(self, workers: int = 1, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/models/{MODEL_NAME}/ready",
                                            timeout=2) as resp:
                    if resp.status == 200 and len(self.pids()) >= workers + (workers > 1):
                        socket.create_connection(("127.0.0.1", self.grpc_port), timeout=2).close()
                        time.sleep(2 if workers > 1 else 0)  # every worker's gRPC server up
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready after {timeout}s")

    def pids(self) -> list[int]:
        """The server and its worker processes (not KServe's multiprocessing resource tracker)."""
        children = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
                except OSError:
                    continue
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == self.process.pid and b"resource_tracker" not in cmdline:
                    children.append(int(entry))
        return [self.process.pid, *sorted(children)]

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def rss_bytes(pids: list[int]) -> dict[int, int]:
    """VmRSS of each process still alive."""
    out = {}
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    out[pid] = int(line.split()[1]) * 1024
        except OSError:
            pass
    return out


def histories(batch: int, length: int, seed: int = 0) -> np.ndarray:
    """Positive request-rate-like values; what they are does not change the work of a forecast."""
    return np.random.default_rng(seed).lognormal(5, 0.3, size=(batch, length)).astype(np.float32)


def window_of(model_dir: Path) -> int:
    return int(json.loads((model_dir / "model-card.json").read_text())["window"])


@dataclass
class Outcomes:
    """Every request: when it was sent (monotonic), how long it took, and its outcome: an HTTP status,
    200 for a gRPC OK, 503 for UNAVAILABLE, or 0 when the connection failed."""

    sent: list = field(default_factory=list)
    seconds: list = field(default_factory=list)
    status: list = field(default_factory=list)
    protocol: list = field(default_factory=list)
    errors: list = field(default_factory=list)  # the first few failures, as text

    def add(self, sent: float, seconds: float, status: int, protocol: str, error: str = "") -> None:
        self.sent.append(sent)
        self.seconds.append(seconds)
        self.status.append(status)
        self.protocol.append(protocol)
        if error and len(self.errors) < 20:
            self.errors.append(error)

    def arrays(self):
        return np.array(self.sent), np.array(self.seconds), np.array(self.status), np.array(self.protocol)


def rest_request(window: int, series: int) -> bytes:
    data = histories(series, window)
    body = json.dumps({"inputs": [{"name": "history", "datatype": "FP32", "shape": list(data.shape),
                                   "data": data.ravel().tolist()}]}).encode()
    return (f"POST /v2/models/{MODEL_NAME}/infer HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


class RestConnection:
    """One keep-alive HTTP/1.1 connection; reopened when the server closes it."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def call(self, request: bytes) -> tuple[int, bool]:
        """(status, connection: close) of one request."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        lower = head.lower()
        start = lower.index(b"content-length:") + 15
        length = int(lower[start:lower.index(b"\r\n", start)])
        await self.reader.readexactly(length)
        closing = b"connection: close" in lower
        if closing:
            self.close()
        return status, closing

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def grpc_request(window: int, series: int):
    """The ModelInferRequest of `series` histories, raw FP32 contents."""
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb

    data = histories(series, window)
    request = pb.ModelInferRequest(model_name=MODEL_NAME, raw_input_contents=[data.astype("<f4").tobytes()])
    request.inputs.add(name="history", datatype="FP32", shape=list(data.shape))
    return request


class GrpcClient:
    def __init__(self, port: int, window: int, series: int):
        import grpc
        from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

        self.grpc = grpc
        self.request = grpc_request(window, series)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = GRPCInferenceServiceStub(self.channel)

    async def call(self) -> tuple[int, str]:
        try:
            await self.stub.ModelInfer(self.request, timeout=60)
            return 200, ""
        except self.grpc.aio.AioRpcError as exc:
            code = exc.code()
            return (503 if code == self.grpc.StatusCode.UNAVAILABLE else 500), f"{code.name}: {exc.details()}"


async def timed(outcomes: Outcomes, protocol: str, call) -> tuple[int, str]:
    sent = time.monotonic()
    try:
        result = await call()
        status, error = (result, "") if isinstance(result, int) else result
    except Exception as exc:  # the connection failed: an error
        status, error = 0, f"{type(exc).__name__}: {exc}"
    outcomes.add(sent, time.monotonic() - sent, status, protocol, error if status not in (200,) else "")
    return status, error


async def closed_loop(outcomes: Outcomes, until: float, rest_clients: int, grpc_clients: int, http_port: int,
                      grpc_port: int, window: int, series: int) -> None:
    """`rest_clients` + `grpc_clients` clients, each sending its next request when its last is answered."""
    request = rest_request(window, series)

    async def rest_client() -> None:
        conn = RestConnection(http_port)
        while time.monotonic() < until:
            status, _ = await timed(outcomes, "rest", lambda: conn.call(request))
            if status == 0:
                conn.close()
        conn.close()

    async def grpc_client(client: GrpcClient) -> None:
        while time.monotonic() < until:
            await timed(outcomes, "grpc", client.call)

    # gRPC callers share channels as real clients do: one channel (one connection) per 8 of them
    pool = [GrpcClient(grpc_port, window, series) for _ in range((grpc_clients + 7) // 8)]
    await asyncio.gather(*[rest_client() for _ in range(rest_clients)],
                         *[grpc_client(pool[i % len(pool)]) for i in range(grpc_clients)])
    for client in pool:
        await client.channel.close()


def percentile_ms(seconds: np.ndarray, q: float) -> float:
    return round(float(np.percentile(seconds, q)) * 1000, 2) if len(seconds) else float("nan")


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])

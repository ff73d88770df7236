"""h2grpc (benchmarks/h2grpc.c), the open-loop gRPC load generator, from Python: build it, write a framed
ModelInferRequest for it, run it and read its per-call log.

    binary = h2grpc.build(work)                       # cc into `work`, never into the repository
    body = h2grpc.write_body(work / "infer.grpc", window, series)
    calls = h2grpc.calls(binary, grpc_port, body, connections=64, rps=40, seconds=5, log=work / "g.tsv")

`calls.status` is each call's grpc-status (0 OK, 14 UNAVAILABLE, -1 none: reset, GOAWAY, connection lost,
timed out), `calls.seconds` its duration. It is C, like h2load for the REST phases, so the load generator
does not take the server's core, and open loop, so a refused call's latency is the server's, not a
client queue's. Needs a C compiler and libnghttp2.so.14 (which the native gRPC front needs too)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import loadgen  # noqa: E402

SOURCE = Path(__file__).resolve().parent / "h2grpc.c"
LIBRARY = "libnghttp2.so.14"
INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc"))


def build(work_dir: Path, *flags: str, name: str = "h2grpc") -> Path:
    """Compiles h2grpc.c to `work_dir`/`name` (`flags`, e.g. -fsanitize=address, go to cc too): its path."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("h2grpc needs a C compiler (cc, or $CC)")
    work_dir.mkdir(parents=True, exist_ok=True)
    binary = work_dir / name
    built = subprocess.run([cc, "-O2", "-g", "-Wall", "-Wextra", "-Wno-unused-parameter", *flags, "-o", str(binary),
                            str(SOURCE), f"-l:{LIBRARY}"], capture_output=True, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"building h2grpc failed:\n{built.stderr}")
    return binary


def framed(message: bytes) -> bytes:
    """One gRPC message on the wire: not compressed, its length (4 bytes, big-endian), the protobuf."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def write_body(path: Path, window: int, series: int) -> Path:
    """The benchmarks' ModelInferRequest (loadgen.grpc_request), framed, as h2grpc's --body."""
    path.write_bytes(framed(loadgen.grpc_request(window, series).SerializeToString()))
    return path


@dataclass
class Calls:
    """Every call of one run, in the order they closed: when it started (wall clock, seconds since the
    epoch), its grpc-status (-1: none), how long it took (seconds); h2grpc's summary line, and the end of
    what it said on stderr (why connections were lost)."""

    start: np.ndarray
    status: np.ndarray
    seconds: np.ndarray
    summary: str
    errors: str


def calls(binary: Path, port: int, body: Path, connections: int, rps: float, seconds: float | None, log: Path, *,
          requests: int | None = None, host: str = "127.0.0.1", path: str = INFER_PATH, headers: tuple = (),
          timeout: float = 30) -> Calls:
    """Runs h2grpc: `connections` connections with one call in flight each, each sending `rps` calls a
    second (0: each call as soon as the last is answered), for `seconds` or `requests` calls in all."""
    if (seconds is None) == (requests is None):
        raise ValueError("give seconds or requests")
    cmd = [str(binary), "--host", host, "--port", str(port), "--path", path, "--body", str(body),
           "--connections", str(connections), "--rps", f"{rps:g}", "--timeout", f"{timeout:g}", "--log", str(log),
           *(["--duration", f"{seconds:g}"] if seconds is not None else ["--requests", str(requests)])]
    for name, value in headers:
        cmd += ["--header", f"{name}:{value}"]
    limit = (seconds if seconds is not None else requests / max(rps * connections, 1)) + timeout + 60
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    if done.returncode != 0:
        raise RuntimeError(f"h2grpc failed ({done.returncode}): {done.stderr[-1500:]}")
    rows = np.loadtxt(log, dtype=np.int64, ndmin=2) if log.stat().st_size else np.zeros((0, 3), np.int64)
    return Calls(rows[:, 0] / 1e6, rows[:, 1], rows[:, 2] / 1e6, done.stdout.strip(), done.stderr[-2000:])

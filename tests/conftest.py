"""Shared fixtures: a small trained model and a real `python -m predictor` on free loopback ports."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MODEL_NAME = "perf-predictor"


def shared_dir() -> Path:
    return Path(os.environ.get("PERF_PREDICTOR_SHARED", REPO.parent / "shared")).resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_small_model(out: Path, *extra: str) -> Path:
    """A quick model from the built-in synthetic workload, through the real CLI."""
    subprocess.run(
        [sys.executable, "-m", "training", "--out", str(out), "--max-iter", "20", "--stride", "12", *extra],
        check=True, cwd=REPO, capture_output=True, text=True,
    )
    return out


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return train_small_model(tmp_path_factory.mktemp("model") / "default")


class LoopbackAddresses:
    """Client addresses of a predictor whose ports (`http_port`, `grpc_port`) are on 127.0.0.1."""

    http_port: int
    grpc_port: int

    @property
    def http_host(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.http_host}"

    @property
    def grpc_host(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


@dataclass
class Server(LoopbackAddresses):
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(model_dir: Path, log_path: Path, *extra: str, env: dict | None = None,
                 ports: tuple[int, int] | None = None) -> Server:
    """`ports` (http, grpc): start again where a stopped server was."""
    http_port, grpc_port = ports or (free_port(), free_port())
    log = log_path.open("a" if ports else "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "predictor", "--model_dir", str(model_dir), "--http_port", str(http_port),
         "--grpc_port", str(grpc_port), *extra],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )
    return Server(process, http_port, grpc_port, log_path)


def _grpc_listening(server: Server) -> bool:
    try:
        socket.create_connection(("127.0.0.1", server.grpc_port), timeout=2).close()
        return True
    except OSError:
        return False


def wait_ready(server: Server, timeout: float = 60) -> None:
    """Ready over HTTP, and the gRPC port open (with --workers > 1, once the first worker has started)."""
    deadline = time.monotonic() + timeout
    url = f"{server.http_url}/v2/models/{MODEL_NAME}/ready"
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200 and _grpc_listening(server):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server not ready after {timeout}s:\n{server.log()}")


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="session")
def server(model_dir, tmp_path_factory) -> Server:
    srv = start_server(model_dir, tmp_path_factory.mktemp("logs") / "server.log")
    try:
        wait_ready(srv)
        yield srv
    finally:
        stop_server(srv)

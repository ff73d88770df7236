"""Shared fixtures: a small trained model and a real `python -m predictor` on free loopback ports."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
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


# how a server says another process took the port it was given between free_port() and its bind
PORT_TAKEN = re.compile(r"gRPC port \d+ is not free|address already in use|Failed to bind", re.IGNORECASE)
PORT_RETRIES = 3


@dataclass
class Server(LoopbackAddresses):
    process: subprocess.Popen
    http_port: int
    grpc_port: int
    log_path: Path
    argv: list = field(default_factory=list)  # the server's own flags (after the ports)
    env: dict = field(default_factory=dict)
    retries: int = 0  # -1: the caller chose a port, a taken one is what it tests

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _launch(server: Server, ports: tuple[int, int] | None = None) -> None:
    """(Re)starts the server on two ports that were free a moment ago, or on `ports` (http, grpc), where a
    stopped server was (its log is then appended to)."""
    server.http_port, server.grpc_port = ports or (free_port(), free_port())
    with server.log_path.open("a" if ports else "w") as log:
        server.process = subprocess.Popen(
            [sys.executable, "-m", "predictor", "--model_dir", *server.argv[:1], "--http_port", str(server.http_port),
             "--grpc_port", str(server.grpc_port), *server.argv[1:]],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **server.env},
        )


def start_server(model_dir: Path, log_path: Path, *extra: str, env: dict | None = None,
                 ports: tuple[int, int] | None = None) -> Server:
    """A server on free loopback ports, or on `ports` (http, grpc) to start again where a stopped server
    was. A free port can be taken by another process before the server binds it (a busy machine):
    `wait_ready` then starts it again on new ports, unless the caller chose the ports."""
    chosen = ports is not None or bool({"--http_port", "--grpc_port"} & set(extra))
    server = Server(None, 0, 0, log_path, [str(model_dir), *extra], env or {}, retries=-1 if chosen else 0)
    _launch(server, ports)
    return server


def port_taken_restart(server: Server) -> bool:
    """If the server exited because its port was taken meanwhile, starts it on new ones."""
    if 0 <= server.retries < PORT_RETRIES and PORT_TAKEN.search(server.log()):
        server.retries += 1
        _launch(server)
        return True
    return False


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
            if port_taken_restart(server):
                continue
            raise AssertionError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200 and _grpc_listening(server):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server not ready after {timeout}s:\n{server.log()}")


def end_process(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_server(server: Server) -> None:
    end_process(server.process, 15)


@pytest.fixture(scope="session")
def server(model_dir, tmp_path_factory) -> Server:
    srv = start_server(model_dir, tmp_path_factory.mktemp("logs") / "server.log")
    try:
        wait_ready(srv)
        yield srv
    finally:
        stop_server(srv)

"""--workers N: a worker whose gRPC server cannot start says so and stops, rather than serve REST only."""
from __future__ import annotations

import socket
import time

from .conftest import start_server, stop_server


def wait_for_log(srv, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in srv.log():
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{srv.log()}"
        time.sleep(0.5)


def test_grpc_bind_failure_in_a_worker_is_logged_and_stops_that_worker(model_dir, tmp_path):
    with socket.socket() as blocker:  # holds a port without SO_REUSEPORT: the workers cannot bind it
        blocker.bind(("0.0.0.0", 0))
        blocker.listen()
        # KServe's grpcio server in each worker (the parent binds nothing for it) meets the held port
        srv = start_server(model_dir, tmp_path / "server.log", "--workers", "2", "--grpc_front", "kserve",
                           "--grpc_port", str(blocker.getsockname()[1]))
        try:
            wait_for_log(srv, "gRPC server failed in worker", timeout=90)
            assert "Failed to bind" in srv.log()
            wait_for_log(srv, "Finished server process", timeout=30)  # uvicorn in that worker shut down
        finally:
            stop_server(srv)
